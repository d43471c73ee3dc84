/* foorpc's C client under test (libfoorpc, include/foorpc.h), against the
 * Rust bench server.
 *
 * Usage: foorpc_client tcp://127.0.0.1:PORT seq N | slices N | pipe N WINDOW | echo N BYTES
 * - seq: N sequential foorpc_client_call("add", [1, 2]), result decoded with
 *   foorpc_reader; prints seq_p50_ns / seq_p99_ns;
 * - slices: the same calls, driven slice by slice from stdin (next_slice in
 *   common.h);
 * - pipe: N calls with WINDOW in flight on one connection: WINDOW
 *   foorpc_client_call_async calls, and each completion callback sends the
 *   next one (a sliding window); prints pipe_calls_per_s;
 * - echo: N sequential echo(bin of BYTES); prints echo_mib_per_s.
 */
#include "common.h"

#include <pthread.h>
#include <stdatomic.h>

#include "foorpc.h"

static void check(foorpc_result r, const char *what) {
    if (r != 0) {
        char msg[256] = "";
        size_t n = 0;
        foorpc_last_error_message(msg, sizeof msg, &n);
        fprintf(stderr, "%s: %s (%s)\n", what, foorpc_result_message(r), msg);
        exit(1);
    }
}

static int64_t result_int(const foorpc_buf *buf) {
    foorpc_reader *rd;
    int64_t v = 0;
    check(foorpc_reader_new(foorpc_buf_data(buf), foorpc_buf_len(buf), &rd), "reader");
    check(foorpc_reader_read_int(rd, &v), "read_int");
    foorpc_reader_free(rd);
    return v;
}

/* ---- pipelined calls: the callbacks keep the window full ---------------- */
struct pipe_state {
    const foorpc_client *client;
    const uint8_t *params;
    size_t params_len;
    atomic_long to_send; /* calls not yet sent */
    atomic_long done;
    long total;
    pthread_mutex_t lock;
    pthread_cond_t cv;
    atomic_int failed;
};

static void send_next(struct pipe_state *st);

static void on_reply(void *userdata, foorpc_result result, const uint8_t *data, size_t len) {
    struct pipe_state *st = userdata;
    (void)data;
    (void)len;
    if (result != 0) atomic_store(&st->failed, (int)result);
    send_next(st);
    if (atomic_fetch_add(&st->done, 1) + 1 == st->total) {
        pthread_mutex_lock(&st->lock);
        pthread_cond_signal(&st->cv);
        pthread_mutex_unlock(&st->lock);
    }
}

static void send_next(struct pipe_state *st) {
    if (atomic_fetch_sub(&st->to_send, 1) <= 0) return;
    foorpc_result r = foorpc_client_call_async(st->client, "add", st->params, st->params_len,
                                               0, on_reply, st);
    if (r != 0) check(r, "call_async");
}

static void pipeline(struct pipe_state *st, long total, long window) {
    atomic_store(&st->to_send, total);
    atomic_store(&st->done, 0);
    st->total = total;
    for (long i = 0; i < window && i < total; i++) send_next(st);
    pthread_mutex_lock(&st->lock);
    while (atomic_load(&st->done) < total) pthread_cond_wait(&st->cv, &st->lock);
    pthread_mutex_unlock(&st->lock);
    if (atomic_load(&st->failed)) check((foorpc_result)atomic_load(&st->failed), "async add");
}

/* A sequential add(1, 2): its params are encoded once, up front. */
struct add_call {
    foorpc_client *client;
    const uint8_t *params;
    size_t params_len;
};

static void add_once(void *ctx) {
    struct add_call *a = ctx;
    foorpc_buf *out;
    check(foorpc_client_call(a->client, "add", a->params, a->params_len, 0, &out), "add");
    int64_t v = result_int(out);
    foorpc_buf_free(out);
    if (v != 3) die("add result");
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: foorpc_client ADDRESS seq N | slices N | pipe N WINDOW | echo N BYTES\n");
        return 2;
    }
    const char *what = argv[2];
    long n = atol(argv[3]);
    long extra = argc > 4 ? atol(argv[4]) : 0;
    foorpc_client *client;
    check(foorpc_client_connect(argv[1], 0, &client), "connect");
    foorpc_writer *w;
    check(foorpc_writer_new(&w), "writer");

    if (strcmp(what, "seq") == 0 || strcmp(what, "slices") == 0) {
        foorpc_writer_array(w, 2);
        foorpc_writer_int(w, 1);
        foorpc_writer_int(w, 2);
        struct add_call add = {client, foorpc_writer_data(w), foorpc_writer_len(w)};
        run_seq(strcmp(what, "slices") == 0, n, add_once, &add);
    } else if (strcmp(what, "pipe") == 0) {
        long window = extra > 0 ? extra : 64;
        foorpc_writer_array(w, 2);
        foorpc_writer_int(w, 1);
        foorpc_writer_int(w, 2);
        struct pipe_state st = {.client = client,
                                .params = foorpc_writer_data(w),
                                .params_len = foorpc_writer_len(w)};
        pthread_mutex_init(&st.lock, NULL);
        pthread_cond_init(&st.cv, NULL);
        pipeline(&st, n / 10 > window * 4 ? n / 10 : window * 4, window);
        uint64_t t = now_ns();
        pipeline(&st, n, window);
        double secs = (double)(now_ns() - t) / 1e9;
        printf("pipe_calls_per_s %.0f\n", (double)n / secs);
    } else if (strcmp(what, "echo") == 0) {
        size_t size = extra > 0 ? (size_t)extra : 1;
        uint8_t *payload = malloc(size);
        memset(payload, 0xab, size);
        foorpc_writer_array(w, 1);
        foorpc_writer_bin(w, payload, size);
        const uint8_t *p = foorpc_writer_data(w);
        size_t plen = foorpc_writer_len(w);
        long warm = n / 10 > 3 ? n / 10 : 3;
        uint64_t t = 0;
        for (long i = -warm; i < n; i++) {
            if (i == 0) t = now_ns();
            foorpc_buf *out;
            check(foorpc_client_call(client, "echo", p, plen, 0, &out), "echo");
            foorpc_reader *rd;
            const uint8_t *data;
            size_t len;
            check(foorpc_reader_new(foorpc_buf_data(out), foorpc_buf_len(out), &rd), "reader");
            check(foorpc_reader_read_bin(rd, &data, &len), "read_bin");
            if (len != size) die("echo length");
            foorpc_reader_free(rd);
            foorpc_buf_free(out);
        }
        double secs = (double)(now_ns() - t) / 1e9;
        printf("echo_mib_per_s %.1f\n", (double)n * (double)size / secs / (1024.0 * 1024.0));
        free(payload);
    } else {
        fprintf(stderr, "unknown benchmark %s\n", what);
        return 2;
    }
    foorpc_writer_free(w);
    foorpc_client_free(client);
    return 0;
}
