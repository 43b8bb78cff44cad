/* A program that cannot run ipcd's library (built static, or started
 * without LD_PRELOAD) and echoes a TCP connection it is handed:
 *
 *   relay_echo stdio       the connection is fd 0 and fd 1 (inetd style)
 *   relay_echo recv PATH   it comes over the Unix socket at PATH
 *                          (SCM_RIGHTS)
 *   relay_echo reset       reads one byte of fd 0 and exits, leaving the
 *                          rest unread (the kernel then resets)
 *
 * It echoes until end of stream, then exits 0 (its close is the FIN). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int echo(int in, int out) {
    static char buf[65536];
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n == 0)
            return 0;
        if (n < 0) {
            perror("relay_echo: read");
            return 2;
        }
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(out, buf + done, n - done);
            if (w <= 0) {
                perror("relay_echo: write");
                return 2;
            }
            done += w;
        }
    }
}

static int receive(const char *path) {
    int u = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    if (u < 0 || connect(u, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("relay_echo: connect");
        return -1;
    }
    char byte;
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int))];
    } ctl;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = &ctl, .msg_controllen = sizeof ctl};
    if (recvmsg(u, &m, 0) != 1) {
        perror("relay_echo: recvmsg");
        return -1;
    }
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    if (!c || c->cmsg_type != SCM_RIGHTS) {
        fprintf(stderr, "relay_echo: no fd received\n");
        return -1;
    }
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    close(u);
    return fd;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "stdio") == 0)
        return echo(0, 1);
    if (argc == 2 && strcmp(argv[1], "reset") == 0) {
        char byte;
        return read(0, &byte, 1) == 1 ? 0 : 2;
    }
    if (argc == 3 && strcmp(argv[1], "recv") == 0) {
        int fd = receive(argv[2]);
        return fd < 0 ? 2 : echo(fd, fd);
    }
    fprintf(stderr, "usage: relay_echo stdio | relay_echo recv PATH | relay_echo reset\n");
    return 64;
}
