/* Baseline: a raw blocking TCP server, one thread per connection, no RPC.
 *
 * Usage: raw_server [PORT]   (0 or none: any free port; prints `listening tcp://127.0.0.1:PORT`)
 *
 * A connection starts with a preamble: u32 request length R, u32 response
 * length S (both big endian), then the S bytes of the response. After that,
 * for every R bytes received the server sends the S response bytes; the
 * replies to all complete requests found in one read() leave in one write(),
 * as a real server batches them. So the client chooses the exact bytes (an
 * add(1, 2) request and its reply, or a 1 MiB echo) and the server does the
 * least possible work: the floor of any RPC system on this machine.
 */
#include "common.h"

#include <arpa/inet.h>
#include <pthread.h>

#define CHUNK (256 * 1024)

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void *serve(void *arg) {
    int fd = (int)(intptr_t)arg;
    unsigned char head[8];
    ssize_t got = 0;
    while (got < 8) {
        ssize_t n = read(fd, head + got, (size_t)(8 - got));
        if (n <= 0) goto out;
        got += n;
    }
    uint32_t req_len = be32(head), resp_len = be32(head + 4);
    if (req_len == 0) goto out;
    unsigned char *resp = malloc(resp_len ? resp_len : 1);
    read_all(fd, resp, resp_len);
    /* Room for the replies to one read's worth of requests. */
    size_t max_replies = CHUNK / req_len + 1;
    unsigned char *out = malloc(max_replies * resp_len + 1);
    unsigned char *in = malloc(CHUNK);
    uint64_t partial = 0; /* bytes of the current request received so far */
    for (;;) {
        ssize_t n = read(fd, in, CHUNK);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        partial += (uint64_t)n;
        size_t complete = (size_t)(partial / req_len);
        partial %= req_len;
        if (complete == 0) continue;
        size_t len = 0;
        for (size_t i = 0; i < complete; i++) {
            memcpy(out + len, resp, resp_len);
            len += resp_len;
        }
        write_all(fd, out, len);
    }
    free(in);
    free(out);
    free(resp);
out:
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    if (ls < 0) die("socket");
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (listen(ls, 1024) < 0) die("listen");
    socklen_t slen = sizeof sa;
    getsockname(ls, (struct sockaddr *)&sa, &slen);
    printf("listening tcp://127.0.0.1:%d\n", ntohs(sa.sin_port));
    fflush(stdout);
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR) continue;
            die("accept");
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, serve, (void *)(intptr_t)fd) != 0) close(fd);
        pthread_attr_destroy(&attr);
    }
}
