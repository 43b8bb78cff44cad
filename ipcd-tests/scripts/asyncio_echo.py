"""asyncio streams under ipcd: an echo server and many concurrent clients
sending random sizes, each checked by hash. Exit status 0 when all match."""
import asyncio
import hashlib
import os
import random
import sys

CLIENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 100


async def handle(reader, writer):
    while True:
        data = await reader.read(65536)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def client(port, seed):
    rng = random.Random(seed)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent, got = hashlib.sha256(), hashlib.sha256()
    total = 0
    for _ in range(rng.randint(1, 8)):
        chunk = os.urandom(rng.randint(1, 200_000))
        sent.update(chunk)
        total += len(chunk)
        writer.write(chunk)
        await writer.drain()
    writer.write_eof()
    received = 0
    while received < total:
        data = await reader.read(65536)
        if not data:
            break
        got.update(data)
        received += len(data)
    writer.close()
    await writer.wait_closed()
    return sent.digest() == got.digest() and received == total


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    results = await asyncio.gather(*(client(port, i) for i in range(CLIENTS)))
    server.close()
    await server.wait_closed()
    bad = results.count(False)
    print(f"{len(results) - bad} of {len(results)} clients echoed byte-exact")
    return 1 if bad else 0


sys.exit(asyncio.run(main()))
