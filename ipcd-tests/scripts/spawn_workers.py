"""Workers started with multiprocessing's 'spawn' method (uvicorn's and
hypercorn's start method, though their parents only bind), or with
METHOD ('forkserver': Python 3.14's default on Linux): the parent listens
and never accepts; each worker gets the listening socket from its parent
(inherited across exec with 'spawn'; passed over a Unix socket to the
fork server, whose fork it is, with 'forkserver') and accepts its share.
The parent then connects COUNT times; every request must be answered.
Prints how many were, and by how many workers.

Usage: spawn_workers.py [COUNT [METHOD]]"""
import multiprocessing as mp
import select
import socket
import sys

COUNT = int(sys.argv[1]) if len(sys.argv) > 1 else 20
METHOD = sys.argv[2] if len(sys.argv) > 2 else "spawn"
WORKERS = 2


def worker(sock, share, ready):
    # A look at the listener says this process accepts on it; a refused
    # connect then goes through the monitor after that word, so the
    # parent's connects cannot overtake it.
    select.select([sock], [], [], 0)
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    try:
        socket.create_connection(held.getsockname(), timeout=5).close()
    except ConnectionRefusedError:
        pass
    held.close()
    ready.put(True)
    sock.settimeout(20)
    for _ in range(share):
        conn, _ = sock.accept()
        with conn:
            conn.sendall(b"%d:" % mp.current_process().pid + conn.recv(64))


def main():
    ctx = mp.get_context(METHOD)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    ready = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(sock, COUNT // WORKERS, ready)) for _ in range(WORKERS)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=20)
    answered, pids = 0, set()
    for i in range(COUNT):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"req %d" % i)
            pid, _, body = c.recv(64).partition(b":")
            if body == b"req %d" % i:
                answered += 1
                pids.add(pid)
    for p in procs:
        p.join(20)
    print(f"{answered} of {COUNT} answered by {len(pids)} workers")
    sys.exit(0 if answered == COUNT else 1)


if __name__ == "__main__":
    main()
