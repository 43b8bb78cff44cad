/* A statically linked client: no dynamic loader, so LD_PRELOAD cannot
 * apply and every call goes to the kernel. Echoes through the probe's echo
 * server (argv[1] = port) and prints "ok". */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int c = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); return 1; }
    const char msg[] = "static hello";
    if (write(c, msg, sizeof msg) != (ssize_t)sizeof msg) return 1;
    char buf[sizeof msg];
    size_t got = 0;
    while (got < sizeof msg) {
        ssize_t n = read(c, buf + got, sizeof msg - got);
        if (n <= 0) return 1;
        got += (size_t)n;
    }
    if (memcmp(buf, msg, sizeof msg) != 0) return 1;
    close(c);
    puts("ok");
    return 0;
}
