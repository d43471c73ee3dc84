/*
 * conformance_server: foorpc's C conformance server (tests/interop/README.md
 * has the contract), written only against include/foorpc.h.
 *
 *   conformance_server (--port N | --unix PATH)
 *
 * Prints one line once it listens ("c conformance server listening on ADDR")
 * and serves until SIGTERM or SIGINT, then exits 0.
 *
 * The connection a request or notification came on is a foorpc_peer:
 * notifications are recorded per connection (keyed by foorpc_peer_id) by a
 * notification fallback, call_back() calls the client through
 * foorpc_peer_call from a pool handler, and disconnect() closes the
 * connection with foorpc_peer_close without answering.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#define _POSIX_C_SOURCE 200809L
#include <foorpc.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HANDLER_ARGS                                                                 \
    void *userdata, const char *method, size_t method_len, const uint8_t *params,  \
        size_t params_len, foorpc_responder *resp
#define UNUSED_HANDLER_ARGS (void)userdata, (void)method, (void)method_len

/* ---------------------------------------------------------------------------------------- */
/* Helpers */

/* Opens a reader on the params array; *count receives its length. NULL when not an array. */
static foorpc_reader *open_params(const uint8_t *params, size_t len, uint32_t *count) {
    foorpc_reader *r = NULL;
    if (foorpc_reader_new(params, len, &r) != FOORPC_RESULT_OK) return NULL;
    if (foorpc_reader_read_array(r, count) != FOORPC_RESULT_OK) {
        foorpc_reader_free(r);
        return NULL;
    }
    return r;
}

static void answer_error(foorpc_responder *resp, int64_t code, const char *msg) {
    foorpc_responder_error_message(resp, code, msg, strlen(msg));
}

static void answer_int(foorpc_responder *resp, int64_t value) {
    foorpc_writer *w = NULL;
    if (foorpc_writer_new(&w) != FOORPC_RESULT_OK) {
        foorpc_responder_free(resp);
        return;
    }
    foorpc_writer_int(w, value);
    foorpc_responder_ok(resp, foorpc_writer_data(w), foorpc_writer_len(w));
    foorpc_writer_free(w);
}

/* ---------------------------------------------------------------------------------------- */
/* add, echo, fail */

static void h_add(HANDLER_ARGS) {
    UNUSED_HANDLER_ARGS;
    uint32_t n = 0;
    int64_t a, b, sum;
    foorpc_reader *r = open_params(params, params_len, &n);
    if (r && n == 2 && foorpc_reader_read_int(r, &a) == FOORPC_RESULT_OK &&
        foorpc_reader_read_int(r, &b) == FOORPC_RESULT_OK && !__builtin_add_overflow(a, b, &sum))
        answer_int(resp, sum);
    else
        answer_error(resp, 1, "add takes two integers whose sum fits int64");
    foorpc_reader_free(r);
}

static void h_echo(HANDLER_ARGS) {
    UNUSED_HANDLER_ARGS;
    uint32_t n = 0;
    const uint8_t *x;
    size_t x_len;
    foorpc_reader *r = open_params(params, params_len, &n);
    if (r && n == 1 && foorpc_reader_read_raw(r, &x, &x_len) == FOORPC_RESULT_OK)
        foorpc_responder_ok(resp, x, x_len); /* the exact bytes received: type kept */
    else
        answer_error(resp, 1, "echo takes one argument");
    foorpc_reader_free(r);
}

static void h_fail(HANDLER_ARGS) {
    UNUSED_HANDLER_ARGS;
    uint32_t n = 0;
    const char *msg = "fail";
    size_t msg_len = 4;
    foorpc_reader *r = open_params(params, params_len, &n);
    if (r && n >= 1 && foorpc_reader_read_str(r, &msg, &msg_len) != FOORPC_RESULT_OK) {
        msg = "fail";
        msg_len = 4;
    }
    foorpc_responder_error_message(resp, 0, msg, msg_len);
    foorpc_reader_free(r);
}

/* ---------------------------------------------------------------------------------------- */
/* sleep_ms: the inline handler hands the responder to a new thread. The number of sleepers
 * still running is counted so that main can let them finish before it exits. */

static pthread_mutex_t sleepers_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t sleepers_done = PTHREAD_COND_INITIALIZER;
static int sleepers = 0;

struct sleeper {
    foorpc_responder *resp;
    uint64_t ms;
};

static void *sleep_then_answer(void *arg) {
    struct sleeper *s = arg;
    struct timespec t = {(time_t)(s->ms / 1000), (long)(s->ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {
    }
    answer_int(s->resp, (int64_t)s->ms);
    free(s);
    pthread_mutex_lock(&sleepers_lock);
    sleepers--;
    pthread_cond_broadcast(&sleepers_done);
    pthread_mutex_unlock(&sleepers_lock);
    return NULL;
}

static void h_sleep_ms(HANDLER_ARGS) {
    UNUSED_HANDLER_ARGS;
    uint32_t n = 0;
    uint64_t ms;
    struct sleeper *s = NULL;
    pthread_t thread;
    foorpc_reader *r = open_params(params, params_len, &n);
    if (!r || n != 1 || foorpc_reader_read_uint(r, &ms) != FOORPC_RESULT_OK || ms > 3600000) {
        answer_error(resp, 1, "sleep_ms takes a number of milliseconds (at most one hour)");
    } else if (!(s = malloc(sizeof *s))) {
        foorpc_responder_free(resp); /* answers with an error */
    } else {
        s->resp = resp;
        s->ms = ms;
        pthread_mutex_lock(&sleepers_lock);
        sleepers++;
        pthread_mutex_unlock(&sleepers_lock);
        if (pthread_create(&thread, NULL, sleep_then_answer, s) == 0) {
            pthread_detach(thread);
        } else {
            pthread_mutex_lock(&sleepers_lock);
            sleepers--;
            pthread_mutex_unlock(&sleepers_lock);
            foorpc_responder_free(resp);
            free(s);
        }
    }
    foorpc_reader_free(r);
}

/* Waits up to `ms` for every sleeper thread to have answered. */
static void wait_for_sleepers(long ms) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += ms / 1000;
    deadline.tv_nsec += (ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&sleepers_lock);
    while (sleepers > 0)
        if (pthread_cond_timedwait(&sleepers_done, &sleepers_lock, &deadline) == ETIMEDOUT) break;
    pthread_mutex_unlock(&sleepers_lock);
}

/* ---------------------------------------------------------------------------------------- */
/* Notifications, per connection: each connection that sent any has a list of entries, each
 * the encoding of [method, params]. Both the notification fallback and get_notifications run
 * inline, on the connection's I/O thread, so one connection's notifications and requests are
 * seen in arrival order. The lists are kept until the server exits (connection ids are never
 * reused). */

struct entry {
    uint8_t *data;
    size_t len;
};

struct conn_notes {
    uint64_t id;
    struct entry *items;
    size_t len, cap;
};

static pthread_mutex_t notes_lock = PTHREAD_MUTEX_INITIALIZER;
static struct conn_notes *conns = NULL;
static size_t conns_len = 0, conns_cap = 0;

/* The list of connection `id`, created when `create`; NULL when absent or out of memory. */
static struct conn_notes *notes_of_locked(uint64_t id, int create) {
    for (size_t i = 0; i < conns_len; i++)
        if (conns[i].id == id) return &conns[i];
    if (!create) return NULL;
    if (conns_len == conns_cap) {
        size_t cap = conns_cap ? 2 * conns_cap : 16;
        struct conn_notes *grown = realloc(conns, cap * sizeof *grown);
        if (!grown) return NULL;
        conns = grown;
        conns_cap = cap;
    }
    conns[conns_len] = (struct conn_notes){id, NULL, 0, 0};
    return &conns[conns_len++];
}

static void free_notes(void) {
    pthread_mutex_lock(&notes_lock);
    for (size_t i = 0; i < conns_len; i++) {
        for (size_t j = 0; j < conns[i].len; j++) free(conns[i].items[j].data);
        free(conns[i].items);
    }
    free(conns);
    conns = NULL;
    conns_len = conns_cap = 0;
    pthread_mutex_unlock(&notes_lock);
}

/* The notification fallback: records every notification, whatever its method. */
static void on_notification(void *userdata, const char *method, size_t method_len,
                            const uint8_t *params, size_t params_len, const foorpc_peer *peer) {
    (void)userdata;
    foorpc_writer *w = NULL;
    struct conn_notes *list;
    uint8_t *copy;
    if (foorpc_writer_new(&w) != FOORPC_RESULT_OK) return;
    foorpc_writer_array(w, 2);
    foorpc_writer_str(w, method, method_len);
    if (foorpc_writer_raw(w, params, params_len) != FOORPC_RESULT_OK) foorpc_writer_array(w, 0);
    copy = malloc(foorpc_writer_len(w));
    if (copy) {
        memcpy(copy, foorpc_writer_data(w), foorpc_writer_len(w));
        pthread_mutex_lock(&notes_lock);
        list = notes_of_locked(foorpc_peer_id(peer), 1);
        if (list && list->len == list->cap) {
            size_t cap = list->cap ? 2 * list->cap : 16;
            struct entry *grown = realloc(list->items, cap * sizeof *grown);
            if (grown) {
                list->items = grown;
                list->cap = cap;
            }
        }
        if (list && list->len < list->cap) {
            list->items[list->len].data = copy;
            list->items[list->len].len = foorpc_writer_len(w);
            list->len++;
            copy = NULL;
        }
        pthread_mutex_unlock(&notes_lock);
        free(copy); /* only when the list could not grow */
    }
    foorpc_writer_free(w);
}

/* Answers the notifications received on the caller's connection, in arrival order. */
static void h_get_notifications(HANDLER_ARGS) {
    UNUSED_HANDLER_ARGS, (void)params, (void)params_len;
    foorpc_writer *w = NULL;
    foorpc_peer *peer = NULL;
    struct conn_notes *list;
    if (foorpc_writer_new(&w) != FOORPC_RESULT_OK ||
        foorpc_responder_peer(resp, &peer) != FOORPC_RESULT_OK) {
        foorpc_writer_free(w);
        foorpc_responder_free(resp);
        return;
    }
    pthread_mutex_lock(&notes_lock);
    list = notes_of_locked(foorpc_peer_id(peer), 0);
    foorpc_writer_array(w, list ? (uint32_t)list->len : 0);
    for (size_t i = 0; list && i < list->len; i++)
        foorpc_writer_raw(w, list->items[i].data, list->items[i].len);
    pthread_mutex_unlock(&notes_lock);
    foorpc_responder_ok(resp, foorpc_writer_data(w), foorpc_writer_len(w));
    foorpc_writer_free(w);
    foorpc_peer_free(peer);
}

/* ---------------------------------------------------------------------------------------- */
/* call_back, disconnect: through the connection's foorpc_peer */

/* call_back(method, params): calls method(params...) on the client over the same connection
 * and answers its result; an error answer is relayed unchanged as the error. Registered on
 * the pool: foorpc_peer_call blocks until the client answers. */
static void h_call_back(HANDLER_ARGS) {
    UNUSED_HANDLER_ARGS;
    uint32_t n = 0;
    const char *name = NULL;
    size_t name_len = 0;
    const uint8_t *inner = NULL;
    size_t inner_len = 0;
    char *target = NULL;
    foorpc_peer *peer = NULL;
    foorpc_buf *out = NULL;
    foorpc_result rc;
    foorpc_reader *r = open_params(params, params_len, &n);
    if (!r || n != 2 || foorpc_reader_read_str(r, &name, &name_len) != FOORPC_RESULT_OK ||
        foorpc_reader_peek_type(r) != FOORPC_TYPE_ARRAY ||
        foorpc_reader_read_raw(r, &inner, &inner_len) != FOORPC_RESULT_OK ||
        memchr(name, '\0', name_len) != NULL) {
        answer_error(resp, 1, "call_back(method, params)");
    } else if (!(target = malloc(name_len + 1)) ||
               foorpc_responder_peer(resp, &peer) != FOORPC_RESULT_OK) {
        foorpc_responder_free(resp); /* answers with an error */
    } else {
        memcpy(target, name, name_len);
        target[name_len] = '\0';
        rc = foorpc_peer_call(peer, target, inner, inner_len, 0, &out);
        if (rc == FOORPC_RESULT_OK) {
            foorpc_responder_ok(resp, foorpc_buf_data(out), foorpc_buf_len(out));
        } else if (rc == FOORPC_RESULT_REMOTE_ERROR) {
            foorpc_responder_error(resp, foorpc_buf_data(out), foorpc_buf_len(out));
        } else {
            char msg[600], detail[512];
            foorpc_last_error_message(detail, sizeof detail, NULL);
            snprintf(msg, sizeof msg, "call_back: %s (%s)", foorpc_result_message(rc), detail);
            answer_error(resp, 0, msg);
        }
    }
    foorpc_buf_free(out);
    foorpc_peer_free(peer);
    free(target);
    foorpc_reader_free(r);
}

/* disconnect(): closes the caller's connection without answering. */
static void h_disconnect(HANDLER_ARGS) {
    UNUSED_HANDLER_ARGS, (void)params, (void)params_len;
    foorpc_peer *peer = NULL;
    if (foorpc_responder_peer(resp, &peer) == FOORPC_RESULT_OK) foorpc_peer_close(peer);
    foorpc_peer_free(peer);
    foorpc_responder_free(resp); /* closed first: its error reply goes nowhere */
}

static void h_unknown(HANDLER_ARGS) {
    (void)userdata, (void)params, (void)params_len;
    char msg[300];
    snprintf(msg, sizeof msg, "unknown method: %.*s", (int)(method_len > 256 ? 256 : method_len),
             method);
    answer_error(resp, 1, msg);
}

/* ---------------------------------------------------------------------------------------- */
/* main */

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
    fprintf(stderr, "conformance_server: %s: %s (%s)\n", what, foorpc_result_message(rc), msg);
    return 1;
}

static int usage(void) {
    fprintf(stderr, "usage: conformance_server (--port N | --unix PATH)\n");
    return 2;
}

int main(int argc, char **argv) {
    char address[4200];
    char where[4200];
    foorpc_server *server = NULL;
    foorpc_result rc;
    pthread_t sig_thread;
    int have_address = 0;

    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc) return usage();
        if (strcmp(argv[i], "--port") == 0)
            snprintf(address, sizeof address, "tcp://127.0.0.1:%s", argv[i + 1]);
        else if (strcmp(argv[i], "--unix") == 0)
            snprintf(address, sizeof address, "unix://%s", argv[i + 1]);
        else
            return usage();
        have_address = 1;
    }
    if (!have_address) return usage();

    /* Block the signals before any thread starts: every thread inherits the mask. */
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);

    if ((rc = foorpc_server_new(&server)) != FOORPC_RESULT_OK) return die("new", rc);
    struct {
        const char *name;
        foorpc_handler_callback cb;
        uint32_t flags;
    } handlers[] = {
        {"add", h_add, FOORPC_HANDLER_INLINE},
        {"echo", h_echo, FOORPC_HANDLER_INLINE},
        {"fail", h_fail, FOORPC_HANDLER_INLINE},
        {"sleep_ms", h_sleep_ms, FOORPC_HANDLER_INLINE},
        {"get_notifications", h_get_notifications, FOORPC_HANDLER_INLINE},
        {"call_back", h_call_back, FOORPC_HANDLER_POOL}, /* blocks while the client answers */
        {"disconnect", h_disconnect, FOORPC_HANDLER_INLINE},
    };
    for (size_t i = 0; i < sizeof handlers / sizeof handlers[0]; i++)
        if ((rc = foorpc_server_register(server, handlers[i].name, handlers[i].cb, NULL,
                                         handlers[i].flags)) != FOORPC_RESULT_OK) {
            foorpc_server_free(server);
            return die(handlers[i].name, rc);
        }
    if ((rc = foorpc_server_register_fallback(server, h_unknown, NULL, FOORPC_HANDLER_INLINE)) !=
        FOORPC_RESULT_OK) {
        foorpc_server_free(server);
        return die("fallback", rc);
    }
    if ((rc = foorpc_server_register_notification_fallback(server, on_notification, NULL,
                                                           FOORPC_HANDLER_INLINE)) !=
        FOORPC_RESULT_OK) {
        foorpc_server_free(server);
        return die("notification fallback", rc);
    }
    if ((rc = foorpc_server_bind(server, address)) != FOORPC_RESULT_OK) {
        foorpc_server_free(server);
        return die(address, rc);
    }
    if ((rc = foorpc_server_local_address(server, where, sizeof where, NULL)) != FOORPC_RESULT_OK) {
        foorpc_server_free(server);
        return die("local address", rc);
    }
    if ((rc = foorpc_server_start(server)) != FOORPC_RESULT_OK) {
        foorpc_server_free(server);
        return die("start", rc);
    }
    if (pthread_create(&sig_thread, NULL, signal_thread, server) != 0) {
        foorpc_server_free(server);
        fprintf(stderr, "conformance_server: cannot start the signal thread\n");
        return 1;
    }

    printf("c conformance server listening on %s\n", where);
    fflush(stdout);
    rc = foorpc_server_run(server); /* returns once signal_thread has stopped it */

    if (rc != FOORPC_RESULT_OK) pthread_kill(sig_thread, SIGTERM); /* ends its sigwait */
    pthread_join(sig_thread, NULL);
    foorpc_server_free(server);
    wait_for_sleepers(5000);

    free_notes();
    return rc == FOORPC_RESULT_OK ? 0 : die("run", rc);
}
