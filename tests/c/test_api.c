/*
 * Tests of the libfoorpc C API: NULL arguments, every _free(NULL), writer and
 * reader round trips of every type, calls (sync, async with callback,
 * notifications), remote error objects, timeouts, answering later from
 * another thread, server start/run/stop; connections as handlers see them
 * (foorpc_peer: ids, calling the client back, notifications both ways,
 * closing one connection), notification fallbacks, client-side handlers,
 * FOORPC_HANDLER_ORDERED (arrival order per connection while one blocks). Built against the installed header
 * and library; also run under valgrind. Last line: "N passed, N failed".
 */
#define _POSIX_C_SOURCE 200809L
#include <foorpc.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int passed = 0, failed = 0;

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (cond) {                                                                     \
            passed++;                                                                   \
        } else {                                                                        \
            char last_[256];                                                            \
            foorpc_last_error_message(last_, sizeof last_, NULL);                       \
            failed++;                                                                   \
            fprintf(stderr, "FAIL %s:%d: %s (last error: %s)\n", __FILE__, __LINE__, #cond, \
                    last_);                                                             \
        }                                                                               \
    } while (0)

#define OK(expr) CHECK((expr) == FOORPC_RESULT_OK)

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0) {
    }
}

static int last_error_contains(const char *needle) {
    char msg[512];
    foorpc_last_error_message(msg, sizeof msg, NULL);
    return strstr(msg, needle) != NULL;
}

/* ------------------------------------------------------------------------ */

static void test_version(void) {
    char want[64];
    snprintf(want, sizeof want, "%d.%d.%d", FOORPC_VERSION_MAJOR, FOORPC_VERSION_MINOR,
             FOORPC_VERSION_PATCH);
    CHECK(strcmp(foorpc_version(), want) == 0);
    CHECK(FOORPC_VERSION_NUMBER ==
          ((FOORPC_VERSION_MAJOR << 16) | (FOORPC_VERSION_MINOR << 8) | FOORPC_VERSION_PATCH));
}

static void test_results(void) {
    const uint32_t codes[] = {FOORPC_RESULT_OK, FOORPC_RESULT_NULL_PARAMETER,
                              FOORPC_RESULT_INVALID_MSGPACK, FOORPC_RESULT_IO,
                              FOORPC_RESULT_REMOTE_ERROR, FOORPC_RESULT_TIMEOUT,
                              FOORPC_RESULT_TYPE_MISMATCH, FOORPC_RESULT_PANIC};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        const char *m = foorpc_result_message(codes[i]);
        CHECK(m != NULL && m[0] != '\0' && strstr(m, "unknown") == NULL);
    }
    CHECK(strstr(foorpc_result_message(123456), "unknown") != NULL);
    CHECK(FOORPC_RESULT_OK == 0 && FOORPC_RESULT_NULL_PARAMETER == 1000 &&
          FOORPC_RESULT_IO == 2000 && FOORPC_RESULT_PROTOCOL == 3000 &&
          FOORPC_RESULT_REMOTE_ERROR == 4000 && FOORPC_RESULT_TIMEOUT == 4001);
    CHECK(foorpc_result_is_connection_error(FOORPC_RESULT_CONNECTION_LOST));
    CHECK(foorpc_result_is_connection_error(FOORPC_RESULT_PROTOCOL));
    CHECK(foorpc_result_is_connection_error(FOORPC_RESULT_LIMIT_EXCEEDED));
    CHECK(!foorpc_result_is_connection_error(FOORPC_RESULT_TIMEOUT));
}

/* Handlers that are only registered, never called. */
static void h_dummy(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                    foorpc_responder *resp) {
    (void)ud, (void)m, (void)ml, (void)params, (void)len;
    foorpc_responder_free(resp);
}

static void h_dummy_note(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                         const foorpc_peer *peer) {
    (void)ud, (void)m, (void)ml, (void)params, (void)len, (void)peer;
}

static void test_free_null_and_null_args(void) {
    foorpc_buf_free(NULL);
    foorpc_writer_free(NULL);
    foorpc_reader_free(NULL);
    foorpc_client_free(NULL);
    foorpc_client_close(NULL);
    foorpc_server_free(NULL);
    foorpc_responder_free(NULL);
    foorpc_peer_free(NULL);
    foorpc_peer_close(NULL);
    foorpc_client_options_free(NULL);
    passed++; /* survived */

    uint8_t byte = 0;
    foorpc_writer *w = NULL;
    foorpc_reader *r = NULL;
    foorpc_client *c = NULL;
    foorpc_server *s = NULL;
    size_t n = 0;
    CHECK(foorpc_writer_new(NULL) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(last_error_contains("writer_out"));
    CHECK(foorpc_writer_int(NULL, 1) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_writer_cstr(NULL, "x") == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_writer_data(NULL) == NULL && foorpc_writer_len(NULL) == 0);
    CHECK(foorpc_reader_new(NULL, 1, &r) == FOORPC_RESULT_NULL_PARAMETER && r == NULL);
    CHECK(foorpc_reader_new(&byte, 1, NULL) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_reader_read_nil(NULL) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_reader_peek_type(NULL) == FOORPC_TYPE_NONE);
    CHECK(foorpc_buf_data(NULL) == NULL && foorpc_buf_len(NULL) == 0);
    CHECK(foorpc_client_connect(NULL, 0, &c) == FOORPC_RESULT_NULL_PARAMETER && c == NULL);
    CHECK(foorpc_client_connect("tcp://127.0.0.1:1", 0, NULL) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_client_call(NULL, "m", NULL, 0, 0, NULL) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_client_notify(NULL, "m", NULL, 0) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(!foorpc_client_is_connected(NULL));
    CHECK(foorpc_server_new(NULL) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_server_bind(NULL, "tcp://127.0.0.1:0") == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_server_start(NULL) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_server_run(NULL) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_server_stop(NULL) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_responder_ok(NULL, NULL, 0) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_responder_error(NULL, NULL, 0) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_responder_error_message(NULL, 0, "x", 1) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_last_error_message(NULL, 10, &n) == FOORPC_RESULT_NULL_PARAMETER);

    /* Peers, client options, the new registrations. */
    foorpc_peer *p = NULL;
    foorpc_client_options *o = NULL;
    CHECK(foorpc_peer_id(NULL) == 0);
    CHECK(!foorpc_peer_is_connected(NULL));
    CHECK(foorpc_peer_call(NULL, "m", NULL, 0, 0, NULL) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(last_error_contains("peer"));
    CHECK(foorpc_peer_call_async(NULL, "m", NULL, 0, 0, NULL, NULL) ==
          FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_peer_notify(NULL, "m", NULL, 0) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_peer_clone(NULL, &p) == FOORPC_RESULT_NULL_PARAMETER && p == NULL);
    CHECK(foorpc_responder_peer(NULL, &p) == FOORPC_RESULT_NULL_PARAMETER && p == NULL);
    CHECK(foorpc_client_options_new(NULL) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_client_options_register(NULL, "m", h_dummy, NULL, 0) ==
          FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_client_options_register_fallback(NULL, h_dummy, NULL, 0) ==
          FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_client_options_register_notification(NULL, "m", h_dummy_note, NULL, 0) ==
          FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_client_options_register_notification_fallback(NULL, h_dummy_note, NULL, 0) ==
          FOORPC_RESULT_NULL_PARAMETER);
    OK(foorpc_client_options_new(&o));
    CHECK(foorpc_client_options_register(o, NULL, h_dummy, NULL, 0) ==
          FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_client_options_register(o, "m", NULL, NULL, 0) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(last_error_contains("callback"));
    CHECK(foorpc_client_options_register(o, "m", h_dummy, NULL, 77) ==
          FOORPC_RESULT_INVALID_ARGUMENT);
    CHECK(foorpc_client_options_register(o, "\xff", h_dummy, NULL, 0) ==
          FOORPC_RESULT_INVALID_ARGUMENT);
    CHECK(foorpc_client_options_register_fallback(o, NULL, NULL, 0) ==
          FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_client_options_register_notification(o, NULL, h_dummy_note, NULL, 0) ==
          FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_client_options_register_notification(o, "m", NULL, NULL, 0) ==
          FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_client_options_register_notification_fallback(o, NULL, NULL, 0) ==
          FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_client_options_register_notification_fallback(o, h_dummy_note, NULL, 9) ==
          FOORPC_RESULT_INVALID_ARGUMENT);
    OK(foorpc_client_options_register(o, "m", h_dummy, NULL, FOORPC_HANDLER_ORDERED));
    OK(foorpc_client_options_register_fallback(o, h_dummy, NULL, FOORPC_HANDLER_ORDERED));
    OK(foorpc_client_options_register_notification_fallback(o, h_dummy_note, NULL,
                                                            FOORPC_HANDLER_ORDERED));
    CHECK(foorpc_client_connect_with(NULL, 0, o, &c) == FOORPC_RESULT_NULL_PARAMETER && c == NULL);
    CHECK(foorpc_client_connect_with("tcp://127.0.0.1:1", 0, o, NULL) ==
          FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_client_connect_with("http://x", 0, o, &c) == FOORPC_RESULT_INVALID_ADDRESS &&
          c == NULL);
    foorpc_client_options_free(o);

    OK(foorpc_server_new(&s));
    CHECK(foorpc_server_register(s, NULL, NULL, NULL, 0) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_server_register(s, "m", NULL, NULL, 0) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_server_register_notification_fallback(NULL, h_dummy_note, NULL, 0) ==
          FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_server_register_notification_fallback(s, NULL, NULL, 0) ==
          FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_server_register_notification_fallback(s, h_dummy_note, NULL,
                                                       FOORPC_HANDLER_ORDERED + 1) ==
          FOORPC_RESULT_INVALID_ARGUMENT);
    CHECK(last_error_contains("unknown handler flags 0x3"));
    /* The flags are a stable ABI. */
    CHECK(FOORPC_HANDLER_POOL == 0 && FOORPC_HANDLER_INLINE == 1 && FOORPC_HANDLER_ORDERED == 2);
    OK(foorpc_server_register(s, "m", h_dummy, NULL, FOORPC_HANDLER_ORDERED));
    OK(foorpc_server_register_fallback(s, h_dummy, NULL, FOORPC_HANDLER_ORDERED));
    OK(foorpc_server_register_notification_fallback(s, h_dummy_note, NULL,
                                                    FOORPC_HANDLER_ORDERED));
    CHECK(foorpc_server_register_notification(s, "n", NULL, NULL, 0) ==
          FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_server_bind(s, "nonsense") == FOORPC_RESULT_INVALID_ADDRESS);
    CHECK(foorpc_server_start(s) == FOORPC_RESULT_INVALID_STATE); /* nothing bound */
    foorpc_server_free(s);

    CHECK(foorpc_client_connect("http://x", 0, &c) == FOORPC_RESULT_INVALID_ADDRESS && c == NULL);

    /* The detailed message is kept per thread and truncated to fit. */
    char small[4];
    CHECK(foorpc_writer_new(NULL) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_last_error_message(small, sizeof small, &n) == FOORPC_RESULT_BUFFER_TOO_SMALL);
    CHECK(n == 3 && small[3] == '\0');
    (void)w;
}

/* ------------------------------------------------------------------------ */

static int bytes_equal(const foorpc_writer *w, const char *hex) {
    size_t n = strlen(hex) / 2;
    if (foorpc_writer_len(w) != n) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        if (foorpc_writer_data(w)[i] != v) return 0;
    }
    return 1;
}

static void test_writer_encodings(void) {
    foorpc_writer *w = NULL;
    OK(foorpc_writer_new(&w));
#define ENC(call, hex)                \
    do {                              \
        foorpc_writer_clear(w);       \
        OK(call);                     \
        CHECK(bytes_equal(w, hex));   \
    } while (0)
    ENC(foorpc_writer_nil(w), "c0");
    ENC(foorpc_writer_bool(w, true), "c3");
    ENC(foorpc_writer_int(w, 5), "05");
    ENC(foorpc_writer_int(w, -33), "d0df");
    ENC(foorpc_writer_uint(w, 128), "cc80");
    ENC(foorpc_writer_uint(w, UINT64_MAX), "cfffffffffffffffff");
    ENC(foorpc_writer_int(w, INT64_MIN), "d38000000000000000");
    ENC(foorpc_writer_f32(w, 1.5f), "ca3fc00000");
    ENC(foorpc_writer_f64(w, 1.5), "cb3ff8000000000000");
    ENC(foorpc_writer_cstr(w, "a"), "a161");
    ENC(foorpc_writer_bin(w, (const uint8_t *)"\x01", 1), "c40101");
    ENC(foorpc_writer_array(w, 16), "dc0010");
    ENC(foorpc_writer_map(w, 2), "82");
    ENC(foorpc_writer_ext(w, 5, (const uint8_t *)"abcd", 4), "d60561626364");
    ENC(foorpc_writer_ext(w, -1, (const uint8_t *)"abc", 3), "c703ff616263");
    ENC(foorpc_writer_raw(w, (const uint8_t *)"\x92\x01\xa1x", 4), "9201a178");
#undef ENC
    foorpc_writer_clear(w);
    CHECK(foorpc_writer_raw(w, (const uint8_t *)"\x92\x01", 2) == FOORPC_RESULT_INVALID_MSGPACK);
    CHECK(foorpc_writer_raw(w, (const uint8_t *)"\x01\x02", 2) == FOORPC_RESULT_INVALID_MSGPACK);
    CHECK(foorpc_writer_len(w) == 0);
    foorpc_writer_free(w);
}

static void test_round_trip(void) {
    static const int64_t ints[] = {0, 1, 127, 128, 255, 256, 65535, 65536, -1, -32, -33,
                                   -128, -129, -32768, -32769, INT32_MIN, (int64_t)INT32_MIN - 1,
                                   INT64_MAX, INT64_MIN};
    static const uint64_t uints[] = {0, 255, 65536, UINT32_MAX, (uint64_t)UINT32_MAX + 1,
                                     UINT64_MAX};
    static const size_t str_lens[] = {0, 31, 32, 255, 256, 65535, 65536};
    static const size_t ext_lens[] = {0, 1, 2, 3, 4, 8, 16, 17, 300};
    const size_t nints = sizeof ints / sizeof ints[0], nuints = sizeof uints / sizeof uints[0];
    const size_t nstr = sizeof str_lens / sizeof str_lens[0];
    const size_t next = sizeof ext_lens / sizeof ext_lens[0];
    char *big = malloc(65536);
    memset(big, 'z', 65536);

    foorpc_writer *w = NULL;
    OK(foorpc_writer_new(&w));
    OK(foorpc_writer_nil(w));
    OK(foorpc_writer_bool(w, true));
    OK(foorpc_writer_bool(w, false));
    for (size_t i = 0; i < nints; i++) OK(foorpc_writer_int(w, ints[i]));
    for (size_t i = 0; i < nuints; i++) OK(foorpc_writer_uint(w, uints[i]));
    OK(foorpc_writer_f32(w, -0.25f));
    OK(foorpc_writer_f64(w, 1e300));
    OK(foorpc_writer_f64(w, NAN));
    for (size_t i = 0; i < nstr; i++) OK(foorpc_writer_str(w, big, str_lens[i]));
    for (size_t i = 0; i < nstr; i++) OK(foorpc_writer_bin(w, (const uint8_t *)big, str_lens[i]));
    for (size_t i = 0; i < next; i++)
        OK(foorpc_writer_ext(w, (int8_t)i, (const uint8_t *)big, ext_lens[i]));
    OK(foorpc_writer_map(w, 2)); /* {"k": [1, nil], 2: {}} */
    OK(foorpc_writer_cstr(w, "k"));
    OK(foorpc_writer_array(w, 2));
    OK(foorpc_writer_int(w, 1));
    OK(foorpc_writer_nil(w));
    OK(foorpc_writer_int(w, 2));
    OK(foorpc_writer_map(w, 0));
    OK(foorpc_writer_array(w, 3)); /* skipped whole */
    OK(foorpc_writer_array(w, 1));
    OK(foorpc_writer_map(w, 1));
    OK(foorpc_writer_nil(w));
    OK(foorpc_writer_cstr(w, "deep"));
    OK(foorpc_writer_int(w, 7));
    OK(foorpc_writer_bin(w, NULL, 0));
    OK(foorpc_writer_cstr(w, "tail"));

    foorpc_reader *r = NULL;
    bool b;
    int64_t iv;
    uint64_t uv;
    double dv;
    float fv;
    const char *s;
    const uint8_t *p;
    size_t n;
    uint32_t count;
    int8_t et;
    OK(foorpc_reader_new(foorpc_writer_data(w), foorpc_writer_len(w), &r));
    CHECK(foorpc_reader_peek_type(r) == FOORPC_TYPE_NIL);
    CHECK(foorpc_reader_read_bool(r, &b) == FOORPC_RESULT_TYPE_MISMATCH);
    CHECK(last_error_contains("expected bool, found nil"));
    OK(foorpc_reader_read_nil(r));
    CHECK(foorpc_reader_read_bool(r, &b) == FOORPC_RESULT_OK && b);
    CHECK(foorpc_reader_read_bool(r, &b) == FOORPC_RESULT_OK && !b);
    for (size_t i = 0; i < nints; i++) {
        CHECK(foorpc_reader_peek_type(r) == (ints[i] < 0 ? FOORPC_TYPE_INT : FOORPC_TYPE_UINT));
        if (ints[i] < 0) CHECK(foorpc_reader_read_uint(r, &uv) == FOORPC_RESULT_OUT_OF_RANGE);
        CHECK(foorpc_reader_read_int(r, &iv) == FOORPC_RESULT_OK && iv == ints[i]);
    }
    for (size_t i = 0; i < nuints; i++) {
        if (uints[i] > INT64_MAX) CHECK(foorpc_reader_read_int(r, &iv) == FOORPC_RESULT_OUT_OF_RANGE);
        CHECK(foorpc_reader_read_uint(r, &uv) == FOORPC_RESULT_OK && uv == uints[i]);
    }
    CHECK(foorpc_reader_peek_type(r) == FOORPC_TYPE_F32);
    CHECK(foorpc_reader_read_f32(r, &fv) == FOORPC_RESULT_OK && fv == -0.25f);
    CHECK(foorpc_reader_peek_type(r) == FOORPC_TYPE_F64);
    CHECK(foorpc_reader_read_f32(r, &fv) == FOORPC_RESULT_TYPE_MISMATCH);
    CHECK(foorpc_reader_read_f64(r, &dv) == FOORPC_RESULT_OK && dv == 1e300);
    CHECK(foorpc_reader_read_f64(r, &dv) == FOORPC_RESULT_OK && isnan(dv));
    for (size_t i = 0; i < nstr; i++) {
        CHECK(foorpc_reader_peek_type(r) == FOORPC_TYPE_STR);
        CHECK(foorpc_reader_read_str(r, &s, &n) == FOORPC_RESULT_OK && n == str_lens[i] &&
              (n == 0 || memcmp(s, big, n) == 0));
    }
    for (size_t i = 0; i < nstr; i++) {
        CHECK(foorpc_reader_read_str(r, &s, &n) == FOORPC_RESULT_TYPE_MISMATCH);
        CHECK(foorpc_reader_read_bin(r, &p, &n) == FOORPC_RESULT_OK && n == str_lens[i] &&
              (n == 0 || memcmp(p, big, n) == 0));
    }
    for (size_t i = 0; i < next; i++) {
        CHECK(foorpc_reader_peek_type(r) == FOORPC_TYPE_EXT);
        CHECK(foorpc_reader_read_ext(r, &et, &p, &n) == FOORPC_RESULT_OK && et == (int8_t)i &&
              n == ext_lens[i] && (n == 0 || memcmp(p, big, n) == 0));
    }
    CHECK(foorpc_reader_read_map(r, &count) == FOORPC_RESULT_OK && count == 2);
    CHECK(foorpc_reader_read_str(r, &s, &n) == FOORPC_RESULT_OK && n == 1 && s[0] == 'k');
    CHECK(foorpc_reader_read_raw(r, &p, &n) == FOORPC_RESULT_OK && n == 3 &&
          memcmp(p, "\x92\x01\xc0", 3) == 0);
    CHECK(foorpc_reader_read_int(r, &iv) == FOORPC_RESULT_OK && iv == 2);
    CHECK(foorpc_reader_read_map(r, &count) == FOORPC_RESULT_OK && count == 0);
    CHECK(foorpc_reader_peek_type(r) == FOORPC_TYPE_ARRAY);
    OK(foorpc_reader_skip(r));
    CHECK(foorpc_reader_read_str(r, &s, &n) == FOORPC_RESULT_OK && n == 4 &&
          memcmp(s, "tail", 4) == 0);
    CHECK(foorpc_reader_remaining(r) == 0);
    CHECK(foorpc_reader_peek_type(r) == FOORPC_TYPE_NONE);
    CHECK(foorpc_reader_read_nil(r) == FOORPC_RESULT_END_OF_DATA);
    CHECK(foorpc_reader_skip(r) == FOORPC_RESULT_END_OF_DATA);
    foorpc_reader_free(r);

    /* Malformed and truncated input; a failed read does not move the reader. */
    OK(foorpc_reader_new((const uint8_t *)"\xc1", 1, &r));
    CHECK(foorpc_reader_peek_type(r) == FOORPC_TYPE_NONE);
    CHECK(foorpc_reader_skip(r) == FOORPC_RESULT_MALFORMED_DATA);
    foorpc_reader_free(r);
    OK(foorpc_reader_new((const uint8_t *)"\xa5hel", 4, &r));
    CHECK(foorpc_reader_read_str(r, &s, &n) == FOORPC_RESULT_END_OF_DATA);
    CHECK(foorpc_reader_remaining(r) == 4);
    foorpc_reader_free(r);
    OK(foorpc_reader_new((const uint8_t *)"\x93\x01\x02", 3, &r));
    CHECK(foorpc_reader_read_raw(r, &p, &n) == FOORPC_RESULT_END_OF_DATA);
    CHECK(foorpc_reader_read_array(r, &count) == FOORPC_RESULT_OK && count == 3);
    foorpc_reader_free(r);
    OK(foorpc_reader_new(NULL, 0, &r));
    CHECK(foorpc_reader_peek_type(r) == FOORPC_TYPE_NONE);
    foorpc_reader_free(r);

    foorpc_writer_free(w);
    free(big);
}

/* ------------------------------------------------------------------------ */
/* A server in this process. */

struct later {
    foorpc_responder *resp;
    long ms;
    int64_t value;
};

static void *answer_later(void *arg) {
    struct later *l = arg;
    foorpc_writer *w = NULL;
    sleep_ms(l->ms);
    foorpc_writer_new(&w);
    foorpc_writer_int(w, l->value);
    foorpc_responder_ok(l->resp, foorpc_writer_data(w), foorpc_writer_len(w));
    foorpc_writer_free(w);
    free(l);
    return NULL;
}

/* add(a, b) on the pool. */
static void h_add(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                  foorpc_responder *resp) {
    (void)ud, (void)m, (void)ml;
    foorpc_reader *r = NULL;
    uint32_t n = 0;
    int64_t a = 0, b = 0;
    foorpc_writer *w = NULL;
    foorpc_reader_new(params, len, &r);
    if (foorpc_reader_read_array(r, &n) || n != 2 || foorpc_reader_read_int(r, &a) ||
        foorpc_reader_read_int(r, &b)) {
        foorpc_responder_error_message(resp, 1, "bad args", 8);
    } else {
        foorpc_writer_new(&w);
        foorpc_writer_int(w, a + b);
        foorpc_responder_ok(resp, foorpc_writer_data(w), foorpc_writer_len(w));
        foorpc_writer_free(w);
    }
    foorpc_reader_free(r);
}

/* Inline: answers (param0) after param1 ms from a new thread. */
static void h_later(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                    foorpc_responder *resp) {
    (void)ud, (void)m, (void)ml;
    foorpc_reader *r = NULL;
    uint32_t n;
    int64_t value = 0, ms = 0;
    struct later *l = malloc(sizeof *l);
    pthread_t t;
    foorpc_reader_new(params, len, &r);
    foorpc_reader_read_array(r, &n);
    foorpc_reader_read_int(r, &value);
    foorpc_reader_read_int(r, &ms);
    foorpc_reader_free(r);
    l->resp = resp;
    l->ms = (long)ms;
    l->value = value;
    pthread_create(&t, NULL, answer_later, l);
    pthread_detach(t);
}

static int bad_result_rc = -1;

/* Answers with broken MessagePack: the caller gets an error reply. */
static void h_bad_result(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                         foorpc_responder *resp) {
    (void)ud, (void)m, (void)ml, (void)params, (void)len;
    bad_result_rc = (int)foorpc_responder_ok(resp, (const uint8_t *)"\x92\x01", 2);
}

/* Never answers: freeing the responder sends an error. */
static void h_drop(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                   foorpc_responder *resp) {
    (void)ud, (void)m, (void)ml, (void)params, (void)len;
    foorpc_responder_free(resp);
}

/* Error object passed through as raw bytes: {"code": 7}. */
static void h_map_error(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                        foorpc_responder *resp) {
    (void)ud, (void)m, (void)ml, (void)params, (void)len;
    foorpc_responder_error(resp, (const uint8_t *)"\x81\xa4" "code" "\x07", 7);
}

/* Fallback: answers with the method name it was called as. */
static void h_fallback(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                       foorpc_responder *resp) {
    (void)ud, (void)params, (void)len;
    foorpc_writer *w = NULL;
    foorpc_writer_new(&w);
    foorpc_writer_str(w, m, ml);
    foorpc_responder_ok(resp, foorpc_writer_data(w), foorpc_writer_len(w));
    foorpc_writer_free(w);
}

/* Inline: stops the server it runs in (userdata). */
static void h_stop(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                   foorpc_responder *resp) {
    (void)m, (void)ml, (void)params, (void)len;
    foorpc_responder_ok(resp, NULL, 0); /* nil */
    foorpc_server_stop(ud);             /* only starts the shutdown here */
}

static pthread_mutex_t note_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t note_sum = 0;
static int note_count = 0;
static uint64_t note_peer_id = 0;

static void h_note(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                   const foorpc_peer *peer) {
    (void)ud;
    foorpc_reader *r = NULL;
    uint32_t n;
    int64_t v = 0;
    foorpc_reader_new(params, len, &r);
    foorpc_reader_read_array(r, &n);
    foorpc_reader_read_int(r, &v);
    foorpc_reader_free(r);
    pthread_mutex_lock(&note_lock);
    if (ml == 4 && memcmp(m, "note", 4) == 0 && m[4] == '\0') note_sum += v;
    note_count++;
    note_peer_id = foorpc_peer_id(peer);
    pthread_mutex_unlock(&note_lock);
}

static foorpc_server *make_server(const char *address) {
    foorpc_server *s = NULL;
    OK(foorpc_server_new(&s));
    OK(foorpc_server_register(s, "add", h_add, NULL, FOORPC_HANDLER_POOL));
    OK(foorpc_server_register(s, "later", h_later, NULL, FOORPC_HANDLER_INLINE));
    OK(foorpc_server_register(s, "bad_result", h_bad_result, NULL, FOORPC_HANDLER_INLINE));
    OK(foorpc_server_register(s, "drop", h_drop, NULL, 0));
    OK(foorpc_server_register(s, "map_error", h_map_error, NULL, FOORPC_HANDLER_INLINE));
    OK(foorpc_server_register(s, "stop", h_stop, s, FOORPC_HANDLER_INLINE));
    OK(foorpc_server_register_notification(s, "note", h_note, NULL, FOORPC_HANDLER_INLINE));
    CHECK(foorpc_server_register(s, "x", h_add, NULL, 77) == FOORPC_RESULT_INVALID_ARGUMENT);
    OK(foorpc_server_bind(s, address));
    return s;
}

/* Encodes [a, b] into w. */
static void two_ints(foorpc_writer *w, int64_t a, int64_t b) {
    foorpc_writer_clear(w);
    foorpc_writer_array(w, 2);
    foorpc_writer_int(w, a);
    foorpc_writer_int(w, b);
}

static int64_t buf_int(const foorpc_buf *buf) {
    foorpc_reader *r = NULL;
    int64_t v = -999999;
    foorpc_reader_new(foorpc_buf_data(buf), foorpc_buf_len(buf), &r);
    foorpc_reader_read_int(r, &v);
    foorpc_reader_free(r);
    return v;
}

/* Async completions, counted. */
struct waiter {
    pthread_mutex_t lock;
    pthread_cond_t cv;
    int calls;            /* callbacks run */
    int ok_sum;           /* sum of integer results */
    int remote_errors;
    int other_errors;
    foorpc_result last_rc;
    int nested_rc;        /* result of a blocking call made inside the callback */
    const foorpc_client *client;
};

static void waiter_init(struct waiter *wt, const foorpc_client *client) {
    memset(wt, 0, sizeof *wt);
    pthread_mutex_init(&wt->lock, NULL);
    pthread_cond_init(&wt->cv, NULL);
    wt->nested_rc = -1;
    wt->client = client;
}

static void waiter_destroy(struct waiter *wt) {
    pthread_mutex_destroy(&wt->lock);
    pthread_cond_destroy(&wt->cv);
}

static void on_done(void *userdata, foorpc_result rc, const uint8_t *data, size_t len) {
    struct waiter *wt = userdata;
    foorpc_reader *r = NULL;
    int64_t v = 0;
    pthread_mutex_lock(&wt->lock);
    if (rc == FOORPC_RESULT_OK) {
        foorpc_reader_new(data, len, &r);
        if (foorpc_reader_read_int(r, &v) == FOORPC_RESULT_OK) wt->ok_sum += (int)v;
        foorpc_reader_free(r);
    } else if (rc == FOORPC_RESULT_REMOTE_ERROR) {
        if (data != NULL && len > 0) wt->remote_errors++;
    } else {
        if (data == NULL && len == 0) wt->other_errors++;
    }
    wt->last_rc = rc;
    wt->calls++;
    pthread_cond_broadcast(&wt->cv);
    pthread_mutex_unlock(&wt->lock);
}

static void on_done_nested(void *userdata, foorpc_result rc, const uint8_t *data, size_t len) {
    struct waiter *wt = userdata;
    /* A blocking call from foorpc's I/O thread is refused, not a deadlock. */
    int nested = (int)foorpc_client_call(wt->client, "add", NULL, 0, 1000, NULL);
    pthread_mutex_lock(&wt->lock);
    wt->nested_rc = nested;
    pthread_mutex_unlock(&wt->lock);
    on_done(userdata, rc, data, len);
}

/* The CLOCK_REALTIME time ms from now, for pthread_cond_timedwait. */
static void deadline_in(struct timespec *until, long ms) {
    clock_gettime(CLOCK_REALTIME, until);
    until->tv_sec += ms / 1000;
    until->tv_nsec += (ms % 1000) * 1000000L;
    if (until->tv_nsec >= 1000000000L) until->tv_sec++, until->tv_nsec -= 1000000000L;
}

static int wait_calls(struct waiter *wt, int n, long timeout_ms) {
    struct timespec until;
    deadline_in(&until, timeout_ms);
    pthread_mutex_lock(&wt->lock);
    while (wt->calls < n && pthread_cond_timedwait(&wt->cv, &wt->lock, &until) == 0) {
    }
    int got = wt->calls;
    pthread_mutex_unlock(&wt->lock);
    return got;
}

static void test_calls(const char *bind_address) {
    note_count = 0, note_sum = 0, bad_result_rc = -1;
    foorpc_server *s = make_server(bind_address);
    char addr[256];
    size_t n = 0;
    char tiny[4];
    CHECK(foorpc_server_local_address(s, tiny, sizeof tiny, &n) == FOORPC_RESULT_BUFFER_TOO_SMALL);
    CHECK(n > sizeof tiny);
    /* Asking for the size, as with snprintf(NULL, 0, ...). */
    n = 0;
    CHECK(foorpc_server_local_address(s, NULL, 0, &n) == FOORPC_RESULT_BUFFER_TOO_SMALL);
    size_t needed = n;
    CHECK(needed > sizeof tiny && needed < sizeof addr);
    CHECK(foorpc_server_local_address(s, NULL, 1, &n) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_server_local_address(s, addr, needed, &n) == FOORPC_RESULT_BUFFER_TOO_SMALL);
    OK(foorpc_server_local_address(s, addr, needed + 1, &n));
    CHECK(n == needed && strlen(addr) == needed);
    OK(foorpc_server_local_address(s, addr, sizeof addr, &n));
    CHECK(n == strlen(addr));
    CHECK(strncmp(addr, bind_address, 6) == 0);
    if (strncmp(addr, "tcp://", 6) == 0) CHECK(strcmp(addr, "tcp://127.0.0.1:0") != 0);
    OK(foorpc_server_start(s));
    CHECK(foorpc_server_start(s) == FOORPC_RESULT_INVALID_STATE);
    CHECK(foorpc_server_register(s, "late", h_add, NULL, 0) == FOORPC_RESULT_INVALID_STATE);
    CHECK(foorpc_server_bind(s, "tcp://127.0.0.1:0") == FOORPC_RESULT_INVALID_STATE);

    foorpc_client *c = NULL;
    foorpc_writer *w = NULL;
    foorpc_buf *res = NULL;
    foorpc_reader *r = NULL;
    OK(foorpc_client_connect(addr, 2000, &c));
    CHECK(foorpc_client_is_connected(c));
    OK(foorpc_writer_new(&w));

    /* Plain calls. */
    for (int i = 0; i < 100; i++) {
        two_ints(w, i, 1000);
        res = NULL;
        OK(foorpc_client_call(c, "add", foorpc_writer_data(w), foorpc_writer_len(w), 0, &res));
        CHECK(buf_int(res) == i + 1000);
        foorpc_buf_free(res);
    }
    two_ints(w, 1, 2);
    OK(foorpc_client_call(c, "add", foorpc_writer_data(w), foorpc_writer_len(w), 0, NULL));

    /* Params must be exactly one array; the result pointer is left alone on failure. */
    res = NULL;
    CHECK(foorpc_client_call(c, "add", (const uint8_t *)"\x01", 1, 0, &res) ==
          FOORPC_RESULT_INVALID_MSGPACK && res == NULL);
    CHECK(foorpc_client_call(c, "add", (const uint8_t *)"\x90\x90", 2, 0, &res) ==
          FOORPC_RESULT_INVALID_MSGPACK && res == NULL);
    CHECK(foorpc_client_call(c, "add", NULL, 3, 0, &res) == FOORPC_RESULT_NULL_PARAMETER);
    CHECK(foorpc_client_call(c, "\xff", NULL, 0, 0, &res) == FOORPC_RESULT_INVALID_ARGUMENT);

    /* Remote errors carry the peer's error object. */
    CHECK(foorpc_client_call(c, "add", NULL, 0, 0, &res) == FOORPC_RESULT_REMOTE_ERROR);
    CHECK(last_error_contains("bad args"));
    {
        uint32_t cnt = 0;
        int64_t code = -1;
        const char *msg = NULL;
        size_t msg_len = 0;
        OK(foorpc_reader_new(foorpc_buf_data(res), foorpc_buf_len(res), &r));
        CHECK(foorpc_reader_read_array(r, &cnt) == FOORPC_RESULT_OK && cnt == 2);
        CHECK(foorpc_reader_read_int(r, &code) == FOORPC_RESULT_OK && code == 1);
        CHECK(foorpc_reader_read_str(r, &msg, &msg_len) == FOORPC_RESULT_OK && msg_len == 8 &&
              memcmp(msg, "bad args", 8) == 0);
        foorpc_reader_free(r);
        foorpc_buf_free(res);
    }
    res = NULL;
    CHECK(foorpc_client_call(c, "no_such", NULL, 0, 0, &res) == FOORPC_RESULT_REMOTE_ERROR);
    CHECK(last_error_contains("unknown method: no_such"));
    foorpc_buf_free(res);
    res = NULL;
    CHECK(foorpc_client_call(c, "map_error", NULL, 0, 0, &res) == FOORPC_RESULT_REMOTE_ERROR);
    CHECK(foorpc_buf_len(res) == 7 && memcmp(foorpc_buf_data(res), "\x81\xa4" "code" "\x07", 7) == 0);
    foorpc_buf_free(res);
    res = NULL;
    CHECK(foorpc_client_call(c, "drop", NULL, 0, 0, &res) == FOORPC_RESULT_REMOTE_ERROR);
    CHECK(last_error_contains("without answering"));
    foorpc_buf_free(res);
    res = NULL;
    CHECK(foorpc_client_call(c, "bad_result", NULL, 0, 0, &res) == FOORPC_RESULT_REMOTE_ERROR);
    CHECK(bad_result_rc == FOORPC_RESULT_INVALID_MSGPACK);
    foorpc_buf_free(res);
    res = NULL;

    /* Answer later from another thread; and a timeout when it comes too late. */
    two_ints(w, 42, 30);
    OK(foorpc_client_call(c, "later", foorpc_writer_data(w), foorpc_writer_len(w), 0, &res));
    CHECK(buf_int(res) == 42);
    foorpc_buf_free(res);
    res = NULL;
    two_ints(w, 1, 600);
    CHECK(foorpc_client_call(c, "later", foorpc_writer_data(w), foorpc_writer_len(w), 50, &res) ==
              FOORPC_RESULT_TIMEOUT &&
          res == NULL);
    CHECK(last_error_contains("timed out"));

    /* Asynchronous calls: each callback runs exactly once. */
    struct waiter wt;
    waiter_init(&wt, c);
    int want_sum = 0;
    for (int i = 0; i < 50; i++) {
        two_ints(w, i, 1);
        want_sum += i + 1;
        OK(foorpc_client_call_async(c, "add", foorpc_writer_data(w), foorpc_writer_len(w), 0,
                                    on_done, &wt));
    }
    OK(foorpc_client_call_async(c, "no_such", NULL, 0, 0, on_done, &wt));
    two_ints(w, 5, 20);
    OK(foorpc_client_call_async(c, "later", foorpc_writer_data(w), foorpc_writer_len(w), 0, on_done,
                                &wt));
    CHECK(wait_calls(&wt, 52, 10000) == 52);
    CHECK(wt.ok_sum == want_sum + 5);
    CHECK(wt.remote_errors == 1);
    CHECK(foorpc_client_call_async(c, "add", NULL, 0, 0, NULL, &wt) ==
          FOORPC_RESULT_NULL_PARAMETER);
    /* An async timeout. */
    two_ints(w, 1, 600);
    OK(foorpc_client_call_async(c, "later", foorpc_writer_data(w), foorpc_writer_len(w), 50,
                                on_done, &wt));
    CHECK(wait_calls(&wt, 53, 5000) == 53);
    CHECK(wt.last_rc == FOORPC_RESULT_TIMEOUT && wt.other_errors == 1);
    /* A blocking call inside a callback is refused. */
    two_ints(w, 1, 1);
    OK(foorpc_client_call_async(c, "add", foorpc_writer_data(w), foorpc_writer_len(w), 0,
                                on_done_nested, &wt));
    CHECK(wait_calls(&wt, 54, 5000) == 54);
    CHECK(wt.nested_rc == FOORPC_RESULT_USAGE);
    sleep_ms(50); /* let the callbacks return before wt goes away */
    waiter_destroy(&wt);

    /* Notifications, in order, on the I/O thread. */
    for (int i = 1; i <= 10; i++) {
        foorpc_writer_clear(w);
        foorpc_writer_array(w, 1);
        foorpc_writer_int(w, i);
        OK(foorpc_client_notify(c, "note", foorpc_writer_data(w), foorpc_writer_len(w)));
    }
    OK(foorpc_client_notify(c, "nobody_listens", NULL, 0));
    OK(foorpc_client_call(c, "add", (const uint8_t *)"\x92\x01\x01", 3, 0, NULL)); /* a barrier */
    pthread_mutex_lock(&note_lock);
    CHECK(note_count == 10 && note_sum == 55);
    CHECK(note_peer_id != 0);
    pthread_mutex_unlock(&note_lock);

    /* close: later calls fail; a pending async call completes with CLOSED. */
    struct waiter wt2;
    waiter_init(&wt2, c);
    two_ints(w, 1, 400);
    OK(foorpc_client_call_async(c, "later", foorpc_writer_data(w), foorpc_writer_len(w), 0,
                                on_done, &wt2));
    foorpc_client_close(c);
    CHECK(wait_calls(&wt2, 1, 5000) == 1);
    CHECK(wt2.last_rc == FOORPC_RESULT_CLOSED);
    CHECK(!foorpc_client_is_connected(c));
    CHECK(foorpc_client_call(c, "add", NULL, 0, 0, NULL) == FOORPC_RESULT_CLOSED);
    CHECK(foorpc_client_call_async(c, "add", NULL, 0, 0, on_done, &wt2) != FOORPC_RESULT_OK);
    foorpc_client_close(c); /* twice is fine */
    foorpc_client_free(c);
    sleep_ms(20);
    CHECK(wt2.calls == 1);
    waiter_destroy(&wt2);

    /* Freeing a client with a call in flight: its callback runs (CLOSED). */
    struct waiter wt3;
    OK(foorpc_client_connect(addr, 0, &c));
    waiter_init(&wt3, c);
    two_ints(w, 1, 400);
    OK(foorpc_client_call_async(c, "later", foorpc_writer_data(w), foorpc_writer_len(w), 0,
                                on_done, &wt3));
    foorpc_client_free(c);
    CHECK(wait_calls(&wt3, 1, 5000) == 1 && wt3.last_rc == FOORPC_RESULT_CLOSED);
    waiter_destroy(&wt3);

    foorpc_writer_free(w);
    OK(foorpc_server_stop(s));
    OK(foorpc_server_stop(s)); /* twice is fine */
    OK(foorpc_server_run(s));  /* already stopped: returns at once */
    CHECK(foorpc_client_connect(addr, 1000, &c) != FOORPC_RESULT_OK);
    foorpc_server_free(s);
}

/* ------------------------------------------------------------------------ */

static void *run_server(void *s) {
    return (void *)(intptr_t)foorpc_server_run(s);
}

static void test_fallback(void) {
    foorpc_server *s = NULL;
    foorpc_client *c = NULL;
    foorpc_buf *res = NULL;
    char addr[256];
    OK(foorpc_server_new(&s));
    OK(foorpc_server_register_fallback(s, h_fallback, NULL, FOORPC_HANDLER_INLINE));
    OK(foorpc_server_bind(s, "tcp://127.0.0.1:0"));
    OK(foorpc_server_local_address(s, addr, sizeof addr, NULL));
    OK(foorpc_server_start(s));
    OK(foorpc_client_connect(addr, 2000, &c));
    OK(foorpc_client_call(c, "any.method", NULL, 0, 0, &res));
    CHECK(foorpc_buf_len(res) == 11 && memcmp(foorpc_buf_data(res), "\xaa" "any.method", 11) == 0);
    foorpc_buf_free(res);
    foorpc_client_free(c);
    foorpc_server_free(s);
}

/* ------------------------------------------------------------------------ */
/* Connections as handlers see them (foorpc_peer), in both directions:
 * connection ids, the server calling the client back (blocking from a pool
 * handler, asynchronously from an inline one), notifications both ways,
 * notification fallbacks, client-side handlers, closing one connection. */

static struct {
    pthread_mutex_t lock;
    /* server side */
    int any_notes;             /* seen by the server's notification fallback */
    char any_method[32];
    uint64_t any_peer_id;
    foorpc_peer *kept;         /* a clone of the first connection that notified */
    int responder_peer_null_rc;
    /* client side */
    int pings;
    int64_t ping_sum;
    uint64_t ping_peer_id;
    int client_any_notes;
    char client_any_method[32];
} ps = {PTHREAD_MUTEX_INITIALIZER, 0, {0}, 0, NULL, -1, 0, 0, 0, 0, {0}};

static void answer_i64(foorpc_responder *resp, int64_t v) {
    foorpc_writer *w = NULL;
    foorpc_writer_new(&w);
    foorpc_writer_int(w, v);
    foorpc_responder_ok(resp, foorpc_writer_data(w), foorpc_writer_len(w));
    foorpc_writer_free(w);
}

static void answer_u64(foorpc_responder *resp, uint64_t v) {
    foorpc_writer *w = NULL;
    foorpc_writer_new(&w);
    foorpc_writer_uint(w, v);
    foorpc_responder_ok(resp, foorpc_writer_data(w), foorpc_writer_len(w));
    foorpc_writer_free(w);
}

static uint64_t buf_uint(const foorpc_buf *buf) {
    foorpc_reader *r = NULL;
    uint64_t v = 0;
    foorpc_reader_new(foorpc_buf_data(buf), foorpc_buf_len(buf), &r);
    foorpc_reader_read_uint(r, &v);
    foorpc_reader_free(r);
    return v;
}

/* Copies a method name into a NUL-terminated buffer. */
static void copy_name(char *dst, size_t cap, const char *m, size_t ml) {
    size_t n = ml < cap - 1 ? ml : cap - 1;
    memcpy(dst, m, n);
    dst[n] = '\0';
}

/* Server, inline: answers the id of the caller's connection. */
static void s_whoami(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                     foorpc_responder *resp) {
    (void)ud, (void)m, (void)ml, (void)params, (void)len;
    foorpc_peer *peer = NULL;
    int null_rc = (int)foorpc_responder_peer(resp, NULL);
    pthread_mutex_lock(&ps.lock);
    ps.responder_peer_null_rc = null_rc;
    pthread_mutex_unlock(&ps.lock);
    if (foorpc_responder_peer(resp, &peer) != FOORPC_RESULT_OK) {
        foorpc_responder_free(resp);
        return;
    }
    answer_u64(resp, foorpc_peer_id(peer));
    foorpc_peer_free(peer);
}

/* Inline handler on either side: a blocking call back is refused there; answers its code. */
static void h_inline_call(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                          foorpc_responder *resp) {
    (void)ud, (void)m, (void)ml, (void)params, (void)len;
    foorpc_peer *peer = NULL;
    foorpc_buf *out = NULL;
    foorpc_result rc;
    foorpc_responder_peer(resp, &peer);
    rc = foorpc_peer_call(peer, "whoami", (const uint8_t *)"\x90", 1, 1000, &out);
    foorpc_buf_free(out);
    foorpc_peer_free(peer);
    answer_i64(resp, (int64_t)rc);
}

/* Server, pool: call_back(method, params) relays the client's answer, an error unchanged. */
static void s_call_back(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                        foorpc_responder *resp) {
    (void)ud, (void)m, (void)ml;
    foorpc_reader *r = NULL;
    foorpc_peer *peer = NULL;
    foorpc_buf *out = NULL;
    uint32_t n = 0;
    const char *name = NULL;
    size_t name_len = 0;
    const uint8_t *inner = NULL;
    size_t inner_len = 0;
    char method[64];
    foorpc_result rc;
    foorpc_reader_new(params, len, &r);
    if (foorpc_reader_read_array(r, &n) || n != 2 || foorpc_reader_read_str(r, &name, &name_len) ||
        foorpc_reader_read_raw(r, &inner, &inner_len)) {
        foorpc_reader_free(r);
        foorpc_responder_error_message(resp, 1, "call_back(method, params)", 25);
        return;
    }
    copy_name(method, sizeof method, name, name_len);
    foorpc_responder_peer(resp, &peer);
    rc = foorpc_peer_call(peer, method, inner, inner_len, 5000, &out);
    if (rc == FOORPC_RESULT_OK)
        foorpc_responder_ok(resp, foorpc_buf_data(out), foorpc_buf_len(out));
    else if (rc == FOORPC_RESULT_REMOTE_ERROR)
        foorpc_responder_error(resp, foorpc_buf_data(out), foorpc_buf_len(out));
    else
        foorpc_responder_error_message(resp, 0, "call failed", 11);
    foorpc_buf_free(out);
    foorpc_peer_free(peer);
    foorpc_reader_free(r);
}

/* The outcome of the asynchronous call back answers the request (userdata: its responder). */
static void on_called_back(void *userdata, foorpc_result rc, const uint8_t *data, size_t len) {
    foorpc_responder *resp = userdata;
    if (rc == FOORPC_RESULT_OK)
        foorpc_responder_ok(resp, data, len);
    else if (rc == FOORPC_RESULT_REMOTE_ERROR)
        foorpc_responder_error(resp, data, len);
    else
        foorpc_responder_error_message(resp, 0, "async call failed", 17);
}

/* Server, inline: mul_back(a, b) asks the client for mul(a, b) without blocking. */
static void s_mul_back(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                       foorpc_responder *resp) {
    (void)ud, (void)m, (void)ml;
    foorpc_peer *peer = NULL;
    foorpc_responder_peer(resp, &peer);
    if (foorpc_peer_call_async(peer, "mul", params, len, 5000, on_called_back, resp) !=
        FOORPC_RESULT_OK)
        foorpc_responder_free(resp);
    foorpc_peer_free(peer); /* the call in flight does not need the handle */
}

/* Server, inline: sends the caller ping(7) and other(), then answers nil. */
static void s_notify_back(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                          foorpc_responder *resp) {
    (void)ud, (void)m, (void)ml, (void)params, (void)len;
    foorpc_peer *peer = NULL;
    foorpc_responder_peer(resp, &peer);
    foorpc_peer_notify(peer, "ping", (const uint8_t *)"\x91\x07", 2);
    foorpc_peer_notify(peer, "other", NULL, 0);
    foorpc_peer_free(peer);
    foorpc_responder_ok(resp, NULL, 0);
}

/* Server, inline: closes the caller's connection without answering. */
static void s_disconnect(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                         foorpc_responder *resp) {
    (void)ud, (void)m, (void)ml, (void)params, (void)len;
    foorpc_peer *peer = NULL;
    foorpc_responder_peer(resp, &peer);
    foorpc_peer_close(peer);
    foorpc_peer_close(peer); /* twice is fine */
    if (!foorpc_peer_is_connected(peer)) foorpc_responder_free(resp); /* its reply goes nowhere */
    else foorpc_responder_error_message(resp, 0, "still connected", 15);
    foorpc_peer_free(peer);
}

/* Server notification fallback: records, and keeps the first connection. */
static void s_any_note(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                       const foorpc_peer *peer) {
    (void)ud, (void)params, (void)len;
    pthread_mutex_lock(&ps.lock);
    ps.any_notes++;
    copy_name(ps.any_method, sizeof ps.any_method, m, ml);
    ps.any_peer_id = foorpc_peer_id(peer);
    if (ps.kept == NULL) foorpc_peer_clone(peer, &ps.kept);
    pthread_mutex_unlock(&ps.lock);
}

/* Client: mul(a, b); an error [1, "bad args"] otherwise. Inline and pool. */
static void c_mul(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                  foorpc_responder *resp) {
    (void)ud, (void)m, (void)ml;
    foorpc_reader *r = NULL;
    uint32_t n = 0;
    int64_t a = 0, b = 0;
    foorpc_reader_new(params, len, &r);
    if (foorpc_reader_read_array(r, &n) || n != 2 || foorpc_reader_read_int(r, &a) ||
        foorpc_reader_read_int(r, &b))
        foorpc_responder_error_message(resp, 1, "bad args", 8);
    else
        answer_i64(resp, a * b);
    foorpc_reader_free(r);
}

static void c_ping(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                   const foorpc_peer *peer) {
    (void)ud, (void)m, (void)ml;
    foorpc_reader *r = NULL;
    uint32_t n = 0;
    int64_t v = 0;
    foorpc_reader_new(params, len, &r);
    foorpc_reader_read_array(r, &n);
    foorpc_reader_read_int(r, &v);
    foorpc_reader_free(r);
    pthread_mutex_lock(&ps.lock);
    ps.pings++;
    ps.ping_sum += v;
    ps.ping_peer_id = foorpc_peer_id(peer);
    pthread_mutex_unlock(&ps.lock);
}

static void c_any_note(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                       const foorpc_peer *peer) {
    (void)ud, (void)params, (void)len, (void)peer;
    pthread_mutex_lock(&ps.lock);
    ps.client_any_notes++;
    copy_name(ps.client_any_method, sizeof ps.client_any_method, m, ml);
    pthread_mutex_unlock(&ps.lock);
}

static uint64_t whoami(const foorpc_client *c) {
    foorpc_buf *res = NULL;
    uint64_t id = 0;
    if (foorpc_client_call(c, "whoami", NULL, 0, 0, &res) == FOORPC_RESULT_OK) id = buf_uint(res);
    foorpc_buf_free(res);
    return id;
}

/* call_back(method, params) through client c, params given as MessagePack hex; returns the
 * code, with the result or error object in *out. */
static foorpc_result call_back(const foorpc_client *c, const char *method, const char *params_hex,
                               foorpc_buf **out) {
    foorpc_writer *w = NULL;
    uint8_t raw[64];
    size_t n = strlen(params_hex) / 2;
    foorpc_result rc;
    for (size_t i = 0; i < n && i < sizeof raw; i++) {
        unsigned v;
        sscanf(params_hex + 2 * i, "%2x", &v);
        raw[i] = (uint8_t)v;
    }
    foorpc_writer_new(&w);
    foorpc_writer_array(w, 2);
    foorpc_writer_cstr(w, method);
    foorpc_writer_raw(w, raw, n);
    rc = foorpc_client_call(c, "call_back", foorpc_writer_data(w), foorpc_writer_len(w), 5000, out);
    foorpc_writer_free(w);
    return rc;
}

static int buf_contains(const foorpc_buf *b, const char *needle) {
    size_t n = strlen(needle), len = foorpc_buf_len(b);
    for (size_t i = 0; i + n <= len; i++)
        if (memcmp(foorpc_buf_data(b) + i, needle, n) == 0) return 1;
    return 0;
}

static int buf_is(const foorpc_buf *b, const char *bytes, size_t len) {
    return foorpc_buf_len(b) == len && memcmp(foorpc_buf_data(b), bytes, len) == 0;
}

/* Waits up to 2 s for *counter (under ps.lock) to reach n. */
static int wait_count(const int *counter, int n) {
    for (int i = 0; i < 200; i++) {
        pthread_mutex_lock(&ps.lock);
        int got = *counter;
        pthread_mutex_unlock(&ps.lock);
        if (got >= n) return 1;
        sleep_ms(10);
    }
    return 0;
}

static void test_peers(const char *bind_address) {
    foorpc_server *s = NULL;
    foorpc_client_options *o = NULL;
    foorpc_client *a = NULL, *b = NULL, *plain = NULL;
    foorpc_buf *res = NULL;
    foorpc_peer *p = NULL;
    char addr[256];
    uint64_t id_a, id_b, id_plain;

    note_count = 0, note_sum = 0, note_peer_id = 0;
    OK(foorpc_server_new(&s));
    OK(foorpc_server_register(s, "whoami", s_whoami, NULL, FOORPC_HANDLER_INLINE));
    OK(foorpc_server_register(s, "inline_call", h_inline_call, NULL, FOORPC_HANDLER_INLINE));
    OK(foorpc_server_register(s, "call_back", s_call_back, NULL, FOORPC_HANDLER_POOL));
    OK(foorpc_server_register(s, "mul_back", s_mul_back, NULL, FOORPC_HANDLER_INLINE));
    OK(foorpc_server_register(s, "notify_back", s_notify_back, NULL, FOORPC_HANDLER_INLINE));
    OK(foorpc_server_register(s, "disconnect", s_disconnect, NULL, FOORPC_HANDLER_INLINE));
    OK(foorpc_server_register_notification(s, "note", h_note, NULL, FOORPC_HANDLER_INLINE));
    OK(foorpc_server_register_notification_fallback(s, s_any_note, NULL, FOORPC_HANDLER_INLINE));
    OK(foorpc_server_bind(s, bind_address));
    OK(foorpc_server_local_address(s, addr, sizeof addr, NULL));
    OK(foorpc_server_start(s));
    CHECK(foorpc_server_register_notification_fallback(s, s_any_note, NULL, 0) ==
          FOORPC_RESULT_INVALID_STATE);

    /* Two clients share one options object, freed once they are connected. */
    OK(foorpc_client_options_new(&o));
    OK(foorpc_client_options_register(o, "mul", c_mul, NULL, FOORPC_HANDLER_INLINE));
    OK(foorpc_client_options_register(o, "mul_pool", c_mul, NULL, FOORPC_HANDLER_POOL));
    OK(foorpc_client_options_register(o, "inline_call", h_inline_call, NULL,
                                      FOORPC_HANDLER_INLINE));
    OK(foorpc_client_options_register_fallback(o, h_fallback, NULL, FOORPC_HANDLER_POOL));
    OK(foorpc_client_options_register_notification(o, "ping", c_ping, NULL,
                                                   FOORPC_HANDLER_INLINE));
    OK(foorpc_client_options_register_notification_fallback(o, c_any_note, NULL,
                                                            FOORPC_HANDLER_POOL));
    OK(foorpc_client_connect_with(addr, 2000, o, &a));
    OK(foorpc_client_connect_with(addr, 2000, o, &b));
    foorpc_client_options_free(o);
    OK(foorpc_client_connect_with(addr, 2000, NULL, &plain)); /* NULL: like connect */

    /* Connection ids: stable per connection, distinct between connections. */
    id_a = whoami(a), id_b = whoami(b), id_plain = whoami(plain);
    CHECK(id_a != 0 && id_b != 0 && id_plain != 0);
    CHECK(id_a != id_b && id_a != id_plain && id_b != id_plain);
    CHECK(whoami(a) == id_a);
    CHECK(ps.responder_peer_null_rc == FOORPC_RESULT_NULL_PARAMETER);

    /* Notifications: a named handler first, the fallback for the rest; both see the peer. */
    OK(foorpc_client_notify(a, "note", (const uint8_t *)"\x91\x05", 2));
    OK(foorpc_client_notify(a, "hello", (const uint8_t *)"\x91\x01", 2));
    CHECK(whoami(a) == id_a); /* a barrier: inline handlers run in arrival order */
    pthread_mutex_lock(&note_lock);
    CHECK(note_count == 1 && note_sum == 5 && note_peer_id == id_a);
    pthread_mutex_unlock(&note_lock);
    pthread_mutex_lock(&ps.lock);
    CHECK(ps.any_notes == 1 && strcmp(ps.any_method, "hello") == 0 && ps.any_peer_id == id_a);
    CHECK(ps.kept != NULL && foorpc_peer_id(ps.kept) == id_a);
    pthread_mutex_unlock(&ps.lock);
    OK(foorpc_client_notify(b, "bye", NULL, 0));
    CHECK(whoami(b) == id_b);
    pthread_mutex_lock(&ps.lock);
    CHECK(ps.any_notes == 2 && strcmp(ps.any_method, "bye") == 0 && ps.any_peer_id == id_b);
    pthread_mutex_unlock(&ps.lock);
    CHECK(foorpc_peer_is_connected(ps.kept));
    CHECK(foorpc_peer_clone(ps.kept, NULL) == FOORPC_RESULT_NULL_PARAMETER);
    OK(foorpc_peer_clone(ps.kept, &p));
    CHECK(foorpc_peer_id(p) == id_a);
    foorpc_peer_free(p);
    p = NULL;

    /* The server calls the client back: blocking from a pool handler. */
    CHECK(call_back(a, "mul", "920607", &res) == FOORPC_RESULT_OK && buf_int(res) == 42);
    foorpc_buf_free(res);
    res = NULL;
    CHECK(call_back(b, "mul_pool", "92fd07", &res) == FOORPC_RESULT_OK && buf_int(res) == -21);
    foorpc_buf_free(res);
    res = NULL;
    /* The client's error object is relayed unchanged. */
    CHECK(call_back(a, "mul", "91a178", &res) == FOORPC_RESULT_REMOTE_ERROR &&
          buf_is(res, "\x92\x01\xa8" "bad args", 11));
    foorpc_buf_free(res);
    res = NULL;
    /* The client's request fallback answers the method name. */
    CHECK(call_back(a, "any.thing", "90", &res) == FOORPC_RESULT_OK &&
          buf_is(res, "\xa9" "any.thing", 10));
    foorpc_buf_free(res);
    res = NULL;
    /* A client without handlers answers "unknown method". */
    CHECK(call_back(plain, "mul", "920607", &res) == FOORPC_RESULT_REMOTE_ERROR);
    CHECK(buf_contains(res, "unknown method: mul"));
    foorpc_buf_free(res);
    res = NULL;
    /* Blocking calls from inline handlers are refused, on either side. */
    CHECK(foorpc_client_call(a, "inline_call", NULL, 0, 0, &res) == FOORPC_RESULT_OK &&
          buf_int(res) == FOORPC_RESULT_USAGE);
    foorpc_buf_free(res);
    res = NULL;
    CHECK(call_back(a, "inline_call", "90", &res) == FOORPC_RESULT_OK &&
          buf_int(res) == FOORPC_RESULT_USAGE);
    foorpc_buf_free(res);
    res = NULL;
    /* Asynchronously from an inline handler. */
    CHECK(foorpc_client_call(a, "mul_back", (const uint8_t *)"\x92\x03\x04", 3, 0, &res) ==
              FOORPC_RESULT_OK &&
          buf_int(res) == 12);
    foorpc_buf_free(res);
    res = NULL;
    CHECK(foorpc_client_call(a, "mul_back", (const uint8_t *)"\x90", 1, 0, &res) ==
              FOORPC_RESULT_REMOTE_ERROR &&
          buf_is(res, "\x92\x01\xa8" "bad args", 11));
    foorpc_buf_free(res);
    res = NULL;

    /* The server notifies the client: a named handler and the client's fallback. */
    OK(foorpc_client_call(a, "notify_back", NULL, 0, 0, NULL));
    CHECK(wait_count(&ps.pings, 1) && wait_count(&ps.client_any_notes, 1));
    pthread_mutex_lock(&ps.lock);
    CHECK(ps.pings == 1 && ps.ping_sum == 7 && ps.ping_peer_id != 0);
    CHECK(ps.client_any_notes == 1 && strcmp(ps.client_any_method, "other") == 0);
    pthread_mutex_unlock(&ps.lock);

    /* A handler closes its connection without answering; the others go on. */
    CHECK(foorpc_client_call(b, "disconnect", NULL, 0, 5000, &res) ==
              FOORPC_RESULT_CONNECTION_LOST &&
          res == NULL);
    CHECK(!foorpc_client_is_connected(b));
    CHECK(whoami(a) == id_a && whoami(plain) == id_plain);

    /* A kept handle closes its connection from outside any handler. */
    foorpc_peer_close(ps.kept);
    CHECK(!foorpc_peer_is_connected(ps.kept));
    CHECK(foorpc_peer_notify(ps.kept, "late", NULL, 0) != FOORPC_RESULT_OK);
    CHECK(foorpc_peer_call(ps.kept, "mul", NULL, 0, 500, &res) != FOORPC_RESULT_OK && res == NULL);
    CHECK(foorpc_peer_call_async(ps.kept, "mul", NULL, 0, 500, on_called_back, NULL) !=
          FOORPC_RESULT_OK);
    CHECK(foorpc_client_call(a, "whoami", NULL, 0, 2000, NULL) != FOORPC_RESULT_OK);
    CHECK(whoami(plain) == id_plain);

    foorpc_client_free(a);
    foorpc_client_free(b);
    foorpc_client_free(plain);
    foorpc_server_free(s);
    CHECK(foorpc_peer_id(ps.kept) == id_a); /* still a valid handle after the server went */
    foorpc_peer_free(ps.kept);
    ps.kept = NULL;
    ps.any_notes = ps.pings = ps.client_any_notes = 0;
    ps.ping_sum = 0;
}

static void test_run_and_stop(void) {
    /* Stop from another thread while run blocks. */
    foorpc_server *s = make_server("tcp://127.0.0.1:0");
    char addr[256];
    pthread_t t;
    void *rc = NULL;
    foorpc_client *c = NULL;
    OK(foorpc_server_local_address(s, addr, sizeof addr, NULL));
    pthread_create(&t, NULL, run_server, s);
    OK(foorpc_client_connect(addr, 2000, &c));
    OK(foorpc_client_call(c, "add", (const uint8_t *)"\x92\x01\x01", 3, 0, NULL));
    OK(foorpc_server_stop(s));
    pthread_join(t, &rc);
    CHECK((intptr_t)rc == FOORPC_RESULT_OK);
    CHECK(foorpc_client_call(c, "add", (const uint8_t *)"\x92\x01\x01", 3, 500, NULL) !=
          FOORPC_RESULT_OK);
    foorpc_client_free(c);
    foorpc_server_free(s);

    /* Stop from an inline handler. */
    s = make_server("tcp://127.0.0.1:0");
    OK(foorpc_server_local_address(s, addr, sizeof addr, NULL));
    pthread_create(&t, NULL, run_server, s);
    OK(foorpc_client_connect(addr, 2000, &c));
    OK(foorpc_client_call(c, "stop", NULL, 0, 0, NULL));
    pthread_join(t, &rc);
    CHECK((intptr_t)rc == FOORPC_RESULT_OK);
    foorpc_client_free(c);
    foorpc_server_free(s);

    /* Stop before start: run returns at once, start is refused. */
    s = make_server("tcp://127.0.0.1:0");
    OK(foorpc_server_stop(s));
    OK(foorpc_server_run(s));
    CHECK(foorpc_server_start(s) == FOORPC_RESULT_INVALID_STATE);
    foorpc_server_free(s);

    /* Free without stop (a running server is stopped by free). */
    s = make_server("tcp://127.0.0.1:0");
    OK(foorpc_server_start(s));
    foorpc_server_free(s);
    passed++;
}

/* Inline: answers an array of (param0) nils. */
static void h_nils(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                   foorpc_responder *resp) {
    (void)ud, (void)m, (void)ml;
    foorpc_reader *r = NULL;
    foorpc_writer *w = NULL;
    uint32_t n = 0;
    int64_t count = 0;
    foorpc_reader_new(params, len, &r);
    foorpc_reader_read_array(r, &n);
    foorpc_reader_read_int(r, &count);
    foorpc_reader_free(r);
    foorpc_writer_new(&w);
    foorpc_writer_array(w, (uint32_t)count);
    for (int64_t i = 0; i < count; i++) foorpc_writer_nil(w);
    foorpc_responder_ok(resp, foorpc_writer_data(w), foorpc_writer_len(w));
    foorpc_writer_free(w);
}

static void test_limits(void) {
    struct waiter wt;
    foorpc_server *s = NULL;
    foorpc_client_options *o = NULL;
    foorpc_client *c = NULL;
    foorpc_writer *w = NULL;
    char addr[128];
    uint8_t big[300] = {0};

    CHECK(foorpc_server_set_limit(NULL, FOORPC_LIMIT_MAX_DEPTH, 8) ==
          FOORPC_RESULT_NULL_PARAMETER);
    OK(foorpc_server_new(&s));
    CHECK(foorpc_server_set_limit(s, 99, 8) == FOORPC_RESULT_INVALID_ARGUMENT);
    CHECK(foorpc_server_set_limit(s, FOORPC_LIMIT_MAX_DEPTH, 0) == FOORPC_RESULT_INVALID_ARGUMENT);
    OK(foorpc_server_set_limit(s, FOORPC_LIMIT_MAX_MESSAGE_SIZE, 256));
    OK(foorpc_server_register(s, "add", h_add, NULL, FOORPC_HANDLER_INLINE));
    OK(foorpc_server_register(s, "nils", h_nils, NULL, FOORPC_HANDLER_INLINE));
    OK(foorpc_server_bind(s, "tcp://127.0.0.1:0"));
    OK(foorpc_server_start(s));
    CHECK(foorpc_server_set_limit(s, FOORPC_LIMIT_MAX_MESSAGE_SIZE, 100) ==
          FOORPC_RESULT_INVALID_STATE);
    OK(foorpc_server_local_address(s, addr, sizeof addr, NULL));

    /* A request over the server's 256-byte limit closes that connection. */
    OK(foorpc_client_connect(addr, 2000, &c));
    OK(foorpc_client_call(c, "add", (const uint8_t *)"\x92\x01\x02", 3, 0, NULL));
    OK(foorpc_writer_new(&w));
    foorpc_writer_array(w, 2);
    foorpc_writer_bin(w, big, sizeof big);
    foorpc_writer_int(w, 1);
    CHECK(foorpc_result_is_connection_error(
        foorpc_client_call(c, "add", foorpc_writer_data(w), foorpc_writer_len(w), 2000, NULL)));
    CHECK(!foorpc_client_is_connected(c));
    foorpc_client_free(c);
    /* Other connections go on. */
    OK(foorpc_client_connect(addr, 2000, &c));
    OK(foorpc_client_call(c, "add", (const uint8_t *)"\x92\x01\x02", 3, 0, NULL));
    foorpc_client_free(c);

    /* A client's limits apply to what the server sends it: 10 nils cost
       4 x 40 + 10 x 40 bytes decoded, 200 nils 8,160, over 4,096. */
    OK(foorpc_client_options_new(&o));
    CHECK(foorpc_client_options_set_limit(o, 0, 1) == FOORPC_RESULT_INVALID_ARGUMENT);
    CHECK(foorpc_client_options_set_limit(o, FOORPC_LIMIT_MAX_DEPTH, 0) ==
          FOORPC_RESULT_INVALID_ARGUMENT);
    CHECK(foorpc_client_options_set_limit(NULL, FOORPC_LIMIT_MAX_DEPTH, 8) ==
          FOORPC_RESULT_NULL_PARAMETER);
    OK(foorpc_client_options_set_limit(o, FOORPC_LIMIT_MAX_MESSAGE_SIZE, UINT64_MAX));
    OK(foorpc_client_options_set_limit(o, FOORPC_LIMIT_MAX_DECODED_SIZE, 4096));
    OK(foorpc_client_connect_with(addr, 2000, o, &c));
    foorpc_client_options_free(o);
    OK(foorpc_client_call(c, "nils", (const uint8_t *)"\x91\x0a", 2, 0, NULL));
    /* Over the client's own limit: FOORPC_RESULT_LIMIT_EXCEEDED (the server
       did nothing wrong), a connection error: the connection is closed. */
    CHECK(foorpc_client_call(c, "nils", (const uint8_t *)"\x91\xcc\xc8", 3, 2000, NULL) ==
          FOORPC_RESULT_LIMIT_EXCEEDED);
    CHECK(last_error_contains("decoded"));
    CHECK(!foorpc_client_is_connected(c));
    foorpc_client_free(c);

    /* The same for a reply over the client's message-size limit (200 nils:
       203 bytes), and for a call waiting asynchronously. */
    OK(foorpc_client_options_new(&o));
    OK(foorpc_client_options_set_limit(o, FOORPC_LIMIT_MAX_MESSAGE_SIZE, 100));
    OK(foorpc_client_connect_with(addr, 2000, o, &c));
    foorpc_client_options_free(o);
    OK(foorpc_client_call(c, "nils", (const uint8_t *)"\x91\x0a", 2, 0, NULL));
    waiter_init(&wt, c);
    OK(foorpc_client_call_async(c, "nils", (const uint8_t *)"\x91\xcc\xc8", 3, 2000, on_done,
                                &wt));
    CHECK(wait_calls(&wt, 1, 5000) == 1 && wt.last_rc == FOORPC_RESULT_LIMIT_EXCEEDED &&
          wt.other_errors == 1);
    CHECK(!foorpc_client_is_connected(c));
    foorpc_client_free(c);
    waiter_destroy(&wt);
    foorpc_writer_free(w);
    OK(foorpc_server_stop(s));
    foorpc_server_free(s);
    passed++;
}

/* Server, inline: answers nil. */
static void s_nil(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                  foorpc_responder *resp) {
    (void)ud, (void)m, (void)ml, (void)params, (void)len;
    foorpc_responder_ok(resp, NULL, 0);
}

/* Server, inline: notifies the caller with params nested 150 deep (the
   server's raised depth limit allows them) and answers the notify's code. */
static void s_notify_deep(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                          foorpc_responder *resp) {
    (void)ud, (void)m, (void)ml, (void)params, (void)len;
    uint8_t deep[151];
    foorpc_peer *peer = NULL;
    memset(deep, 0x91, 150);
    deep[150] = 0x01;
    foorpc_responder_peer(resp, &peer);
    answer_i64(resp, (int64_t)foorpc_peer_notify(peer, "deep", deep, sizeof deep));
    foorpc_peer_free(peer);
}

/* Call params are checked against the connection's own limits (as set with
   foorpc_client_options_set_limit / foorpc_server_set_limit), not the
   defaults, and params over them are FOORPC_RESULT_INVALID_MSGPACK. */
static void test_params_limits(void) {
    foorpc_server *s = NULL;
    foorpc_client_options *o = NULL;
    foorpc_client *c = NULL;
    foorpc_buf *res = NULL;
    struct waiter wt;
    char addr[128];
    uint8_t deep[151]; /* [[...[1]...]]: 150 arrays, 151 levels in a request */
    memset(deep, 0x91, 150);
    deep[150] = 0x01;

    OK(foorpc_server_new(&s));
    OK(foorpc_server_set_limit(s, FOORPC_LIMIT_MAX_DEPTH, 200));
    OK(foorpc_server_register(s, "ok", s_nil, NULL, FOORPC_HANDLER_INLINE));
    OK(foorpc_server_register(s, "notify_deep", s_notify_deep, NULL, FOORPC_HANDLER_INLINE));
    OK(foorpc_server_bind(s, "tcp://127.0.0.1:0"));
    OK(foorpc_server_start(s));
    OK(foorpc_server_local_address(s, addr, sizeof addr, NULL));

    /* Default limits (128 deep): refused before sending. */
    OK(foorpc_client_connect(addr, 2000, &c));
    CHECK(foorpc_client_call(c, "ok", deep, sizeof deep, 2000, NULL) ==
          FOORPC_RESULT_INVALID_MSGPACK);
    CHECK(foorpc_client_is_connected(c));
    foorpc_client_free(c);

    /* A raised limit (200 deep) lets deeper params through, both ways: the
       server's peer checks with the server's limits. */
    OK(foorpc_client_options_new(&o));
    OK(foorpc_client_options_set_limit(o, FOORPC_LIMIT_MAX_DEPTH, 200));
    OK(foorpc_client_connect_with(addr, 2000, o, &c));
    OK(foorpc_client_call(c, "ok", deep, sizeof deep, 2000, NULL));
    OK(foorpc_client_call(c, "notify_deep", NULL, 0, 2000, &res));
    CHECK(res != NULL && buf_int(res) == FOORPC_RESULT_OK);
    foorpc_buf_free(res);
    res = NULL;
    foorpc_client_free(c);

    /* A lowered limit (4 deep: the request array, the params array and two
       more) refuses deeper params with FOORPC_RESULT_INVALID_MSGPACK (not
       FOORPC_RESULT_USAGE); nothing is sent and the connection stays open. */
    OK(foorpc_client_options_set_limit(o, FOORPC_LIMIT_MAX_DEPTH, 4));
    OK(foorpc_client_connect_with(addr, 2000, o, &c));
    foorpc_client_options_free(o);
    waiter_init(&wt, c);
    OK(foorpc_client_call(c, "ok", (const uint8_t *)"\x91\x91\x91\x01", 4, 2000, NULL));
    CHECK(foorpc_client_call(c, "ok", (const uint8_t *)"\x91\x91\x91\x91\x01", 5, 2000, NULL) ==
          FOORPC_RESULT_INVALID_MSGPACK);
    CHECK(last_error_contains("deeper than the 4-level limit"));
    CHECK(foorpc_client_call_async(c, "ok", (const uint8_t *)"\x91\x91\x91\x91\x01", 5, 2000,
                                   on_done, &wt) == FOORPC_RESULT_INVALID_MSGPACK);
    CHECK(foorpc_client_notify(c, "ok", (const uint8_t *)"\x91\x91\x91\x91\x01", 5) ==
          FOORPC_RESULT_INVALID_MSGPACK);
    CHECK(foorpc_client_is_connected(c));
    OK(foorpc_client_call(c, "ok", NULL, 0, 2000, NULL));
    foorpc_client_free(c);
    CHECK(wt.calls == 0);
    waiter_destroy(&wt);
    OK(foorpc_server_stop(s));
    foorpc_server_free(s);
    passed++;
}

/* ------------------------------------------------------------------------ */
/* FOORPC_HANDLER_ORDERED: one connection's ORDERED messages (notifications
 * and requests) are handled one at a time in arrival order, on the pool; a
 * handler that blocks holds up only its own connection's later ORDERED
 * messages, and its POOL ones (which start once the ORDERED ones before
 * them have run): not other connections, nor that connection's inline
 * handlers, nor the I/O thread. Ordered handlers record the value they get;
 * the one given 0 waits for the test to open the gate (for 20 s at most). */

#define ORD_MAX 256
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cv;
    int open;          /* the gate: 0 blocks the handler given 0 */
    int blocked;       /* handlers given 0 that reached the gate */
    int n;             /* values recorded, in the order recorded */
    int64_t log[ORD_MAX];
} ord = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, {0}};

static void ord_reset(void) {
    pthread_mutex_lock(&ord.lock);
    ord.open = 0, ord.blocked = 0, ord.n = 0;
    pthread_mutex_unlock(&ord.lock);
}

/* Waits (up to timeout_ms) until *field reaches n; returns whether it did. */
static int ord_wait(const int *field, int n, long timeout_ms) {
    struct timespec until;
    deadline_in(&until, timeout_ms);
    pthread_mutex_lock(&ord.lock);
    while (*field < n && pthread_cond_timedwait(&ord.cv, &ord.lock, &until) == 0) {
    }
    int reached = *field >= n;
    pthread_mutex_unlock(&ord.lock);
    return reached;
}

static void ord_open(void) {
    pthread_mutex_lock(&ord.lock);
    ord.open = 1;
    pthread_cond_broadcast(&ord.cv);
    pthread_mutex_unlock(&ord.lock);
}

/* Records v; given 0, first waits (20 s at most) for the gate to open. */
static void ord_record(int64_t v) {
    struct timespec until;
    pthread_mutex_lock(&ord.lock);
    if (v == 0) {
        ord.blocked++;
        pthread_cond_broadcast(&ord.cv);
        deadline_in(&until, 20000);
        while (!ord.open && pthread_cond_timedwait(&ord.cv, &ord.lock, &until) == 0) {
        }
    }
    if (ord.n < ORD_MAX) ord.log[ord.n++] = v;
    pthread_cond_broadcast(&ord.cv);
    pthread_mutex_unlock(&ord.lock);
}

/* The recorded values within [lo, hi], in the order recorded, into out; returns how many. */
static int ord_values(int64_t lo, int64_t hi, int64_t *out, int cap) {
    int k = 0;
    pthread_mutex_lock(&ord.lock);
    for (int i = 0; i < ord.n; i++)
        if (ord.log[i] >= lo && ord.log[i] <= hi && k < cap) out[k++] = ord.log[i];
    pthread_mutex_unlock(&ord.lock);
    return k;
}

static int64_t param0(const uint8_t *params, size_t len) {
    foorpc_reader *r = NULL;
    uint32_t n = 0;
    int64_t v = -1;
    foorpc_reader_new(params, len, &r);
    foorpc_reader_read_array(r, &n);
    foorpc_reader_read_int(r, &v);
    foorpc_reader_free(r);
    return v;
}

/* Ordered notification (server and client side): records param0. */
static void o_note(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                   const foorpc_peer *peer) {
    (void)ud, (void)m, (void)ml, (void)peer;
    ord_record(param0(params, len));
}

/* Ordered request: records param0 and answers it. */
static void o_record(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                     foorpc_responder *resp) {
    (void)ud, (void)m, (void)ml;
    int64_t v = param0(params, len);
    ord_record(v);
    answer_i64(resp, v);
}

/* Server, inline: notes_back(n) sends the caller onote(0) .. onote(n - 1), then answers nil. */
static void s_notes_back(void *ud, const char *m, size_t ml, const uint8_t *params, size_t len,
                         foorpc_responder *resp) {
    (void)ud, (void)m, (void)ml;
    foorpc_peer *peer = NULL;
    foorpc_writer *w = NULL;
    int64_t n = param0(params, len);
    foorpc_responder_peer(resp, &peer);
    foorpc_writer_new(&w);
    for (int64_t i = 0; i < n; i++) {
        foorpc_writer_clear(w);
        foorpc_writer_array(w, 1);
        foorpc_writer_int(w, i);
        foorpc_peer_notify(peer, "onote", foorpc_writer_data(w), foorpc_writer_len(w));
    }
    foorpc_writer_free(w);
    foorpc_peer_free(peer);
    foorpc_responder_ok(resp, NULL, 0);
}

static foorpc_result send_one(const foorpc_client *c, const char *method, int64_t v,
                              struct waiter *wt) {
    foorpc_writer *w = NULL;
    foorpc_result rc;
    foorpc_writer_new(&w);
    foorpc_writer_array(w, 1);
    foorpc_writer_int(w, v);
    rc = wt ? foorpc_client_call_async(c, method, foorpc_writer_data(w), foorpc_writer_len(w),
                                       30000, on_done, wt)
            : foorpc_client_notify(c, method, foorpc_writer_data(w), foorpc_writer_len(w));
    foorpc_writer_free(w);
    return rc;
}

/* add(1, 2) through `method`, answered within 5 s. */
static int adds_up(const foorpc_client *c, const char *method) {
    foorpc_buf *res = NULL;
    int ok = foorpc_client_call(c, method, (const uint8_t *)"\x92\x01\x02", 3, 5000, &res) ==
                 FOORPC_RESULT_OK &&
             buf_int(res) == 3;
    foorpc_buf_free(res);
    return ok;
}

/* Whether the k values in got are want[0] .. want[k - 1], with k == n. */
static int values_are(const int64_t *got, int k, const int64_t *want, int n) {
    return k == n && memcmp(got, want, (size_t)n * sizeof *want) == 0;
}

static void test_ordered(const char *bind_address) {
    foorpc_server *s = NULL;
    foorpc_client *a = NULL, *b = NULL, *c = NULL;
    foorpc_client_options *o = NULL;
    foorpc_buf *res = NULL;
    struct waiter wt;
    char addr[256];
    int64_t got[ORD_MAX], want[ORD_MAX];
    int k, n;

    ord_reset();
    OK(foorpc_server_new(&s));
    OK(foorpc_server_register_notification(s, "onote", o_note, NULL, FOORPC_HANDLER_ORDERED));
    OK(foorpc_server_register(s, "orecord", o_record, NULL, FOORPC_HANDLER_ORDERED));
    OK(foorpc_server_register(s, "add", h_add, NULL, FOORPC_HANDLER_POOL));
    OK(foorpc_server_register(s, "add_inline", h_add, NULL, FOORPC_HANDLER_INLINE));
    OK(foorpc_server_register(s, "notes_back", s_notes_back, NULL, FOORPC_HANDLER_INLINE));
    OK(foorpc_server_bind(s, bind_address));
    OK(foorpc_server_local_address(s, addr, sizeof addr, NULL));
    OK(foorpc_server_start(s));
    OK(foorpc_client_connect(addr, 0, &a));
    OK(foorpc_client_connect(addr, 0, &b));
    if (!a || !b) goto out;
    waiter_init(&wt, a);

    /* A: onote(0) (blocks), .. onote(24), orecord(100), onote(25) .. onote(49), orecord(101). */
    for (int i = 0; i < 50; i++) {
        OK(send_one(a, "onote", i, NULL));
        if (i == 24) OK(send_one(a, "orecord", 100, &wt));
    }
    OK(send_one(a, "orecord", 101, &wt));
    /* A POOL call after them starts only once they have run. */
    OK(foorpc_client_call_async(a, "add", (const uint8_t *)"\x92\x01\x02", 3, 30000, on_done, &wt));
    CHECK(ord_wait(&ord.blocked, 1, 10000));

    /* Meanwhile B's ordered messages are handled, in order, B's pool calls and A's inline ones. */
    for (int i = 1000; i < 1010; i++) OK(send_one(b, "onote", i, NULL));
    CHECK(foorpc_client_call(b, "orecord", (const uint8_t *)"\x91\xcd\x07\xd0", 4, 5000, &res) ==
              FOORPC_RESULT_OK &&
          buf_int(res) == 2000);
    foorpc_buf_free(res);
    CHECK(adds_up(a, "add_inline"));
    CHECK(adds_up(b, "add"));
    n = 0;
    for (int i = 1000; i < 1010; i++) want[n++] = i;
    want[n++] = 2000;
    k = ord_values(0, ORD_MAX * 100, got, ORD_MAX); /* everything recorded so far: B's only */
    CHECK(values_are(got, k, want, n));
    CHECK(wait_calls(&wt, 0, 0) == 0); /* A's ordered and pool requests wait behind onote(0) */

    /* Released: A's messages were handled in arrival order. */
    ord_open();
    CHECK(wait_calls(&wt, 3, 20000) == 3);
    CHECK(wt.ok_sum == 204 && wt.remote_errors == 0 && wt.other_errors == 0);
    n = 0;
    for (int i = 0; i < 50; i++) {
        want[n++] = i;
        if (i == 24) want[n++] = 100;
    }
    want[n++] = 101;
    k = ord_values(0, 101, got, ORD_MAX);
    CHECK(values_are(got, k, want, n));
    waiter_destroy(&wt);

    /* Client side: ordered notifications from the server, the first one blocking,
     * while the client's calls are answered. */
    ord_reset();
    OK(foorpc_client_options_new(&o));
    OK(foorpc_client_options_register_notification(o, "onote", o_note, NULL,
                                                   FOORPC_HANDLER_ORDERED));
    OK(foorpc_client_connect_with(addr, 0, o, &c));
    foorpc_client_options_free(o);
    if (!c) goto out;
    OK(foorpc_client_call(c, "notes_back", (const uint8_t *)"\x91\x14", 2, 5000, NULL));
    CHECK(ord_wait(&ord.blocked, 1, 10000));
    CHECK(adds_up(c, "add"));
    ord_open();
    CHECK(ord_wait(&ord.n, 20, 20000));
    for (n = 0; n < 20; n++) want[n] = n;
    k = ord_values(0, 19, got, ORD_MAX);
    CHECK(values_are(got, k, want, n));

out:
    ord_open(); /* never leaves a handler waiting */
    foorpc_client_free(c);
    foorpc_client_free(b);
    foorpc_client_free(a);
    OK(foorpc_server_stop(s));
    foorpc_server_free(s);
}

int main(void) {
    char unix_addr[128];
    test_version();
    test_results();
    test_free_null_and_null_args();
    test_writer_encodings();
    test_round_trip();
    test_calls("tcp://127.0.0.1:0");
    snprintf(unix_addr, sizeof unix_addr, "unix:///tmp/foorpc-test-api-%ld.sock", (long)getpid());
    test_calls(unix_addr);
    test_fallback();
    test_peers("tcp://127.0.0.1:0");
    snprintf(unix_addr, sizeof unix_addr, "unix:///tmp/foorpc-test-peers-%ld.sock", (long)getpid());
    test_peers(unix_addr);
    test_run_and_stop();
    test_limits();
    test_params_limits();
    alarm(120); /* the default action ends the run if an ordered handler deadlocks */
    test_ordered("tcp://127.0.0.1:0");
    snprintf(unix_addr, sizeof unix_addr, "unix:///tmp/foorpc-test-ordered-%ld.sock", (long)getpid());
    test_ordered(unix_addr);
    alarm(0);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
