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
