/*
 * calc_client: calls calc_server (the C or the Rust one) through libfoorpc.
 *
 * Usage: calc_client ADDRESS [N]   (N: repeat the add call N times, default 1)
 * Exits with status 0 when every answer is the expected one.
 */
#define _POSIX_C_SOURCE 200809L
#include <foorpc.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

static void check(int ok, const char *what) {
    if (!ok) {
        char msg[256];
        foorpc_last_error_message(msg, sizeof msg, NULL);
        fprintf(stderr, "calc_client: FAILED %s (last error: %s)\n", what, msg);
        failures++;
    }
}

/* Reads one integer out of a result buffer. */
static int64_t buf_int(const foorpc_buf *buf) {
    foorpc_reader *r = NULL;
    int64_t v = 0;
    foorpc_reader_new(foorpc_buf_data(buf), foorpc_buf_len(buf), &r);
    check(foorpc_reader_read_int(r, &v) == FOORPC_RESULT_OK, "reading an integer result");
    foorpc_reader_free(r);
    return v;
}

/* The outcome of the asynchronous call, handed from foorpc's I/O thread to main. */
struct async_result {
    pthread_mutex_t lock;
    pthread_cond_t done_cv;
    int done;
    foorpc_result rc;
    int64_t value;
};

static void on_add_done(void *userdata, foorpc_result rc, const uint8_t *data, size_t len) {
    struct async_result *ar = userdata;
    foorpc_reader *r = NULL;
    pthread_mutex_lock(&ar->lock);
    ar->rc = rc;
    if (rc == FOORPC_RESULT_OK && foorpc_reader_new(data, len, &r) == FOORPC_RESULT_OK)
        foorpc_reader_read_int(r, &ar->value);
    foorpc_reader_free(r);
    ar->done = 1;
    pthread_cond_signal(&ar->done_cv);
    pthread_mutex_unlock(&ar->lock);
}

int main(int argc, char **argv) {
    const char *address = argc > 1 ? argv[1] : "tcp://127.0.0.1:5555";
    long repeat = argc > 2 ? atol(argv[2]) : 1;
    foorpc_client *client = NULL;
    foorpc_writer *w = NULL;
    foorpc_buf *result = NULL;
    foorpc_reader *r = NULL;
    foorpc_result rc;

    rc = foorpc_client_connect(address, 5000, &client);
    if (rc != FOORPC_RESULT_OK) {
        char msg[256];
        foorpc_last_error_message(msg, sizeof msg, NULL);
        fprintf(stderr, "calc_client: cannot connect to %s: %s\n", address, msg);
        return 1;
    }
    foorpc_writer_new(&w);

    /* add(1, 2): params are one MessagePack array. */
    for (long i = 0; i < repeat; i++) {
        foorpc_writer_clear(w);
        foorpc_writer_array(w, 2);
        foorpc_writer_int(w, i);
        foorpc_writer_int(w, 2);
        rc = foorpc_client_call(client, "add", foorpc_writer_data(w), foorpc_writer_len(w), 5000,
                                &result);
        check(rc == FOORPC_RESULT_OK && buf_int(result) == i + 2, "add(i, 2)");
        foorpc_buf_free(result);
        result = NULL;
    }
    printf("add(%ld, 2) = %ld\n", repeat - 1, repeat + 1);

    /* echo("hello"): the result comes back as a str. */
    foorpc_writer_clear(w);
    foorpc_writer_array(w, 1);
    foorpc_writer_cstr(w, "hello");
    rc = foorpc_client_call(client, "echo", foorpc_writer_data(w), foorpc_writer_len(w), 5000,
                            &result);
    check(rc == FOORPC_RESULT_OK, "echo");
    if (rc == FOORPC_RESULT_OK) {
        const char *s = NULL;
        size_t n = 0;
        foorpc_reader_new(foorpc_buf_data(result), foorpc_buf_len(result), &r);
        check(foorpc_reader_read_str(r, &s, &n) == FOORPC_RESULT_OK && n == 5 &&
                  memcmp(s, "hello", 5) == 0,
              "echo returns its argument");
        printf("echo(\"hello\") = \"%.*s\"\n", (int)n, s ? s : "");
        foorpc_reader_free(r);
    }
    foorpc_buf_free(result);
    result = NULL;

    /* fail("boom"): a remote error; the buffer holds the error object [code, message]. */
    foorpc_writer_clear(w);
    foorpc_writer_array(w, 1);
    foorpc_writer_cstr(w, "boom");
    rc = foorpc_client_call(client, "fail", foorpc_writer_data(w), foorpc_writer_len(w), 5000,
                            &result);
    check(rc == FOORPC_RESULT_REMOTE_ERROR, "fail gives a remote error");
    if (rc == FOORPC_RESULT_REMOTE_ERROR) {
        uint32_t n = 0;
        int64_t code = -1;
        const char *msg = NULL;
        size_t msg_len = 0;
        foorpc_reader_new(foorpc_buf_data(result), foorpc_buf_len(result), &r);
        check(foorpc_reader_read_array(r, &n) == FOORPC_RESULT_OK && n == 2 &&
                  foorpc_reader_read_int(r, &code) == FOORPC_RESULT_OK &&
                  foorpc_reader_read_str(r, &msg, &msg_len) == FOORPC_RESULT_OK,
              "the error object is [code, message]");
        printf("fail(\"boom\") -> remote error [%" PRId64 ", \"%.*s\"]\n", code, (int)msg_len,
               msg ? msg : "");
        foorpc_reader_free(r);
    }
    foorpc_buf_free(result);
    result = NULL;

    /* add(40, 2) asynchronously: the callback runs on foorpc's I/O thread. */
    struct async_result ar = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};
    foorpc_writer_clear(w);
    foorpc_writer_array(w, 2);
    foorpc_writer_int(w, 40);
    foorpc_writer_int(w, 2);
    rc = foorpc_client_call_async(client, "add", foorpc_writer_data(w), foorpc_writer_len(w),
                                  5000, on_add_done, &ar);
    check(rc == FOORPC_RESULT_OK, "call_async");
    if (rc == FOORPC_RESULT_OK) {
        pthread_mutex_lock(&ar.lock);
        while (!ar.done) pthread_cond_wait(&ar.done_cv, &ar.lock);
        pthread_mutex_unlock(&ar.lock);
        check(ar.rc == FOORPC_RESULT_OK && ar.value == 42, "add(40, 2) asynchronously");
        printf("add(40, 2) asynchronously = %" PRId64 "\n", ar.value);
    }

    /* sleep_ms(2000) with a 100 ms timeout: the call gives up. */
    foorpc_writer_clear(w);
    foorpc_writer_array(w, 1);
    foorpc_writer_uint(w, 2000);
    rc = foorpc_client_call(client, "sleep_ms", foorpc_writer_data(w), foorpc_writer_len(w), 100,
                            NULL);
    check(rc == FOORPC_RESULT_TIMEOUT, "sleep_ms(2000) times out after 100 ms");
    printf("sleep_ms(2000) with a 100 ms timeout -> %s\n", foorpc_result_message(rc));

    /* A notification: no reply. */
    foorpc_writer_clear(w);
    foorpc_writer_array(w, 1);
    foorpc_writer_cstr(w, "calc_client done");
    check(foorpc_client_notify(client, "log", foorpc_writer_data(w), foorpc_writer_len(w)) ==
              FOORPC_RESULT_OK,
          "notify");

    foorpc_writer_free(w);
    foorpc_client_free(client);
    printf("calc_client: %s\n", failures ? "FAILED" : "all calls answered as expected");
    return failures ? 1 : 0;
}
