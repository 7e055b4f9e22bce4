/* A UDP echo server for the network tests: answers each datagram with "echo:" + the datagram.
 * busybox has no UDP server applet; this is built static and bind-mounted into the container. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("udp_echo");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        char buf[1500], out[1510];
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf - 1, 0, (struct sockaddr *)&peer, &len);
        if (n < 0)
            continue;
        int m = snprintf(out, sizeof out, "echo:%.*s", (int)n, buf);
        sendto(fd, out, m, 0, (struct sockaddr *)&peer, len);
    }
}
