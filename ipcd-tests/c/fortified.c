/* An ordinary C program built with _FORTIFY_SOURCE, as Debian builds
 * packages: its read/recv/recvfrom calls become __read_chk, __recv_chk and
 * __recvfrom_chk, which the preload library must catch too. A constructor
 * makes a socket before main, while the library may not be set up yet. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int early_fd = -1;

__attribute__((constructor)) static void before_main(void) {
    early_fd = socket(AF_INET, SOCK_STREAM, 0);
}

#define CHECK(cond)                                                     \
    do {                                                                \
        if (!(cond)) {                                                  \
            fprintf(stderr, "fortified: %s failed (line %d)\n", #cond, __LINE__); \
            return 1;                                                   \
        }                                                               \
    } while (0)

int main(int argc, char **argv) {
    (void)argv;
    /* A length the compiler cannot see, so fortify keeps the checks. */
    size_t n = 15 + (size_t)argc;
    CHECK(early_fd >= 0);
    CHECK(close(early_fd) == 0);

    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(l, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(listen(l, 4) == 0);
    socklen_t len = sizeof a;
    CHECK(getsockname(l, (struct sockaddr *)&a, &len) == 0);

    int c = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0);
    int s = accept(l, NULL, NULL);
    CHECK(s >= 0);

    char buf[16];
    CHECK(write(c, "hello", 5) == 5);
    CHECK(read(s, buf, n) == 5 && memcmp(buf, "hello", 5) == 0);
    CHECK(send(s, "world", 5, 0) == 5);
    CHECK(recv(c, buf, n, MSG_PEEK) == 5);
    struct sockaddr_in from;
    socklen_t flen = sizeof from;
    CHECK(recvfrom(c, buf, n, 0, (struct sockaddr *)&from, &flen) == 5);
    CHECK(memcmp(buf, "world", 5) == 0 && flen == 0);
    close(c);
    CHECK(read(s, buf, n) == 0);
    close(s);
    close(l);
    puts("ok");
    return 0;
}
