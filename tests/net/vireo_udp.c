/* UDP from inside the test guest, for tests/net/test_net_dns_udp.py (built with gcc -static and added to the test
 * initramfs as /bin/vireo-udp): Debian's busybox nc has no -u, so the guest has no other way to send or serve a
 * plain UDP datagram (RFC 768).
 *
 * usage: vireo-udp ask ADDR PORT MESSAGE
 *          send MESSAGE to ADDR:PORT and wait for one answer from there, resending each second up to 10 times;
 *          prints VIREO-UDP-REPLY=<answer> (or VIREO-UDP-NOREPLY) and exits 0 (1).
 *        vireo-udp echo PORT COUNT
 *          bind 0.0.0.0:PORT, print VIREO-UDP-LISTENING=<PORT>, then for COUNT datagrams print
 *          VIREO-UDP-GOT=<datagram> and answer its sender with "guest-echo:" and the datagram.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int usage(void)
{
    fprintf(stderr, "usage: vireo-udp ask ADDR PORT MESSAGE | vireo-udp echo PORT COUNT\n");
    return 2;
}

static int ask(const char *addr, int port, const char *message)
{
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(port) };
    struct timeval second = { .tv_sec = 1 };
    char buf[2048];
    int s = socket(AF_INET, SOCK_DGRAM, 0);

    if (s < 0 || inet_pton(AF_INET, addr, &to.sin_addr) != 1)
        return usage();
    /* connect(): only datagrams from ADDR:PORT are received, so the answer printed is that peer's. */
    if (connect(s, (struct sockaddr *)&to, sizeof(to)) < 0 ||
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &second, sizeof(second)) < 0) {
        perror("vireo-udp");
        return 1;
    }
    for (int i = 0; i < 10; i++) {
        ssize_t n;

        if (send(s, message, strlen(message), 0) < 0)
            perror("vireo-udp: send");
        n = recv(s, buf, sizeof(buf) - 1, 0);
        if (n >= 0) {
            buf[n] = 0;
            printf("VIREO-UDP-REPLY=%s\n", buf);
            return 0;
        }
    }
    printf("VIREO-UDP-NOREPLY\n");
    return 1;
}

static int echo(int port, int count)
{
    struct sockaddr_in me = { .sin_family = AF_INET, .sin_port = htons(port) };
    int s = socket(AF_INET, SOCK_DGRAM, 0);

    if (s < 0 || bind(s, (struct sockaddr *)&me, sizeof(me)) < 0) {
        perror("vireo-udp: bind");
        return 1;
    }
    printf("VIREO-UDP-LISTENING=%d\n", port);
    fflush(stdout);
    for (int i = 0; i < count; i++) {
        struct sockaddr_in from;
        socklen_t len = sizeof(from);
        char buf[2048], out[2100];
        ssize_t n = recvfrom(s, buf, sizeof(buf) - 1, 0, (struct sockaddr *)&from, &len);

        if (n < 0) {
            perror("vireo-udp: recvfrom");
            return 1;
        }
        buf[n] = 0;
        printf("VIREO-UDP-GOT=%s\n", buf);
        fflush(stdout);
        n = snprintf(out, sizeof(out), "guest-echo:%s", buf);
        if (sendto(s, out, n, 0, (struct sockaddr *)&from, len) < 0)
            perror("vireo-udp: sendto");
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && !strcmp(argv[1], "ask"))
        return ask(argv[2], atoi(argv[3]), argv[4]);
    if (argc == 4 && !strcmp(argv[1], "echo"))
        return echo(atoi(argv[2]), atoi(argv[3]));
    return usage();
}
