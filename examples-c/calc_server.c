/*
 * calc_server: a foorpc server written in C.
 *
 *   add(a, b)    -> a + b
 *   echo(x)      -> x, unchanged (its MessagePack bytes are passed through)
 *   fail(msg)    -> always the error [0, msg]
 *   sleep_ms(n)  -> n, answered after n ms from another thread
 *
 * Usage: calc_server ADDRESS     (tcp://127.0.0.1:5555, tcp://127.0.0.1:0, unix:///tmp/calc.sock)
 * Prints one line once it listens, then serves until SIGINT or SIGTERM.
 */
#define _POSIX_C_SOURCE 200809L
#include <foorpc.h>

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Every handler below gets the params array's MessagePack bytes. */
#define HANDLER_ARGS                                                                 \
    void *userdata, const char *method, size_t method_len, const uint8_t *params,  \
        size_t params_len, foorpc_responder *resp

/* Opens a reader on the params array and checks its length. */
static foorpc_reader *open_params(const uint8_t *params, size_t len, uint32_t want) {
    foorpc_reader *r = NULL;
    uint32_t n = 0;
    if (foorpc_reader_new(params, len, &r) != FOORPC_RESULT_OK) return NULL;
    if (foorpc_reader_read_array(r, &n) != FOORPC_RESULT_OK || n != want) {
        foorpc_reader_free(r);
        return NULL;
    }
    return r;
}

static void invalid(foorpc_responder *resp, const char *msg) {
    foorpc_responder_error_message(resp, 1, msg, strlen(msg));
}

static void answer_int(foorpc_responder *resp, int64_t value) {
    foorpc_writer *w = NULL;
    foorpc_writer_new(&w);
    foorpc_writer_int(w, value);
    foorpc_responder_ok(resp, foorpc_writer_data(w), foorpc_writer_len(w));
    foorpc_writer_free(w);
}

static void add(HANDLER_ARGS) {
    (void)userdata, (void)method, (void)method_len;
    foorpc_reader *r = open_params(params, params_len, 2);
    int64_t a, b, sum;
    if (r && foorpc_reader_read_int(r, &a) == FOORPC_RESULT_OK &&
        foorpc_reader_read_int(r, &b) == FOORPC_RESULT_OK && !__builtin_add_overflow(a, b, &sum))
        answer_int(resp, sum);
    else
        invalid(resp, "add takes two integers whose sum fits int64");
    foorpc_reader_free(r);
}

static void echo(HANDLER_ARGS) {
    (void)userdata, (void)method, (void)method_len;
    foorpc_reader *r = open_params(params, params_len, 1);
    const uint8_t *x;
    size_t x_len;
    if (r && foorpc_reader_read_raw(r, &x, &x_len) == FOORPC_RESULT_OK)
        foorpc_responder_ok(resp, x, x_len); /* the exact bytes we got */
    else
        invalid(resp, "echo takes one argument");
    foorpc_reader_free(r);
}

static void fail(HANDLER_ARGS) {
    (void)userdata, (void)method, (void)method_len;
    foorpc_reader *r = open_params(params, params_len, 1);
    const char *msg = "failed";
    size_t msg_len = 6;
    if (r) foorpc_reader_read_str(r, &msg, &msg_len); /* keeps "failed" if not a str */
    foorpc_responder_error_message(resp, 0, msg, msg_len);
    foorpc_reader_free(r);
}

/* sleep_ms: the I/O thread hands the responder to a new thread, which answers later. */
struct sleeper {
    foorpc_responder *resp;
    uint64_t ms;
};

static void *sleep_then_answer(void *arg) {
    struct sleeper *s = arg;
    struct timespec t = {(time_t)(s->ms / 1000), (long)(s->ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0) {
    }
    answer_int(s->resp, (int64_t)s->ms);
    free(s);
    return NULL;
}

static void sleep_ms(HANDLER_ARGS) {
    (void)userdata, (void)method, (void)method_len;
    foorpc_reader *r = open_params(params, params_len, 1);
    uint64_t ms;
    struct sleeper *s = NULL;
    pthread_t thread;
    if (!r || foorpc_reader_read_uint(r, &ms) != FOORPC_RESULT_OK || ms > 3600000) {
        invalid(resp, "sleep_ms takes a number of milliseconds (at most one hour)");
    } else if (!(s = malloc(sizeof *s))) {
        foorpc_responder_free(resp); /* answers with an error */
    } else {
        s->resp = resp;
        s->ms = ms;
        if (pthread_create(&thread, NULL, sleep_then_answer, s) == 0) {
            pthread_detach(thread);
        } else {
            foorpc_responder_free(resp);
            free(s);
        }
    }
    foorpc_reader_free(r);
}

/* Waits for SIGINT or SIGTERM (blocked in every thread), then stops the server. */
static sigset_t stop_signals;

static void *signal_thread(void *server) {
    int sig;
    sigwait(&stop_signals, &sig);
    foorpc_server_stop(server);
    return NULL;
}

static int die(const char *what, foorpc_result rc) {
    char msg[256];
    foorpc_last_error_message(msg, sizeof msg, NULL);
    fprintf(stderr, "calc_server: %s: %s (%s)\n", what, foorpc_result_message(rc), msg);
    return 1;
}

int main(int argc, char **argv) {
    const char *address = argc > 1 ? argv[1] : "tcp://127.0.0.1:5555";
    foorpc_server *server = NULL;
    foorpc_result rc;
    pthread_t sig_thread;
    char where[512];

    /* Block the signals before any thread starts: all threads inherit the mask. */
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);

    if ((rc = foorpc_server_new(&server)) != FOORPC_RESULT_OK) return die("new", rc);
    foorpc_server_register(server, "add", add, NULL, FOORPC_HANDLER_INLINE);
    foorpc_server_register(server, "echo", echo, NULL, FOORPC_HANDLER_INLINE);
    foorpc_server_register(server, "fail", fail, NULL, FOORPC_HANDLER_INLINE);
    foorpc_server_register(server, "sleep_ms", sleep_ms, NULL, FOORPC_HANDLER_INLINE);
    if ((rc = foorpc_server_bind(server, address)) != FOORPC_RESULT_OK) {
        foorpc_server_free(server);
        return die(address, rc);
    }
    foorpc_server_local_address(server, where, sizeof where, NULL);
    pthread_create(&sig_thread, NULL, signal_thread, server);

    printf("calc_server listening on %s\n", where);
    fflush(stdout);
    rc = foorpc_server_run(server); /* returns once signal_thread has stopped it */

    if (rc != FOORPC_RESULT_OK) pthread_kill(sig_thread, SIGTERM); /* ends its sigwait */
    pthread_join(sig_thread, NULL);
    foorpc_server_free(server);
    return rc == FOORPC_RESULT_OK ? 0 : die("run", rc);
}
