/* Shared helpers of the C benchmark programs (baseline and foorpc client). */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Sorts `v` and prints p50 and p99 as `seq_p50_ns X` / `seq_p99_ns X`. */
static inline void print_percentiles(uint64_t *v, size_t n) {
    qsort(v, n, sizeof *v, cmp_u64);
    size_t i50 = (size_t)((double)(n - 1) * 0.50 + 0.5);
    size_t i99 = (size_t)((double)(n - 1) * 0.99 + 0.5);
    printf("seq_p50_ns %llu\nseq_p99_ns %llu\n", (unsigned long long)v[i50],
           (unsigned long long)v[i99]);
}

static inline void die(const char *what) {
    perror(what);
    exit(1);
}

/* `slices` mode, shared by every seq client so that the driver can
 * interleave them: each stdin line `warm K` or `run K` asks for K calls
 * (`run` ones are timed), answered with `ok` once done. At EOF the client
 * prints the percentiles of every timed call. Returns the next K (0 at EOF)
 * and sets *timed. */
static inline long next_slice(int *timed) {
    char line[64];
    long k = 0;
    if (!fgets(line, sizeof line, stdin)) return 0;
    if (sscanf(line, "warm %ld", &k) == 1 && k > 0) {
        *timed = 0;
        return k;
    }
    if (sscanf(line, "run %ld", &k) == 1 && k > 0) {
        *timed = 1;
        return k;
    }
    fprintf(stderr, "slices: bad line %s", line);
    exit(2);
}

/* Answers a slice once its calls are done. */
static inline void slice_done(void) {
    fputs("ok\n", stdout);
    fflush(stdout);
}

/* Sequential calls of `one_call(ctx)`, each timed, then their p50/p99.
 * `seq N`: a warm-up of N/10 (at least 100) calls, then N timed ones.
 * `slices N`: the slices read from stdin (next_slice), at most N timed. */
static inline void run_seq(int sliced, long n, void (*one_call)(void *), void *ctx) {
    uint64_t *lat = malloc((size_t)n * sizeof *lat);
    if (!lat) die("malloc");
    size_t timed_calls = 0;
    int timed = 0;
    long k = sliced ? next_slice(&timed) : (n / 10 > 100 ? n / 10 : 100);
    while (k > 0) {
        for (long i = 0; i < k; i++) {
            uint64_t t = now_ns();
            one_call(ctx);
            uint64_t d = now_ns() - t;
            if (timed && timed_calls < (size_t)n) lat[timed_calls++] = d;
        }
        if (sliced) {
            slice_done();
            k = next_slice(&timed);
        } else {
            k = timed ? 0 : n;
            timed = 1;
        }
    }
    if (timed_calls == 0) {
        fprintf(stderr, "seq: no timed calls\n");
        exit(2);
    }
    print_percentiles(lat, timed_calls);
    free(lat);
}

static inline void write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("write");
        }
        p += n;
        len -= (size_t)n;
    }
}

static inline void read_all(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("read");
        }
        if (n == 0) {
            fprintf(stderr, "read: peer closed\n");
            exit(1);
        }
        p += n;
        len -= (size_t)n;
    }
}

/* The exact bytes foorpc puts on the wire for add(1, 2) with msgid 0 and
 * its reply: [0, 0, "add", [1, 2]] and [1, 0, nil, 3]. */
static const unsigned char ADD_REQUEST[] = {0x94, 0x00, 0x00, 0xa3, 'a', 'd', 'd', 0x92, 0x01, 0x02};
static const unsigned char ADD_RESPONSE[] = {0x94, 0x01, 0x00, 0xc0, 0x03};

/* An echo(bin of `size` bytes) request ([0, 0, "echo", [bin32]]) or its
 * response ([1, 0, nil, bin32]), written into a new buffer of *len bytes. */
static inline unsigned char *echo_message(int response, size_t size, size_t *len) {
    static const unsigned char req_head[] = {0x94, 0x00, 0x00, 0xa4, 'e', 'c', 'h', 'o', 0x91};
    static const unsigned char resp_head[] = {0x94, 0x01, 0x00, 0xc0};
    const unsigned char *head = response ? resp_head : req_head;
    size_t hlen = response ? sizeof resp_head : sizeof req_head;
    *len = hlen + 5 + size;
    unsigned char *m = malloc(*len);
    if (!m) die("malloc");
    memcpy(m, head, hlen);
    m[hlen] = 0xc6;
    m[hlen + 1] = (unsigned char)(size >> 24);
    m[hlen + 2] = (unsigned char)(size >> 16);
    m[hlen + 3] = (unsigned char)(size >> 8);
    m[hlen + 4] = (unsigned char)size;
    memset(m + hlen + 5, 0xab, size);
    return m;
}

#endif
