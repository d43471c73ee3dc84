/* Baseline: a raw blocking TCP client for raw_server, sending exactly the
 * bytes foorpc sends (an add(1, 2) request, or an echo of a bin payload).
 *
 * Usage: raw_client tcp://127.0.0.1:PORT seq N | slices N | pipe N WINDOW | echo N BYTES
 * (`slices`: seq driven slice by slice from stdin, see next_slice in common.h)
 * Prints the same figures as the other clients: seq_p50_ns / seq_p99_ns,
 * pipe_calls_per_s, echo_mib_per_s.
 */
#include "common.h"

#include <arpa/inet.h>

static int dial(const char *address, size_t req_len, const unsigned char *resp, size_t resp_len) {
    const char *hp = strncmp(address, "tcp://", 6) == 0 ? address + 6 : address;
    const char *colon = strrchr(hp, ':');
    if (!colon) {
        fprintf(stderr, "bad address %s\n", address);
        exit(2);
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    unsigned char head[8] = {
        (unsigned char)(req_len >> 24), (unsigned char)(req_len >> 16),
        (unsigned char)(req_len >> 8), (unsigned char)req_len,
        (unsigned char)(resp_len >> 24), (unsigned char)(resp_len >> 16),
        (unsigned char)(resp_len >> 8), (unsigned char)resp_len,
    };
    write_all(fd, head, 8);
    write_all(fd, resp, resp_len);
    return fd;
}

/* One add(1, 2) round trip: the request's bytes out, the reply's bytes in. */
static void add_once(void *fdp) {
    int fd = *(int *)fdp;
    unsigned char reply[sizeof ADD_RESPONSE];
    write_all(fd, ADD_REQUEST, sizeof ADD_REQUEST);
    read_all(fd, reply, sizeof reply);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: raw_client ADDRESS seq N | slices N | pipe N WINDOW | echo N BYTES\n");
        return 2;
    }
    const char *what = argv[2];
    long n = atol(argv[3]);
    long extra = argc > 4 ? atol(argv[4]) : 0;
    if (strcmp(what, "seq") == 0 || strcmp(what, "slices") == 0) {
        int fd = dial(argv[1], sizeof ADD_REQUEST, ADD_RESPONSE, sizeof ADD_RESPONSE);
        run_seq(strcmp(what, "slices") == 0, n, add_once, &fd);
    } else if (strcmp(what, "pipe") == 0) {
        /* A sliding window: WINDOW requests out, then each read's complete
         * replies are answered with as many new requests (one write). */
        long window = extra > 0 ? extra : 64;
        int fd = dial(argv[1], sizeof ADD_REQUEST, ADD_RESPONSE, sizeof ADD_RESPONSE);
        unsigned char *reqs = malloc((size_t)window * sizeof ADD_REQUEST);
        for (long i = 0; i < window; i++)
            memcpy(reqs + i * sizeof ADD_REQUEST, ADD_REQUEST, sizeof ADD_REQUEST);
        unsigned char in[64 * 1024];
        for (int pass = 0; pass < 2; pass++) {
            long total = pass == 0 ? (n / 10 > window * 4 ? n / 10 : window * 4) : n;
            uint64_t t = now_ns();
            long sent = window < total ? window : total, done = 0;
            write_all(fd, reqs, (size_t)sent * sizeof ADD_REQUEST);
            size_t partial = 0;
            while (done < total) {
                ssize_t r = read(fd, in, sizeof in);
                if (r < 0 && errno == EINTR) continue;
                if (r <= 0) die("read");
                partial += (size_t)r;
                long got = (long)(partial / sizeof ADD_RESPONSE);
                partial %= sizeof ADD_RESPONSE;
                done += got;
                long more = total - sent < got ? total - sent : got;
                if (more > 0) {
                    write_all(fd, reqs, (size_t)more * sizeof ADD_REQUEST);
                    sent += more;
                }
            }
            double secs = (double)(now_ns() - t) / 1e9;
            if (pass == 1) printf("pipe_calls_per_s %.0f\n", (double)n / secs);
        }
    } else if (strcmp(what, "echo") == 0) {
        size_t size = extra > 0 ? (size_t)extra : 1;
        size_t req_len, resp_len;
        unsigned char *req = echo_message(0, size, &req_len);
        unsigned char *resp = echo_message(1, size, &resp_len);
        int fd = dial(argv[1], req_len, resp, resp_len);
        unsigned char *in = malloc(resp_len);
        long warm = n / 10 > 3 ? n / 10 : 3;
        for (long i = 0; i < warm; i++) {
            write_all(fd, req, req_len);
            read_all(fd, in, resp_len);
        }
        uint64_t t = now_ns();
        for (long i = 0; i < n; i++) {
            write_all(fd, req, req_len);
            read_all(fd, in, resp_len);
        }
        double secs = (double)(now_ns() - t) / 1e9;
        printf("echo_mib_per_s %.1f\n", (double)n * (double)size / secs / (1024.0 * 1024.0));
    } else {
        fprintf(stderr, "unknown benchmark %s\n", what);
        return 2;
    }
    return 0;
}
