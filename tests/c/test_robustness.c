/*
 * Robustness tests of the libfoorpc C ABI against misuse and stress: freeing and
 * closing clients and servers while calls are in flight, handlers that hold or drop
 * their responders, blocking calls from callbacks, one client shared by 8 threads,
 * params validation, NULL arguments and reader/writer misuse. Server and clients run
 * in one process over 127.0.0.1; asynchronous calls and notifications to a peer that
 * does not read. Every wait is bounded and a watchdog aborts after 60 s. Prints "PASS name" / "FAIL name: why", then "N passed, N failed".
 */
#define _POSIX_C_SOURCE 200809L
#include <foorpc.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/wait.h>

static int passed = 0, failed = 0;
static void check(const char *name, int ok, const char *fmt, ...) { /* one PASS/FAIL line */
    char why[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    ok ? passed++ : failed++;
    ok ? printf("PASS %s\n", name) : printf("FAIL %s: %s\n", name, why);
    fflush(stdout);
}
static void fail(const char *name, const char *why) { check(name, 0, "%s", why); }

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0) {
    }
}
static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
static const char *last_error(void) {
    static _Thread_local char msg[512];
    msg[0] = 0;
    foorpc_last_error_message(msg, sizeof msg, NULL);
    return msg;
}
static int buf_has(const foorpc_buf *b, const char *needle) {
    size_t n = strlen(needle), len = foorpc_buf_len(b);
    const uint8_t *d = foorpc_buf_data(b);
    for (size_t i = 0; d && i + n <= len; i++)
        if (memcmp(d + i, needle, n) == 0) return 1;
    return 0;
}
/* The first integer of `data` (the element of a one-element array), or INT64_MIN. */
static int64_t first_int(const uint8_t *data, size_t len) {
    foorpc_reader *r = NULL;
    uint32_t n = 0;
    int64_t v = INT64_MIN;
    foorpc_reader_new(data, len, &r);
    if (foorpc_reader_peek_type(r) == FOORPC_TYPE_ARRAY) foorpc_reader_read_array(r, &n);
    foorpc_reader_read_int(r, &v);
    foorpc_reader_free(r);
    return v;
}
static int count_fds(void) {
    char path[64];
    int n = 0;
    for (int fd = 0; fd < 4096; fd++) {
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        n += access(path, F_OK) == 0;
    }
    return n;
}
static void *watchdog(void *arg) {
    (void)arg;
    sleep(60);
    fprintf(stderr, "FAIL watchdog: still running after 60 s (hang)\n");
    abort();
}

/* ---- handlers ------------------------------------------------------------------ */

#define HANDLER(name)                                                                  \
    static void name(void *ud, const char *m, size_t ml, const uint8_t *p, size_t pl, \
                     foorpc_responder *r)
#define UNUSED_ARGS (void)ud, (void)m, (void)ml, (void)p, (void)pl

static void answer_int(foorpc_responder *r, int64_t v) {
    foorpc_writer *w = NULL;
    foorpc_writer_new(&w);
    foorpc_writer_int(w, v);
    foorpc_responder_ok(r, foorpc_writer_data(w), foorpc_writer_len(w));
    foorpc_writer_free(w);
}
HANDLER(h_add) { /* add(a, b) -> a + b */
    UNUSED_ARGS;
    foorpc_reader *rd = NULL;
    uint32_t n = 0;
    int64_t a = 0, b = 0;
    foorpc_reader_new(p, pl, &rd);
    int bad = foorpc_reader_read_array(rd, &n) || n != 2 || foorpc_reader_read_int(rd, &a) ||
              foorpc_reader_read_int(rd, &b);
    foorpc_reader_free(rd);
    if (bad)
        foorpc_responder_error_message(r, 1, "bad params", 10);
    else
        answer_int(r, a + b);
}
HANDLER(h_echo) { /* echo(...) -> the params array */
    UNUSED_ARGS;
    foorpc_responder_ok(r, p, pl);
}
HANDLER(h_slow) { /* slow(ms), on the pool: sleeps, answers ms */
    UNUSED_ARGS;
    int64_t ms = first_int(p, pl);
    sleep_ms(ms > 0 ? (long)ms : 0);
    answer_int(r, ms);
}
HANDLER(h_deep) { /* answers a value nested 200 deep (over the documented 128) */
    UNUSED_ARGS;
    uint8_t v[201];
    memset(v, 0x91, 200);
    v[200] = 0xc0;
    *(atomic_uint *)ud = foorpc_responder_ok(r, v, sizeof v);
}
/* hold(): the responder is kept in `held` for the test to answer later. */
#define MAX_HELD 4096
static pthread_mutex_t held_lock = PTHREAD_MUTEX_INITIALIZER;
static foorpc_responder *held[MAX_HELD];
static int held_n = 0;
HANDLER(h_hold) {
    UNUSED_ARGS;
    pthread_mutex_lock(&held_lock);
    if (held_n < MAX_HELD) held[held_n++] = r, r = NULL;
    pthread_mutex_unlock(&held_lock);
    foorpc_responder_free(r);
}
static int wait_held(int n, long timeout_ms) { /* bounded; returns the count */
    int have = 0;
    for (long t = 0; t <= timeout_ms; t += 5) {
        pthread_mutex_lock(&held_lock);
        have = held_n;
        pthread_mutex_unlock(&held_lock);
        if (have >= n) break;
        sleep_ms(5);
    }
    return have;
}
static int release_held(int answer) { /* answers each with its index, or frees it */
    pthread_mutex_lock(&held_lock);
    int n = held_n;
    for (int i = 0; i < n; i++) {
        if (answer)
            answer_int(held[i], i);
        else
            foorpc_responder_free(held[i]);
    }
    held_n = 0;
    pthread_mutex_unlock(&held_lock);
    return n;
}
static void *release_later(void *arg) { /* arg: delay in ms * 2 + (1: answer, 0: free) */
    intptr_t v = (intptr_t)arg;
    sleep_ms((long)(v / 2));
    release_held((int)(v % 2));
    return NULL;
}
static foorpc_responder *_Atomic lone; /* hold_one(): one responder, kept apart */
HANDLER(h_hold_one) {
    UNUSED_ARGS;
    atomic_store(&lone, r);
}
static atomic_uint deep_rc;

/* A started server on 127.0.0.1 with the handlers above and `extra` (if any). */
static foorpc_server *start_server_with(char *addr, size_t cap, const char *extra, foorpc_handler_callback cb,
                                        void *ud, uint32_t flags) {
    foorpc_server *s = NULL;
    if (foorpc_server_new(&s) != FOORPC_RESULT_OK) return NULL;
    if (extra) foorpc_server_register(s, extra, cb, ud, flags);
    foorpc_server_register(s, "add", h_add, NULL, FOORPC_HANDLER_POOL);
    foorpc_server_register(s, "add_inline", h_add, NULL, FOORPC_HANDLER_INLINE);
    foorpc_server_register(s, "echo", h_echo, NULL, FOORPC_HANDLER_INLINE);
    foorpc_server_register(s, "slow", h_slow, NULL, FOORPC_HANDLER_POOL);
    foorpc_server_register(s, "deep", h_deep, &deep_rc, FOORPC_HANDLER_INLINE);
    foorpc_server_register(s, "hold", h_hold, NULL, FOORPC_HANDLER_INLINE);
    foorpc_server_register(s, "hold_one", h_hold_one, NULL, FOORPC_HANDLER_INLINE);
    if (foorpc_server_bind(s, "tcp://127.0.0.1:0") || foorpc_server_local_address(s, addr, cap, NULL) ||
        foorpc_server_start(s)) {
        fprintf(stderr, "server setup failed: %s\n", last_error());
        foorpc_server_free(s);
        return NULL;
    }
    return s;
}
#define start_server(addr, cap) start_server_with(addr, cap, NULL, NULL, NULL, 0)
static foorpc_client *connect_to(const char *addr) {
    foorpc_client *c = NULL;
    if (foorpc_client_connect(addr, 5000, &c) != FOORPC_RESULT_OK)
        fprintf(stderr, "connect %s failed: %s\n", addr, last_error());
    return c;
}
static foorpc_result call_add(const foorpc_client *c, const char *method, int64_t a, int64_t b,
                              uint32_t timeout_ms, int64_t *sum) {
    foorpc_writer *w = NULL;
    foorpc_buf *res = NULL;
    foorpc_writer_new(&w);
    foorpc_writer_array(w, 2);
    foorpc_writer_int(w, a);
    foorpc_writer_int(w, b);
    foorpc_result rc =
        foorpc_client_call(c, method, foorpc_writer_data(w), foorpc_writer_len(w), timeout_ms, &res);
    if (rc == FOORPC_RESULT_OK && sum) *sum = first_int(foorpc_buf_data(res), foorpc_buf_len(res));
    foorpc_buf_free(res);
    foorpc_writer_free(w);
    return rc;
}
static foorpc_result call_raw(const foorpc_client *c, const char *method, const void *p, size_t n, foorpc_buf **res) {
    return foorpc_client_call(c, method, (const uint8_t *)p, n, 5000, res);
}

/* Sync calls in threads. */
struct sync_arg {
    const foorpc_client *c;
    const char *method, *params; /* params NULL: [] */
    foorpc_result rc;
    double secs;
    int64_t value;
};
static void *sync_caller(void *arg) {
    struct sync_arg *a = arg;
    double t = now_s();
    foorpc_buf *res = NULL;
    const char *p = a->params ? a->params : "\x90";
    a->rc = foorpc_client_call(a->c, a->method, (const uint8_t *)p, strlen(p), 6000, &res);
    a->secs = now_s() - t;
    a->value = a->rc == FOORPC_RESULT_OK ? first_int(foorpc_buf_data(res), foorpc_buf_len(res)) : INT64_MIN;
    foorpc_buf_free(res);
    return NULL;
}

/* Async completions: how often each call's callback ran, and the outcomes. */
#define NASYNC 1000
struct tally {
    atomic_int runs[NASYNC];
    atomic_int total, ok, closed, lost, timeout, remote, other, bad_value, no_message;
    int check_values; /* OK results must equal the call's index */
    const foorpc_client *client;
};
static struct slot {
    struct tally *t;
    int i;
} slots[NASYNC]; /* userdata of call i (tests using them run one at a time) */
static void tally_init(struct tally *t) {
    memset(t, 0, sizeof *t);
    for (int i = 0; i < NASYNC; i++) slots[i] = (struct slot){t, i};
}
static void on_async(void *ud, foorpc_result rc, const uint8_t *data, size_t len) {
    struct slot *sl = ud;
    struct tally *t = sl->t;
    atomic_fetch_add(&t->runs[sl->i], 1);
    atomic_fetch_add(rc == FOORPC_RESULT_OK ? &t->ok : rc == FOORPC_RESULT_CLOSED ? &t->closed
                     : rc == FOORPC_RESULT_CONNECTION_LOST ? &t->lost : rc == FOORPC_RESULT_TIMEOUT ? &t->timeout
                     : rc == FOORPC_RESULT_REMOTE_ERROR ? &t->remote : &t->other, 1);
    if (rc == FOORPC_RESULT_OK && t->check_values && first_int(data, len) != sl->i)
        atomic_fetch_add(&t->bad_value, 1);
    if (rc != FOORPC_RESULT_OK && rc != FOORPC_RESULT_REMOTE_ERROR) {
        if (data || len) atomic_fetch_add(&t->other, 1000000); /* documented: NULL, 0 */
        if (!last_error()[0]) atomic_fetch_add(&t->no_message, 1);
    }
    atomic_fetch_add(&t->total, 1); /* last: the slot may be reused after this */
}
/* Waits (bounded) for n callbacks; returns how many of calls 0..n-1 did not run exactly once. */
static int tally_wait(struct tally *t, int n, long timeout_ms) {
    for (long w = 0; w < timeout_ms && atomic_load(&t->total) < n; w += 5) sleep_ms(5);
    int wrong = 0;
    for (int i = 0; i < n; i++) wrong += atomic_load(&t->runs[i]) != 1;
    return wrong;
}
static int start_async(const foorpc_client *c, const char *method, int n, uint32_t timeout_ms) {
    int started = 0;
    for (int i = 0; i < n; i++)
        started += foorpc_client_call_async(c, method, (const uint8_t *)"\x90", 1, timeout_ms, on_async,
                                            &slots[i]) == FOORPC_RESULT_OK;
    return started;
}

/* ---- 1. lifetimes and hangs ------------------------------------------------------ */

static void test_close_while_sync_blocked(const char *addr) {
    foorpc_client *c = connect_to(addr);
    if (!c) return fail("close_while_sync_blocked", "connect");
    struct sync_arg a[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (struct sync_arg){c, "hold", NULL, 9999, 0, 0};
        pthread_create(&th[i], NULL, sync_caller, &a[i]);
    }
    int held_now = wait_held(4, 5000);
    foorpc_client_close(c);
    int bad = 0;
    double worst = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        bad += a[i].rc != FOORPC_RESULT_CLOSED;
        if (a[i].secs > worst) worst = a[i].secs;
    }
    check("close_while_sync_blocked", held_now == 4 && bad == 0 && worst < 5,
          "held=%d, %d calls did not return CLOSED (first rc=%u), slowest %.2fs", held_now, bad, a[0].rc,
          worst);
    check("client_is_connected_after_close", !foorpc_client_is_connected(c), "still connected");
    foorpc_result rc = call_add(c, "add", 1, 2, 1000, NULL);
    check("call_after_close_fails_closed", rc == FOORPC_RESULT_CLOSED, "rc=%u", rc);
    rc = foorpc_client_notify(c, "echo", NULL, 0);
    check("notify_after_close_fails", foorpc_result_is_connection_error(rc), "rc=%u", rc);
    foorpc_client_close(c); /* twice is fine */
    foorpc_client_free(c);
    int n = release_held(1); /* answering requests of a freed client is harmless */
    check("answer_after_client_freed", n == 4, "held %d", n);
}

static void test_free_with_async_in_flight(const char *addr) {
    static struct tally t;
    tally_init(&t);
    foorpc_client *c = connect_to(addr);
    if (!c) return fail("free_with_1000_async_in_flight", "connect");
    int started = start_async(c, "hold", NASYNC, 20000);
    int h = wait_held(NASYNC, 10000);
    foorpc_client_free(c);
    int after_free = atomic_load(&t.total);
    int wrong = tally_wait(&t, NASYNC, 5000);
    check("free_with_1000_async_in_flight", started == NASYNC && wrong == 0 && atomic_load(&t.closed) == NASYNC,
          "started %d, held %d, %d not run exactly once, closed %d lost %d other %d", started, h, wrong,
          atomic_load(&t.closed), atomic_load(&t.lost), atomic_load(&t.other));
    check("free_runs_pending_callbacks_before_return", after_free == NASYNC,
          "only %d of %d callbacks had run when foorpc_client_free returned", after_free, NASYNC);
    check("last_error_inside_callbacks", atomic_load(&t.no_message) == 0,
          "%d failure callbacks saw an empty foorpc_last_error_message", atomic_load(&t.no_message));
    release_held(1);

    /* Again while the replies stream in and callbacks are running. */
    tally_init(&t);
    t.check_values = 1;
    if (!(c = connect_to(addr))) return;
    started = 0;
    for (int i = 0; i < NASYNC; i++) {
        uint8_t p[5] = {0x92, 0xcd, (uint8_t)(i >> 8), (uint8_t)i, 0x00}; /* add(i, 0) */
        started += foorpc_client_call_async(c, "add_inline", p, 5, 20000, on_async, &slots[i]) == 0;
    }
    for (int w = 0; w < 5000 && atomic_load(&t.total) < 10; w++) sleep_ms(1);
    foorpc_client_free(c);
    after_free = atomic_load(&t.total);
    wrong = tally_wait(&t, NASYNC, 5000);
    check("free_while_replies_stream_in",
          started == NASYNC && wrong == 0 && after_free == NASYNC && atomic_load(&t.bad_value) == 0,
          "started %d, %d not run once, %d run when free returned, bad values %d", started, wrong, after_free,
          atomic_load(&t.bad_value));
}

/* 500 held async calls; the first completion closes the client; every callback
 * starts a new call (allowed from a callback), which fails once closed. */
static atomic_int nested_started, nested_closed, nested_other;
static void on_async_close(void *ud, foorpc_result rc, const uint8_t *data, size_t len) {
    struct slot *sl = ud;
    const foorpc_client *c = sl->t->client;
    if (sl->i == 0) foorpc_client_close(c);
    foorpc_result r2 = foorpc_client_call_async(c, "add_inline", (const uint8_t *)"\x92\x01\x02", 3, 2000,
                                                on_async, &slots[NASYNC / 2 + sl->i]);
    atomic_fetch_add(r2 == FOORPC_RESULT_OK ? &nested_started
                     : r2 == FOORPC_RESULT_CLOSED ? &nested_closed : &nested_other, 1);
    on_async(ud, rc, data, len);
}
static void test_close_from_callback(const char *addr) {
    static struct tally t;
    tally_init(&t);
    foorpc_client *c = connect_to(addr);
    if (!c) return fail("close_from_callback", "connect");
    t.client = c;
    int started = 0, half = NASYNC / 2;
    for (int i = 0; i < half; i++)
        started += foorpc_client_call_async(c, "hold", (const uint8_t *)"\x90", 1, 20000, on_async_close,
                                            &slots[i]) == FOORPC_RESULT_OK;
    wait_held(half, 10000);
    pthread_mutex_lock(&held_lock); /* answer one; its callback closes the client */
    foorpc_responder *first = held_n ? held[0] : NULL;
    if (held_n) held[0] = held[--held_n];
    pthread_mutex_unlock(&held_lock);
    answer_int(first, 7);
    int expect = half;
    for (long w = 0; w < 5000 && atomic_load(&t.total) < (expect = half + atomic_load(&nested_started)); w += 5)
        sleep_ms(5);
    int wrong = 0;
    for (int i = 0; i < NASYNC; i++) wrong += i < half ? atomic_load(&t.runs[i]) != 1 : atomic_load(&t.runs[i]) > 1;
    check("close_from_callback",
          started == half && wrong == 0 && atomic_load(&t.total) == expect && atomic_load(&nested_other) == 0,
          "started %d, callbacks %d (expected %d), wrong %d, nested calls: started %d closed %d other %d",
          started, atomic_load(&t.total), expect, wrong, atomic_load(&nested_started),
          atomic_load(&nested_closed), atomic_load(&nested_other));
    foorpc_client_free(c);
    release_held(0);
}

/* Requests left unanswered: dropped by the handler, or answered after the call timed out. */
static void test_unanswered(const char *addr) {
    foorpc_client *c = connect_to(addr);
    if (!c) return fail("unanswered", "connect");
    pthread_t th;
    pthread_create(&th, NULL, release_later, (void *)(intptr_t)(50 * 2 + 0));
    foorpc_buf *res = NULL;
    foorpc_result rc = call_raw(c, "hold", NULL, 0, &res);
    pthread_join(th, NULL);
    int has = buf_has(res, "the handler dropped the request without answering");
    check("dropped_responder_error_reply", rc == FOORPC_RESULT_REMOTE_ERROR && has,
          "rc=%u, error object %s the documented message", rc, has ? "has" : "lacks");
    foorpc_buf_free(res), res = NULL;
    double t0 = now_s();
    rc = foorpc_client_call(c, "hold", NULL, 0, 100, &res);
    double took = now_s() - t0;
    check("sync_call_timeout", rc == FOORPC_RESULT_TIMEOUT && res == NULL && took < 2 && last_error()[0],
          "rc=%u after %.2fs (last error '%s')", rc, took, last_error());
    static struct tally t; /* async timeouts, then the late answers: callbacks run once */
    tally_init(&t);
    int started = start_async(c, "hold", 10, 100);
    tally_wait(&t, 10, 3000);
    wait_held(11, 2000);
    release_held(1);
    int64_t sum = 0;
    rc = call_add(c, "add", 40, 2, 5000, &sum);
    int wrong = tally_wait(&t, 10, 200);
    check("async_timeout_once_despite_late_answer", started == 10 && wrong == 0 && atomic_load(&t.timeout) == 10,
          "started %d, wrong %d, timeouts %d, ok %d", started, wrong, atomic_load(&t.timeout), atomic_load(&t.ok));
    check("call_after_late_answers", rc == FOORPC_RESULT_OK && sum == 42, "rc=%u sum=%lld", rc, (long long)sum);
    foorpc_client_free(c);
}

/* Server freed while clients are mid-call: 2 sync calls in 300 ms pool handlers,
 * 2 sync + 100 async calls held by C and answered by another thread 300 ms into
 * the shutdown (the graceful stop lets handled requests finish). */
static void test_server_free_mid_call(void) {
    char addr[128];
    foorpc_server *s = start_server(addr, sizeof addr);
    foorpc_client *c = s ? connect_to(addr) : NULL;
    if (!c) {
        foorpc_server_free(s);
        return fail("server_free_mid_call", "setup");
    }
    static struct tally t;
    tally_init(&t);
    struct sync_arg a[4];
    pthread_t th[4], ans;
    for (int i = 0; i < 4; i++) {
        a[i] = (struct sync_arg){c, i < 2 ? "slow" : "hold", "\x91\xcd\x01\x2c", 9999, 0, 0};
        pthread_create(&th[i], NULL, sync_caller, &a[i]);
    }
    int started = start_async(c, "hold", 100, 20000);
    wait_held(102, 5000);
    sleep_ms(20); /* the slow calls are in their handlers */
    pthread_create(&ans, NULL, release_later, (void *)(intptr_t)(300 * 2 + 1));
    double t0 = now_s();
    foorpc_server_free(s);
    double took = now_s() - t0;
    pthread_join(ans, NULL);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    int wrong = tally_wait(&t, 100, 5000);
    check("server_free_mid_call_sync_finish",
          a[0].rc == 0 && a[1].rc == 0 && a[0].value == 300 && a[1].value == 300 && a[2].rc != 9999 &&
              a[3].rc != 9999,
          "sync rcs %u %u %u %u (times %.1f %.1f %.1f %.1f)", a[0].rc, a[1].rc, a[2].rc, a[3].rc, a[0].secs,
          a[1].secs, a[2].secs, a[3].secs);
    check("server_free_mid_call_async_once", started == 100 && wrong == 0,
          "started %d, wrong %d, ok %d lost %d closed %d remote %d other %d", started, wrong, atomic_load(&t.ok),
          atomic_load(&t.lost), atomic_load(&t.closed), atomic_load(&t.remote), atomic_load(&t.other));
    check("server_free_mid_call_time", took < 3, "foorpc_server_free took %.1fs", took);
    for (int i = 0; i < 400 && foorpc_client_is_connected(c); i++) sleep_ms(5); /* EOF arrives async */
    check("client_disconnected_after_server_free", !foorpc_client_is_connected(c), "still connected after 2 s");
    foorpc_result rc = call_add(c, "add", 1, 1, 1000, NULL);
    check("call_after_server_gone", foorpc_result_is_connection_error(rc), "rc=%u", rc);
    foorpc_client_free(c);
    printf("  (server_free mid-call: %.2fs; held sync calls rc %u/%u; async ok %d)\n", took, a[2].rc, a[3].rc,
           atomic_load(&t.ok));
}

/* A request held by C whose client is gone; the server is freed in a background
 * thread (the drain waits up to 10 s for it), then the responder is answered
 * (documented as harmless). Runs alongside the other tests. */
struct bg_free {
    pthread_t th;
    double took;
    atomic_int closed;
};
static void on_bg(void *ud, foorpc_result rc, const uint8_t *data, size_t len) {
    (void)data, (void)len;
    atomic_store(&((struct bg_free *)ud)->closed, rc == FOORPC_RESULT_CLOSED ? 1 : 1000 + (int)rc);
}
static void *bg_free_main(void *arg) { /* not using `slots`: runs alongside the other tests */
    struct bg_free *b = arg;
    char addr[128];
    foorpc_server *s = start_server(addr, sizeof addr);
    foorpc_client *c = s ? connect_to(addr) : NULL;
    if (c) foorpc_client_call_async(c, "hold_one", NULL, 0, 20000, on_bg, b);
    for (int i = 0; c && i < 1000 && !atomic_load(&lone); i++) sleep_ms(5);
    foorpc_client_free(c);
    double t0 = now_s();
    foorpc_server_free(s);
    b->took = now_s() - t0;
    return NULL;
}
static void end_answer_after_server_free(struct bg_free *b) {
    pthread_join(b->th, NULL);
    foorpc_responder *r = atomic_exchange(&lone, NULL);
    foorpc_result rc = r ? foorpc_responder_ok(r, (const uint8_t *)"\x05", 1) : 9999;
    check("answer_after_server_free", rc == FOORPC_RESULT_OK && atomic_load(&b->closed) == 1,
          "responder_ok rc=%u, client callback %d", rc, atomic_load(&b->closed));
    check("server_free_drain_bounded", b->took < 12, "foorpc_server_free took %.1fs", b->took);
    printf("  (note: foorpc_server_free waited %.1fs for a held request whose connection was closed)\n", b->took);
}

/* A pool handler that stops its own server ("any thread may call it"; it blocks
 * except from an inline handler). Runs in the background alongside the rest. */
struct stopper {
    foorpc_server *s;
    pthread_t th;
    foorpc_result call_rc, stop_rc;
    double call_secs, stop_secs;
    atomic_int ran;
};
HANDLER(h_stop_pool) {
    (void)m, (void)ml, (void)p, (void)pl;
    struct stopper *st = ud;
    double t0 = now_s();
    st->stop_rc = foorpc_server_stop(st->s);
    st->stop_secs = now_s() - t0;
    atomic_store(&st->ran, 1);
    foorpc_responder_ok(r, NULL, 0);
}
static void *stopper_main(void *arg) {
    struct stopper *st = arg;
    char addr[128];
    st->s = start_server_with(addr, sizeof addr, "stop", h_stop_pool, st, FOORPC_HANDLER_POOL);
    foorpc_client *c = st->s ? connect_to(addr) : NULL;
    double t0 = now_s();
    st->call_rc = c ? foorpc_client_call(c, "stop", NULL, 0, 12000, NULL) : 9999;
    st->call_secs = now_s() - t0;
    foorpc_client_free(c);
    foorpc_server_free(st->s);
    return NULL;
}
static void end_stop_from_pool_handler(struct stopper *st) {
    pthread_join(st->th, NULL);
    check("stop_from_pool_handler", atomic_load(&st->ran) && st->stop_rc == FOORPC_RESULT_OK && st->stop_secs < 2,
          "foorpc_server_stop in a pool handler took %.1fs (rc=%u): it waits for its own request until "
          "the drain timeout; the handler's reply was lost (call rc=%u after %.1fs)",
          st->stop_secs, st->stop_rc, st->call_rc, st->call_secs);
}

/* foorpc_server_stop from a call callback on the server's I/O thread (the
 * client's answer to a server->client call): returns at once, and the server
 * stops. */
static foorpc_server *cb_stop_server;
static atomic_int cb_stop_entered, cb_stop_returned;
static void on_confirm_stop(void *ud, foorpc_result rc, const uint8_t *data, size_t len) {
    (void)ud, (void)rc, (void)data, (void)len;
    atomic_store(&cb_stop_entered, 1);
    foorpc_server_stop(cb_stop_server);
    atomic_store(&cb_stop_returned, 1);
}
HANDLER(h_ask_then_stop) { /* inline: asks the client to confirm, stops on the answer */
    UNUSED_ARGS;
    foorpc_peer *peer = NULL;
    if (foorpc_responder_peer(r, &peer) == FOORPC_RESULT_OK)
        foorpc_peer_call_async(peer, "confirm", NULL, 0, 5000, on_confirm_stop, NULL);
    foorpc_peer_free(peer);
    foorpc_responder_ok(r, NULL, 0);
}
HANDLER(h_confirm) {
    UNUSED_ARGS;
    foorpc_responder_ok(r, (const uint8_t *)"\xc3", 1);
}
static void test_stop_from_call_callback(void) {
    char addr[128];
    foorpc_client_options *o = NULL;
    foorpc_client *c = NULL;
    cb_stop_server = start_server_with(addr, sizeof addr, "ask", h_ask_then_stop, NULL, FOORPC_HANDLER_INLINE);
    foorpc_client_options_new(&o);
    foorpc_client_options_register(o, "confirm", h_confirm, NULL, FOORPC_HANDLER_INLINE);
    if (!cb_stop_server || foorpc_client_connect_with(addr, 5000, o, &c) != FOORPC_RESULT_OK) {
        foorpc_client_options_free(o);
        foorpc_server_free(cb_stop_server);
        return fail("stop_from_call_callback", "setup");
    }
    foorpc_client_options_free(o);
    foorpc_client_call(c, "ask", NULL, 0, 5000, NULL);
    for (int i = 0; i < 1000 && !atomic_load(&cb_stop_returned); i++) sleep_ms(10);
    if (!atomic_load(&cb_stop_returned)) {
        /* The I/O thread is stuck: freeing would block too, so leak both. */
        return fail("stop_from_call_callback", atomic_load(&cb_stop_entered)
                                                   ? "foorpc_server_stop in the callback did not return in 10 s"
                                                   : "the callback did not run");
    }
    double t0 = now_s();
    foorpc_result run_rc = foorpc_server_run(cb_stop_server); /* returns once stopped */
    double run_secs = now_s() - t0;
    int refused = 0;
    for (int i = 0; i < 500 && !refused; i++) {
        foorpc_client *c2 = NULL;
        refused = foorpc_client_connect(addr, 1000, &c2) != FOORPC_RESULT_OK;
        foorpc_client_free(c2);
        if (!refused) sleep_ms(10);
    }
    check("stop_from_call_callback", run_rc == FOORPC_RESULT_OK && run_secs < 5 && refused,
          "run rc=%u after %.1fs; new connections refused: %d", run_rc, run_secs, refused);
    foorpc_client_free(c);
    foorpc_server_free(cb_stop_server);
}

/* A forked child frees its copy of a running server: returns at once, and
 * the parent's server serves on. */
static void test_server_free_in_forked_child(void) {
    char addr[128];
    foorpc_server *s = start_server(addr, sizeof addr);
    foorpc_client *c = s ? connect_to(addr) : NULL;
    if (!c) {
        foorpc_server_free(s);
        return fail("server_free_in_forked_child", "setup");
    }
    /* The child reports through a pipe, not its exit status: under valgrind
     * that reflects the leak check of what the child inherited. */
    int fds[2];
    if (pipe(fds) != 0) {
        foorpc_client_free(c);
        foorpc_server_free(s);
        return fail("server_free_in_forked_child", "pipe");
    }
    pid_t pid = fork();
    if (pid == 0) {
        alarm(20); /* kills the child if free hangs */
        close(fds[0]);
        foorpc_server_stop(s);
        foorpc_server_free(s);
        ssize_t w = write(fds[1], "k", 1);
        _exit(w == 1 ? 0 : 1);
    }
    close(fds[1]);
    char got = 0;
    ssize_t n = pid > 0 ? read(fds[0], &got, 1) : -1; /* EOF when the child dies without reporting */
    close(fds[0]);
    int status = -1;
    if (pid > 0) waitpid(pid, &status, 0);
    int64_t sum = 0;
    foorpc_result rc = call_add(c, "add", 2, 3, 5000, &sum);
    check("server_free_in_forked_child", n == 1 && got == 'k' && rc == FOORPC_RESULT_OK && sum == 5,
          "child reported %zd byte(s), status %#x; parent's call after it rc=%u sum=%lld", n, status, rc,
          (long long)sum);
    foorpc_client_free(c);
    foorpc_server_free(s);
}

/* A child that frees a client it inherited over fork() leaves the parent's
 * connection alone (a shutdown(2) there would end it: it acts on the shared
 * socket, not on the child's descriptor). */
static void test_client_free_in_forked_child(void) {
    char addr[128];
    foorpc_server *s = start_server(addr, sizeof addr);
    foorpc_client *c = s ? connect_to(addr) : NULL;
    int fds[2];
    if (!c || pipe(fds) != 0) {
        foorpc_client_free(c);
        foorpc_server_free(s);
        return fail("client_free_in_forked_child", "setup");
    }
    pid_t pid = fork();
    if (pid == 0) {
        alarm(20); /* kills the child if free hangs */
        close(fds[0]);
        foorpc_result refused = call_add(c, "add", 1, 1, 2000, NULL);
        foorpc_client_free(c);
        char report = refused == FOORPC_RESULT_USAGE ? 'k' : 'u';
        ssize_t w = write(fds[1], &report, 1);
        _exit(w == 1 ? 0 : 1);
    }
    close(fds[1]);
    char got = 0;
    ssize_t n = pid > 0 ? read(fds[0], &got, 1) : -1;
    close(fds[0]);
    int status = -1;
    if (pid > 0) waitpid(pid, &status, 0);
    int64_t sum = 0;
    foorpc_result rc = call_add(c, "add", 2, 3, 5000, &sum);
    check("client_free_in_forked_child",
          n == 1 && got == 'k' && rc == FOORPC_RESULT_OK && sum == 5 && foorpc_client_is_connected(c),
          "child reported %zd byte(s) '%c' (k: its call was refused, then free returned), status %#x; "
          "parent's call after it rc=%u sum=%lld",
          n, got ? got : '-', status, rc, (long long)sum);
    foorpc_client_free(c);
    foorpc_server_free(s);
}

/* ---- writes to a peer that does not read ------------------------------------------- */

/* A step that must not block gets SIGALRM after 15 s: it then fails at once
 * instead of waiting out a timeout (or for ever). */
static const char *volatile guarded_step = "";
static void on_guard_alarm(int sig) {
    (void)sig;
    static const char tail[] = ": blocked for 15 s (a peer that does not read)\n";
    const char *name = guarded_step;
    ssize_t w = write(STDOUT_FILENO, "FAIL ", 5);
    w += write(STDOUT_FILENO, name, strlen(name));
    w += write(STDOUT_FILENO, tail, sizeof tail - 1);
    _exit(w > 0 ? 1 : 2);
}
static void guard(const char *step) {
    guarded_step = step;
    signal(SIGALRM, on_guard_alarm);
    alarm(15);
}
static void unguard(void) {
    alarm(0);
    signal(SIGALRM, SIG_DFL);
}

/* A TCP listener on 127.0.0.1 that nobody reads from; -1 on failure. */
static int deaf_listener(char *addr, size_t cap) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 4) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    snprintf(addr, cap, "tcp://127.0.0.1:%u", ntohs(sa.sin_port));
    return fd;
}

/* Params [bin of n bytes]: far more than the socket buffers hold. */
#define BIG_PARAMS (24u << 20)
static uint8_t *big_params(size_t *len) {
    *len = BIG_PARAMS + 6;
    uint8_t *p = calloc(1, *len);
    if (!p) return NULL;
    p[0] = 0x91;
    p[1] = 0xc6;
    for (int i = 0; i < 4; i++) p[2 + i] = (uint8_t)(BIG_PARAMS >> (24 - 8 * i));
    return p;
}

/* A client connected to a listener that accepted it and does not read, and
 * params too big for the socket buffers. */
struct deaf {
    int lfd, peer;
    foorpc_client *c;
    uint8_t *params;
    size_t len;
};
static void deaf_end(struct deaf *d) { /* the client is freed by the test */
    free(d->params);
    if (d->peer >= 0) close(d->peer);
    if (d->lfd >= 0) close(d->lfd);
}
static int deaf_start(struct deaf *d) { /* 0 (and nothing left open) on failure */
    char addr[64];
    d->params = big_params(&d->len);
    d->lfd = deaf_listener(addr, sizeof addr);
    d->c = d->lfd >= 0 && d->params ? connect_to(addr) : NULL;
    d->peer = d->c ? accept(d->lfd, NULL, NULL) : -1;
    if (d->peer >= 0) return 1;
    foorpc_client_free(d->c);
    deaf_end(d);
    return 0;
}

/* Reads from fd until `want` bytes came, for at most timeout_ms; returns the count. */
static size_t read_at_most(int fd, size_t want, long timeout_ms) {
    static uint8_t sink[1 << 16];
    size_t got = 0;
    double until = now_s() + timeout_ms / 1000.0;
    while (got < want && now_s() < until) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0) continue;
        size_t room = want - got < sizeof sink ? want - got : sizeof sink;
        ssize_t n = read(fd, sink, room);
        if (n <= 0) break;
        got += (size_t)n;
    }
    return got;
}

/* foorpc_client_call_async of a request the socket cannot take returns at
 * once; the I/O thread writes on, and the callback reports the timeout.
 * The request was not all written by then: it still is, whole, once the
 * peer reads, and the connection stays open. */
static void test_call_async_to_a_peer_that_does_not_read(void) {
    struct deaf d;
    if (!deaf_start(&d)) return fail("call_async_to_a_peer_that_does_not_read", "setup");
    foorpc_client *c = d.c;
    struct tally t;
    tally_init(&t);
    guard("call_async_to_a_peer_that_does_not_read");
    foorpc_result rc = foorpc_client_call_async(c, "m", d.params, d.len, 300, on_async, &slots[0]);
    unguard();
    memset(d.params, 1, d.len); /* not retained: the call copied what it still had to write */
    int wrong = rc == FOORPC_RESULT_OK ? tally_wait(&t, 1, 10000) : -1;
    int connected = foorpc_client_is_connected(c);
    /* The timed-out request is still written whole: [0, 0, "m", params]. */
    size_t got = read_at_most(d.peer, d.len + 5, 20000);
    check("call_async_to_a_peer_that_does_not_read",
          rc == FOORPC_RESULT_OK && wrong == 0 && atomic_load(&t.timeout) == 1 && connected && got == d.len + 5,
          "call_async rc=%u (%s); callbacks not run once: %d; timeouts %d, lost %d, other %d; connected: %d; "
          "the peer read %zu of %zu bytes",
          rc, rc ? last_error() : "", wrong, atomic_load(&t.timeout), atomic_load(&t.lost), atomic_load(&t.other),
          connected, got, d.len + 5);
    guard("free_after_call_async_to_a_peer_that_does_not_read");
    foorpc_client_free(c);
    unguard();
    deaf_end(&d);
}

/* foorpc_client_notify of a message the socket cannot take returns at once,
 * and the I/O thread writes it as the peer reads. While more than
 * FOORPC_LIMIT_MAX_WRITE_BACKLOG waits unwritten, notify and call_async are
 * refused with FOORPC_RESULT_LIMIT_EXCEEDED; foorpc_client_free does not
 * wait for a peer that does not read. */
static void test_notify_to_a_peer_that_does_not_read(void) {
    const char *name = "notify_to_a_peer_that_does_not_read";
    struct deaf d;
    if (!deaf_start(&d)) return fail(name, "setup");
    foorpc_client *c = d.c;
    int peer = d.peer;
    size_t len = d.len;
    guard(name);
    foorpc_result rc = foorpc_client_notify(c, "m", d.params, len);
    unguard();
    foorpc_result refused = foorpc_client_notify(c, "m", NULL, 0);
    int names_limit = strstr(last_error(), "max_write_backlog") != NULL;
    struct tally t;
    tally_init(&t);
    foorpc_result refused_call = foorpc_client_call_async(c, "m", NULL, 0, 300, on_async, &slots[0]);
    /* [2, "m", params]: 4 bytes before the params. */
    size_t got = read_at_most(peer, len + 4, 20000);
    foorpc_result after = foorpc_client_notify(c, "n", NULL, 0);
    size_t got_after = read_at_most(peer, 5, 5000); /* [2, "n", []] */
    check(name,
          rc == FOORPC_RESULT_OK && refused == FOORPC_RESULT_LIMIT_EXCEEDED && names_limit &&
              refused_call == FOORPC_RESULT_LIMIT_EXCEEDED && got == len + 4 && after == FOORPC_RESULT_OK &&
              got_after == 5 && atomic_load(&t.total) == 0,
          "notify rc=%u; with the backlog: notify rc=%u (message names the limit: %d), call_async rc=%u; "
          "the peer read %zu of %zu bytes, then notify rc=%u and %zu of 5 bytes; callbacks %d",
          rc, refused, names_limit, refused_call, got, len + 4, after, got_after, atomic_load(&t.total));

    /* Another one the peer never reads: freeing the client does not wait for it. */
    guard("free_with_a_notification_the_peer_does_not_read");
    rc = foorpc_client_notify(c, "m", d.params, len);
    foorpc_client_free(c);
    unguard();
    check("free_with_a_notification_the_peer_does_not_read", rc == FOORPC_RESULT_OK, "notify rc=%u", rc);
    deaf_end(&d);
}

/* foorpc_server_free waits for pool notification handlers still running
 * (the stop does not), and none starts after it returns. */
static atomic_int note_started, note_running, note_finished;
static void on_slow_note(void *ud, const char *m, size_t ml, const uint8_t *p, size_t pl, const foorpc_peer *peer) {
    (void)ud, (void)m, (void)ml, (void)p, (void)pl, (void)peer;
    atomic_fetch_add(&note_started, 1);
    atomic_fetch_add(&note_running, 1);
    sleep_ms(300);
    atomic_fetch_sub(&note_running, 1);
    atomic_fetch_add(&note_finished, 1);
}
static void test_server_free_waits_for_notification_handlers(void) {
    char addr[128];
    foorpc_server *s = NULL;
    foorpc_client *c = NULL;
    if (foorpc_server_new(&s) || foorpc_server_register_notification(s, "slow", on_slow_note, NULL, FOORPC_HANDLER_POOL) ||
        foorpc_server_bind(s, "tcp://127.0.0.1:0") || foorpc_server_local_address(s, addr, sizeof addr, NULL) ||
        foorpc_server_start(s) || !(c = connect_to(addr))) {
        foorpc_server_free(s);
        return fail("server_free_waits_for_notification_handlers", "setup");
    }
    for (int i = 0; i < 8; i++) foorpc_client_notify(c, "slow", (const uint8_t *)"\x90", 1);
    for (int i = 0; i < 500 && !atomic_load(&note_started); i++) sleep_ms(10);
    foorpc_server_free(s);
    int running = atomic_load(&note_running), started = atomic_load(&note_started);
    sleep_ms(400);
    int started_later = atomic_load(&note_started) - started;
    check("server_free_waits_for_notification_handlers", started > 0 && running == 0 && started_later == 0,
          "started %d; running when foorpc_server_free returned %d; started after it %d", started, running,
          started_later);
    foorpc_client_free(c);
}

/* foorpc_client_free waits for a call callback already running on the I/O thread. */
static atomic_int cb_started, cb_finished;
static void on_slow_done(void *ud, foorpc_result rc, const uint8_t *data, size_t len) {
    (void)ud, (void)rc, (void)data, (void)len;
    atomic_store(&cb_started, 1);
    sleep_ms(300);
    atomic_store(&cb_finished, 1);
}
static void test_client_free_waits_for_running_callback(const char *addr) {
    foorpc_client *c = connect_to(addr);
    if (!c || foorpc_client_call_async(c, "add", (const uint8_t *)"\x92\x01\x02", 3, 5000, on_slow_done, NULL)) {
        foorpc_client_free(c);
        return fail("client_free_waits_for_running_callback", "setup");
    }
    for (int i = 0; i < 500 && !atomic_load(&cb_started); i++) sleep_ms(10);
    foorpc_client_free(c);
    check("client_free_waits_for_running_callback", atomic_load(&cb_started) && atomic_load(&cb_finished),
          "callback started %d, finished %d when foorpc_client_free returned", atomic_load(&cb_started),
          atomic_load(&cb_finished));
}

/* Blocking calls from completion callbacks: documented to fail at once with USAGE
 * on the I/O thread; wherever the callback runs, they must not sit until their timeout. */
struct nested {
    const foorpc_client *c;
    pthread_t leader;
    atomic_int done, on_leader;
    atomic_uint rc;
    double secs;
};
static void on_nested_sync(void *ud, foorpc_result rc, const uint8_t *data, size_t len) {
    (void)rc, (void)data, (void)len;
    struct nested *n = ud;
    if (pthread_equal(pthread_self(), n->leader)) atomic_store(&n->on_leader, 1);
    double t0 = now_s();
    atomic_store(&n->rc, call_add(n->c, "add", 1, 2, 600, NULL));
    n->secs = now_s() - t0;
    atomic_store(&n->done, 1);
}
static void *leader_call(void *arg) {
    struct nested *n = arg;
    foorpc_client_call(n->c, "slow", (const uint8_t *)"\x91\x64", 2, 5000, NULL);
    return NULL;
}
static void test_sync_call_in_callback(const char *addr) {
    static struct nested n;
    memset(&n, 0, sizeof n);
    foorpc_client *c = connect_to(addr);
    if (!c) return fail("sync_call_in_callback", "connect");
    n.c = c;
    n.leader = pthread_self(); /* here: the thread making the async call */
    foorpc_client_call_async(c, "slow", (const uint8_t *)"\x91\x32", 2, 5000, on_nested_sync, &n);
    for (int i = 0; i < 600 && !atomic_load(&n.done); i++) sleep_ms(5);
    check("sync_call_in_io_thread_callback_usage",
          atomic_load(&n.done) && !atomic_load(&n.on_leader) && atomic_load(&n.rc) == FOORPC_RESULT_USAGE &&
              n.secs < 0.5,
          "done %d, on the caller's thread %d, rc=%u after %.2fs", atomic_load(&n.done), atomic_load(&n.on_leader),
          atomic_load(&n.rc), n.secs);
    foorpc_client_free(c);

    /* A fresh client read by a thread blocked in a sync call (the "leader"); an
     * async call made meanwhile may complete on that thread. */
    int on_leader = 0, slow = 0, done = 0;
    unsigned worst_rc = 0;
    double worst = 0;
    for (int round = 0; round < 10 && !slow; round++) { /* one stall is enough */
        memset(&n, 0, sizeof n);
        if (!(n.c = c = connect_to(addr))) break;
        pthread_create(&n.leader, NULL, leader_call, &n);
        sleep_ms(20);
        foorpc_client_call_async(c, "add_inline", (const uint8_t *)"\x92\x01\x02", 3, 5000, on_nested_sync, &n);
        for (int i = 0; i < 600 && !atomic_load(&n.done); i++) sleep_ms(5);
        pthread_join(n.leader, NULL);
        done += atomic_load(&n.done);
        on_leader += atomic_load(&n.on_leader);
        slow += n.secs > 0.5;
        if (n.secs > worst) worst = n.secs, worst_rc = atomic_load(&n.rc);
        foorpc_client_free(c);
    }
    check("sync_call_in_leader_callback_no_stall", slow == 0,
          "%d callbacks, %d nested sync calls stalled until their timeout (%.2fs, rc=%u) instead of "
          "FOORPC_RESULT_USAGE; %d ran on the thread blocked in foorpc_client_call",
          done, slow, worst, worst_rc, on_leader);
}

/* Async calls with 1 ms timeouts racing their replies; each callback runs once. */
static void test_timeout_races(const char *addr) {
    static struct tally t;
    tally_init(&t);
    foorpc_client *c = connect_to(addr);
    if (!c) return fail("timeout_race_1ms_once", "connect");
    int started = start_async(c, "echo", NASYNC, 1);
    int wrong = tally_wait(&t, NASYNC, 5000);
    sleep_ms(50); /* late duplicates would show up here */
    int total = atomic_load(&t.total);
    check("timeout_race_1ms_once", started == NASYNC && wrong == 0 && total == NASYNC && atomic_load(&t.other) == 0,
          "started %d, total %d, wrong %d (ok %d timeout %d other %d)", started, total, wrong, atomic_load(&t.ok),
          atomic_load(&t.timeout), atomic_load(&t.other));
    int64_t sum = 0;
    foorpc_result rc = call_add(c, "add", 3, 4, UINT32_MAX, &sum);
    check("timeout_uint32_max", rc == FOORPC_RESULT_OK && sum == 7, "rc=%u (%s)", rc, last_error());
    foorpc_client_free(c);
}

/* A peer handle kept by C: the server side closes the connection while a request
 * is held (close first, then free the responder), and the handle is used after
 * the server is freed. */
static foorpc_responder *_Atomic kept_resp;
static foorpc_peer *kept_peer;
HANDLER(h_keep) {
    UNUSED_ARGS;
    foorpc_responder_peer(r, &kept_peer);
    atomic_store(&kept_resp, r);
}
static void test_peer_outlives_server(void) {
    char addr[128];
    foorpc_server *s = start_server_with(addr, sizeof addr, "keep", h_keep, NULL, FOORPC_HANDLER_INLINE);
    foorpc_client *c = s ? connect_to(addr) : NULL;
    if (!c) return foorpc_server_free(s), fail("peer_outlives_server", "setup");
    static struct tally t;
    tally_init(&t);
    start_async(c, "keep", 1, 5000);
    for (int i = 0; i < 1000 && !atomic_load(&kept_resp); i++) sleep_ms(5);
    foorpc_peer_close(kept_peer);
    foorpc_peer_close(kept_peer);
    foorpc_responder_free(atomic_exchange(&kept_resp, NULL));
    tally_wait(&t, 1, 3000);
    check("peer_close_fails_pending_call", atomic_load(&t.total) == 1 && atomic_load(&t.ok) == 0 && atomic_load(&t.remote) == 0,
          "runs %d ok %d remote %d", atomic_load(&t.total), atomic_load(&t.ok), atomic_load(&t.remote));
    for (int i = 0; i < 200 && foorpc_client_is_connected(c); i++) sleep_ms(5);
    check("client_sees_server_side_close", !foorpc_client_is_connected(c), "still connected");
    double t0 = now_s();
    foorpc_server_free(s);
    double took = now_s() - t0;
    uint64_t id = foorpc_peer_id(kept_peer);
    foorpc_result rc1 = foorpc_peer_call(kept_peer, "x", NULL, 0, 500, NULL);
    foorpc_result rc2 = foorpc_peer_notify(kept_peer, "x", NULL, 0);
    tally_init(&t);
    foorpc_result rc3 = foorpc_peer_call_async(kept_peer, "x", NULL, 0, 500, on_async, &slots[0]);
    tally_wait(&t, 1, 2000);
    int runs = atomic_load(&t.total);
    check("peer_after_server_free",
          id != 0 && !foorpc_peer_is_connected(kept_peer) && foorpc_result_is_connection_error(rc1) &&
              foorpc_result_is_connection_error(rc2) && (rc3 == 0 ? runs == 1 && atomic_load(&t.ok) == 0 : runs == 0),
          "id %llu, call rc=%u notify rc=%u async rc=%u (callbacks %d)", (unsigned long long)id, rc1, rc2, rc3, runs);
    check("server_free_after_peer_close_fast", took < 2, "took %.1fs", took);
    foorpc_peer_free(kept_peer);
    foorpc_client_free(c);
}

/* ---- 2. one client shared by 8 threads ------------------------------------------------ */

#define NTHREADS 8
#define PER_THREAD 300
struct share {
    const foorpc_client *c;
    int id, sync_bad, async_started;
    atomic_int runs, wrong;
    int64_t expect[PER_THREAD];
};
struct share_ref {
    struct share *a;
    int i;
} share_refs[NTHREADS][PER_THREAD];
static void on_share(void *ud, foorpc_result rc, const uint8_t *data, size_t len) {
    struct share_ref *ref = ud;
    if (rc != FOORPC_RESULT_OK || first_int(data, len) != ref->a->expect[ref->i]) atomic_fetch_add(&ref->a->wrong, 1);
    atomic_fetch_add(&ref->a->runs, 1);
}
static void *share_worker(void *arg) {
    struct share *a = arg;
    foorpc_writer *w = NULL;
    foorpc_writer_new(&w);
    for (int i = 0; i < PER_THREAD; i++) {
        int64_t x = (int64_t)a->id * 1000000 + i, y = -(int64_t)i * 3, sum = INT64_MIN;
        if (i % 2 == 0) { /* sync, alternating pool and inline handlers */
            if (call_add(a->c, i % 4 ? "add" : "add_inline", x, y, 10000, &sum) || sum != x + y) a->sync_bad++;
            continue;
        }
        a->expect[i] = x + y;
        share_refs[a->id - 1][i] = (struct share_ref){a, i};
        foorpc_writer_clear(w);
        foorpc_writer_array(w, 2);
        foorpc_writer_int(w, x);
        foorpc_writer_int(w, y);
        a->async_started += foorpc_client_call_async(a->c, i % 3 ? "add" : "add_inline", foorpc_writer_data(w),
                                                     foorpc_writer_len(w), 10000, on_share,
                                                     &share_refs[a->id - 1][i]) == FOORPC_RESULT_OK;
    }
    foorpc_writer_free(w);
    return NULL;
}
static void test_shared_client(const char *addr) {
    foorpc_client *c = connect_to(addr);
    if (!c) return fail("shared_client_8_threads", "connect");
    static struct share a[NTHREADS];
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        memset(&a[i], 0, sizeof a[i]);
        a[i].c = c, a[i].id = i + 1;
        pthread_create(&th[i], NULL, share_worker, &a[i]);
    }
    int sync_bad = 0, started = 0, runs = 0, wrong = 0, expect = NTHREADS * PER_THREAD / 2;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        sync_bad += a[i].sync_bad, started += a[i].async_started;
    }
    for (long w = 0; w < 10000 && runs < started; w += 5) {
        sleep_ms(5);
        runs = 0;
        for (int i = 0; i < NTHREADS; i++) runs += atomic_load(&a[i].runs);
    }
    for (int i = 0; i < NTHREADS; i++) wrong += atomic_load(&a[i].wrong);
    check("shared_client_8_threads_sync", sync_bad == 0, "%d of %d sync calls wrong", sync_bad, expect);
    check("shared_client_8_threads_async", started == expect && runs == expect && wrong == 0,
          "started %d, callbacks %d, wrong results %d (expected %d)", started, runs, wrong, expect);
    foorpc_client_free(c);
}

/* ---- 3. params validation --------------------------------------------------------------- */

static void nested(foorpc_writer *w, int depth) {
    foorpc_writer_clear(w);
    for (int i = 0; i < depth; i++) foorpc_writer_array(w, 1);
    foorpc_writer_nil(w);
}
static void bin_params(foorpc_writer *w, size_t n) { /* [bin of n pseudo-random bytes] */
    uint8_t *blob = malloc(n);
    for (size_t i = 0; i < n; i++) blob[i] = (uint8_t)(i * 2654435761u >> 13);
    foorpc_writer_clear(w);
    foorpc_writer_array(w, 1);
    foorpc_writer_bin(w, blob, n);
    free(blob);
}
static void test_params(const char *addr) {
    foorpc_client *c = connect_to(addr);
    if (!c) return fail("params", "connect");
    foorpc_buf *res = NULL, *res2 = NULL;
    foorpc_result rc = call_raw(c, "echo", NULL, 0, &res), rc2 = call_raw(c, "echo", "\x90", 0, &res2);
    check("params_zero_length_is_empty_array", rc == 0 && rc2 == 0 && buf_has(res, "\x90") && buf_has(res2, "\x90") &&
          foorpc_buf_len(res) == 1 && foorpc_buf_len(res2) == 1, "rcs %u %u", rc, rc2);
    foorpc_buf_free(res), foorpc_buf_free(res2), res = NULL;
    static const struct {
        const char *name, *bytes;
        size_t len;
    } bad[] = {
        {"params_not_array_int", "\x01", 1},          {"params_not_array_map", "\x81\x01\x02", 3},
        {"params_not_array_str", "\xa1x", 2},         {"params_two_values", "\x90\x90", 2},
        {"params_truncated_array", "\x92\x01", 2},    {"params_reserved_byte_c1", "\xc1", 1},
        {"params_truncated_str_in_array", "\x91\xa5xy", 4},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        res = NULL;
        rc = call_raw(c, "echo", bad[i].bytes, bad[i].len, &res);
        check(bad[i].name, rc == FOORPC_RESULT_INVALID_MSGPACK && res == NULL && last_error()[0],
              "rc=%u res=%p last_error='%s'", rc, (void *)res, last_error());
        foorpc_buf_free(res);
    }
    static struct tally t;
    tally_init(&t);
    rc = foorpc_client_call_async(c, "echo", (const uint8_t *)"\x01", 1, 1000, on_async, &slots[0]);
    rc2 = foorpc_client_notify(c, "echo", (const uint8_t *)"\x01", 1);
    sleep_ms(50);
    check("async_and_notify_bad_params", rc == FOORPC_RESULT_INVALID_MSGPACK && rc2 == FOORPC_RESULT_INVALID_MSGPACK &&
              atomic_load(&t.total) == 0,
          "async rc=%u notify rc=%u, callbacks run %d", rc, rc2, atomic_load(&t.total));

    foorpc_writer *w = NULL;
    foorpc_writer_new(&w);
    int deepest = 0; /* "arrays/maps nested 128 deep": the params array counts */
    for (int d = 120; d <= 135; d++) {
        nested(w, d);
        if (call_raw(c, "echo", foorpc_writer_data(w), foorpc_writer_len(w), NULL) == 0) deepest = d;
    }
    nested(w, 200);
    rc = call_raw(c, "echo", foorpc_writer_data(w), foorpc_writer_len(w), NULL);
    nested(w, 100000); /* deep enough to overflow a recursive validator's stack */
    rc2 = call_raw(c, "echo", foorpc_writer_data(w), foorpc_writer_len(w), NULL);
    check("params_nesting_limit", deepest == 127 && rc == FOORPC_RESULT_INVALID_MSGPACK && rc2 == FOORPC_RESULT_INVALID_MSGPACK,
          "deepest accepted %d (+1 for the params array), 200 deep rc=%u, 100000 deep rc=%u", deepest, rc, rc2);
    rc = call_raw(c, "deep", NULL, 0, &res);
    check("result_nested_200_error_reply",
          rc == FOORPC_RESULT_REMOTE_ERROR && atomic_load(&deep_rc) == FOORPC_RESULT_INVALID_MSGPACK,
          "call rc=%u, responder_ok rc=%u", rc, atomic_load(&deep_rc));
    foorpc_buf_free(res), res = NULL;

    rc = call_raw(c, "\xff\xfe", NULL, 0, &res);
    check("method_invalid_utf8", rc == FOORPC_RESULT_INVALID_ARGUMENT && res == NULL, "rc=%u (%s)", rc, last_error());
    rc = call_raw(c, "", NULL, 0, &res);
    check("method_empty", rc == FOORPC_RESULT_REMOTE_ERROR || rc == FOORPC_RESULT_INVALID_ARGUMENT, "rc=%u (%s)", rc,
          last_error());
    foorpc_buf_free(res), res = NULL;
    char *name = calloc(1, (1 << 20) + 1);
    memset(name, 'm', 1 << 20);
    rc = call_raw(c, name, NULL, 0, &res);
    check("method_1MiB_unknown", rc == FOORPC_RESULT_REMOTE_ERROR && buf_has(res, "unknown method"), "rc=%u (%s)", rc,
          last_error());
    free(name);
    foorpc_buf_free(res), res = NULL;

    bin_params(w, 8u << 20);
    rc = call_raw(c, "echo", foorpc_writer_data(w), foorpc_writer_len(w), &res);
    int same = rc == 0 && foorpc_buf_len(res) == foorpc_writer_len(w) &&
               memcmp(foorpc_buf_data(res), foorpc_writer_data(w), foorpc_writer_len(w)) == 0;
    check("bin_8MiB_round_trip", same, "rc=%u len=%zu (%s)", rc, foorpc_buf_len(res), last_error());
    foorpc_buf_free(res), res = NULL;

    bin_params(w, 65u << 20); /* over the 64 MiB message limit: rejected before sending */
    rc = call_raw(c, "echo", foorpc_writer_data(w), foorpc_writer_len(w), &res);
    check("params_over_64MiB_rejected", rc == FOORPC_RESULT_INVALID_MSGPACK && res == NULL, "rc=%u (%s)", rc,
          last_error());
    foorpc_writer_free(w);
    int64_t sum = 0;
    rc = call_add(c, "add", 20, 22, 5000, &sum);
    check("client_usable_after_bad_params", rc == FOORPC_RESULT_OK && sum == 42, "rc=%u", rc);
    foorpc_client_free(c);
}

/* ---- 4. NULL arguments, reader/writer misuse -------------------------------------------- */

static void test_null_args(const char *addr) {
    foorpc_client *c = connect_to(addr);
    foorpc_buf *res = NULL;
    foorpc_result r[6] = {foorpc_client_call(c, NULL, NULL, 0, 1000, &res),
                          foorpc_client_call(c, "echo", NULL, 5, 1000, &res),
                          foorpc_client_call_async(c, "echo", NULL, 0, 1000, NULL, NULL),
                          foorpc_client_call_async(c, NULL, NULL, 0, 1000, on_async, &slots[0]),
                          foorpc_client_notify(c, NULL, NULL, 0),
                          call_raw(c, "echo", NULL, 0, NULL)}; /* result_out NULL is allowed */
    int bad = r[5] != FOORPC_RESULT_OK || res != NULL;
    for (int i = 0; i < 5; i++) bad += r[i] != FOORPC_RESULT_NULL_PARAMETER;
    check("client_null_args", c && bad == 0, "rcs %u %u %u %u %u %u", r[0], r[1], r[2], r[3], r[4], r[5]);
    foorpc_client_free(c);

    char buf[8];
    size_t n = 0;
    r[0] = foorpc_last_error_message(buf, 0, &n);
    r[1] = foorpc_server_local_address(NULL, buf, sizeof buf, &n);
    check("misc_null_args", r[0] == FOORPC_RESULT_NULL_PARAMETER && r[1] == FOORPC_RESULT_NULL_PARAMETER,
          "last_error_message(len 0) rc=%u, server_local_address(NULL) rc=%u", r[0], r[1]);
    foorpc_writer *w = NULL;
    foorpc_writer_new(&w);
    r[0] = foorpc_writer_str(w, NULL, 5), r[1] = foorpc_writer_bin(w, NULL, 3);
    r[2] = foorpc_writer_ext(w, 1, NULL, 2), r[3] = foorpc_writer_cstr(w, NULL);
    size_t len0 = foorpc_writer_len(w);
    r[4] = foorpc_writer_str(w, NULL, 0) | foorpc_writer_bin(w, NULL, 0); /* a0, c4 00 */
    r[5] = foorpc_writer_raw(w, (const uint8_t *)"\x01\x02", 2) == FOORPC_RESULT_INVALID_MSGPACK &&
           foorpc_writer_raw(w, (const uint8_t *)"\x92\x01", 2) == FOORPC_RESULT_INVALID_MSGPACK &&
           foorpc_writer_raw(w, NULL, 0) != 0;
    check("writer_null_and_invalid", r[0] == FOORPC_RESULT_NULL_PARAMETER && r[1] == FOORPC_RESULT_NULL_PARAMETER &&
              r[2] == FOORPC_RESULT_NULL_PARAMETER && r[3] == FOORPC_RESULT_NULL_PARAMETER && len0 == 0 &&
              r[4] == 0 && r[5] && foorpc_writer_len(w) == 3,
          "rcs %u %u %u %u %u raw-ok %u, len %zu then %zu", r[0], r[1], r[2], r[3], r[4], r[5], len0,
          foorpc_writer_len(w));
    foorpc_writer_free(w);
}

/* Reader misuse: every failed read must leave the position unchanged. */
enum { RD_INT, RD_UINT, RD_NIL, RD_SKIP, RD_RAW };
static foorpc_result rd(int op, const char *b, size_t n, int64_t *i, uint64_t *u) {
    foorpc_reader *r = NULL;
    const uint8_t *p;
    size_t len;
    foorpc_reader_new((const uint8_t *)b, n, &r);
    foorpc_result rc = op == RD_INT ? foorpc_reader_read_int(r, i) : op == RD_UINT ? foorpc_reader_read_uint(r, u)
                       : op == RD_NIL ? foorpc_reader_read_nil(r) : op == RD_SKIP ? foorpc_reader_skip(r)
                                                                  : foorpc_reader_read_raw(r, &p, &len);
    size_t rem = foorpc_reader_remaining(r);
    foorpc_reader_free(r);
    return rc != 0 && rem != n ? 8888 : rc; /* 8888: moved on failure */
}
static void test_reader_misuse(void) {
    static const struct {
        const char *name, *bytes;
        size_t len;
        int op;
        foorpc_result want;
    } cases[] = {
        {"reader_2^63_as_int", "\xcf\x80\0\0\0\0\0\0\0", 9, RD_INT, FOORPC_RESULT_OUT_OF_RANGE},
        {"reader_minus1_as_uint", "\xff", 1, RD_UINT, FOORPC_RESULT_OUT_OF_RANGE},
        {"reader_int64_min_as_uint", "\xd3\x80\0\0\0\0\0\0\0", 9, RD_UINT, FOORPC_RESULT_OUT_OF_RANGE},
        {"reader_truncated_uint16", "\xcd\x01", 2, RD_INT, FOORPC_RESULT_END_OF_DATA},
        {"reader_truncated_int64", "\xd3\x80\0\0", 4, RD_INT, FOORPC_RESULT_END_OF_DATA},
        {"reader_empty_input", "", 0, RD_INT, FOORPC_RESULT_END_OF_DATA},
        {"reader_reserved_c1", "\xc1", 1, RD_INT, FOORPC_RESULT_MALFORMED_DATA},
        {"reader_skip_reserved_c1", "\xc1", 1, RD_SKIP, FOORPC_RESULT_MALFORMED_DATA},
        {"reader_str_as_int", "\xa1x", 2, RD_INT, FOORPC_RESULT_TYPE_MISMATCH},
        {"reader_f64_as_int", "\xcb\0\0\0\0\0\0\0\0", 9, RD_INT, FOORPC_RESULT_TYPE_MISMATCH},
        {"reader_int_as_nil", "\x01", 1, RD_NIL, FOORPC_RESULT_TYPE_MISMATCH},
        /* lengths and counts far beyond the input: no huge allocation, no hang */
        {"reader_skip_str32_past_end", "\xdb\xff\xff\xff\xffxyz", 8, RD_SKIP, FOORPC_RESULT_END_OF_DATA},
        {"reader_raw_bin32_past_end", "\xc6\xff\xff\xff\xff\x01", 6, RD_RAW, FOORPC_RESULT_END_OF_DATA},
        {"reader_skip_ext32_past_end", "\xc9\xff\xff\xff\xff\x01\x02", 7, RD_SKIP, FOORPC_RESULT_END_OF_DATA},
        {"reader_skip_array32_past_end", "\xdd\xff\xff\xff\xff\x01", 6, RD_SKIP, FOORPC_RESULT_END_OF_DATA},
        {"reader_raw_map32_past_end", "\xdf\xff\xff\xff\xff\x01\x01", 7, RD_RAW, FOORPC_RESULT_END_OF_DATA},
        {"reader_skip_short_array", "\x95\x01", 2, RD_SKIP, FOORPC_RESULT_END_OF_DATA},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int64_t i = 0;
        uint64_t u = 0;
        foorpc_result rc = rd(cases[k].op, cases[k].bytes, cases[k].len, &i, &u);
        check(cases[k].name, rc == cases[k].want, "rc=%u, want %u", rc, cases[k].want);
    }
    int64_t i = 0, j = 0;
    uint64_t u = 0;
    foorpc_result a = rd(RD_INT, "\xd3\x80\0\0\0\0\0\0\0", 9, &i, NULL);
    foorpc_result b = rd(RD_INT, "\xcf\x7f\xff\xff\xff\xff\xff\xff\xff", 9, &j, NULL);
    foorpc_result c = rd(RD_UINT, "\xcf\xff\xff\xff\xff\xff\xff\xff\xff", 9, NULL, &u);
    check("reader_int_boundaries", a == 0 && i == INT64_MIN && b == 0 && j == INT64_MAX && c == 0 && u == UINT64_MAX,
          "rcs %u %u %u", a, b, c);

    foorpc_reader *r = NULL;
    uint32_t cnt = 0; /* an array32 header alone reads fine; then the elements are missing */
    foorpc_reader_new((const uint8_t *)"\xdd\xff\xff\xff\xff\x01", 6, &r);
    a = foorpc_reader_read_array(r, &cnt), b = foorpc_reader_read_int(r, &i), c = foorpc_reader_read_int(r, &i);
    foorpc_type ty = foorpc_reader_peek_type(r);
    foorpc_reader_free(r);
    check("reader_array_header_then_end", a == 0 && cnt == UINT32_MAX && b == 0 && c == FOORPC_RESULT_END_OF_DATA &&
              ty == FOORPC_TYPE_NONE,
          "rcs %u %u %u cnt %u type %u", a, b, c, cnt, ty);

    size_t depth = 1000000; /* one million nested arrays: no stack overflow */
    uint8_t *deep = malloc(depth + 1);
    memset(deep, 0x91, depth);
    deep[depth] = 0xc0;
    a = rd(RD_SKIP, (const char *)deep, depth + 1, NULL, NULL);
    b = rd(RD_RAW, (const char *)deep, depth + 1, NULL, NULL);
    foorpc_writer *w = NULL;
    foorpc_writer_new(&w);
    c = foorpc_writer_raw(w, deep, depth + 1);
    foorpc_writer_free(w);
    free(deep);
    check("deep_nesting_1M_no_crash", a != FOORPC_RESULT_PANIC && b != FOORPC_RESULT_PANIC && c != FOORPC_RESULT_PANIC,
          "skip rc=%u raw rc=%u writer_raw rc=%u", a, b, c);
}

int main(void) {
    pthread_t wd;
    pthread_create(&wd, NULL, watchdog, NULL);
    pthread_detach(wd);
    int fds_start = count_fds();
    double t0 = now_s();
    char addr[128];
    foorpc_server *s = start_server(addr, sizeof addr);
    if (!s) {
        fail("server_start", last_error());
        return 1;
    }
    static struct stopper stop_bg;
    pthread_create(&stop_bg.th, NULL, stopper_main, &stop_bg);
    static struct bg_free bg;
    pthread_create(&bg.th, NULL, bg_free_main, &bg);

    test_close_while_sync_blocked(addr);
    test_free_with_async_in_flight(addr);
    test_close_from_callback(addr);
    test_sync_call_in_callback(addr);
    test_timeout_races(addr);
    test_peer_outlives_server();
    test_shared_client(addr);
    test_params(addr);
    test_null_args(addr);
    test_reader_misuse();
    test_unanswered(addr);
    test_server_free_mid_call();
    test_stop_from_call_callback();
    test_server_free_in_forked_child();
    test_client_free_in_forked_child();
    test_server_free_waits_for_notification_handlers();
    test_client_free_waits_for_running_callback(addr);
    test_call_async_to_a_peer_that_does_not_read();
    test_notify_to_a_peer_that_does_not_read();

    foorpc_server_free(s);
    end_answer_after_server_free(&bg);
    end_stop_from_pool_handler(&stop_bg);
    int fds_end = count_fds(); /* the process-wide client I/O thread keeps epoll + eventfd */
    check("no_fd_leak", fds_end <= fds_start + 2, "%d fds open at start, %d at the end", fds_start, fds_end);
    printf("%d passed, %d failed (%.1f s)\n", passed, failed, now_s() - t0);
    return failed == 0 ? 0 : 1;
}
