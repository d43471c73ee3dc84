/*
 * conformance_client: foorpc's C conformance client, written only against
 * include/foorpc.h. Runs the named cases of tests/interop/README.md against
 * any conformance server, like the Rust conformance client does.
 *
 *   conformance_client (--port N | --unix PATH) [--cases a,b,...]
 *
 * Prints `PASS name` or `FAIL name: why` per case, then `N passed, N failed`;
 * exits 0 only when every case passed (2 on a usage error or unknown case).
 * Each case runs on a fresh connection. For server_to_client_call the client
 * serves mul(a, b) through foorpc_client_options.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#define _POSIX_C_SOURCE 200809L
#include <foorpc.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WHY_LEN 1024

/* A case returns 0 on success, or fills `why` and returns -1. */
typedef int (*case_fn)(const char *address, char *why);

static int failf(char *why, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, WHY_LEN, fmt, ap);
    va_end(ap);
    return -1;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* The code's description plus the calling thread's detailed last error. */
static const char *describe(foorpc_result rc, char *buf, size_t len) {
    char detail[512];
    detail[0] = 0;
    foorpc_last_error_message(detail, sizeof detail, NULL);
    snprintf(buf, len, "%s (%u)%s%s", foorpc_result_message(rc), (unsigned)rc,
             detail[0] ? ": " : "", detail);
    return buf;
}

/* Renders up to 24 bytes as hex (for failure messages). */
static const char *hex(const uint8_t *data, size_t len, char *buf, size_t buf_len) {
    size_t n = len < 24 ? len : 24, off = 0;
    buf[0] = 0;
    for (size_t i = 0; i < n && off + 3 < buf_len; i++)
        off += (size_t)snprintf(buf + off, buf_len - off, "%02x", data[i]);
    if (n < len && off + 4 < buf_len) snprintf(buf + off, buf_len - off, "...");
    return buf;
}

/* Renders an error object: `[code, "message"]` when it has foorpc's shape, else its hex. */
static const char *render_error(const uint8_t *data, size_t len, char *buf, size_t buf_len) {
    foorpc_reader *r = NULL;
    uint32_t n = 0;
    int64_t code = 0;
    const char *msg = NULL;
    size_t msg_len = 0;
    if (foorpc_reader_new(data, len, &r) == FOORPC_RESULT_OK &&
        foorpc_reader_read_array(r, &n) == FOORPC_RESULT_OK && n == 2 &&
        foorpc_reader_read_int(r, &code) == FOORPC_RESULT_OK &&
        foorpc_reader_read_str(r, &msg, &msg_len) == FOORPC_RESULT_OK)
        snprintf(buf, buf_len, "[%" PRId64 ", \"%.*s\"]", code, (int)(msg_len > 300 ? 300 : msg_len),
                 msg);
    else
        hex(data, len, buf, buf_len);
    foorpc_reader_free(r);
    return buf;
}

static int connect_to(const char *address, foorpc_client **c, char *why) {
    char d[768];
    foorpc_result rc = foorpc_client_connect(address, 5000, c);
    if (rc != FOORPC_RESULT_OK) return failf(why, "connect: %s", describe(rc, d, sizeof d));
    return 0;
}

/* A writer, or NULL only when out of memory (every case checks). */
static foorpc_writer *new_writer(void) {
    foorpc_writer *w = NULL;
    return foorpc_writer_new(&w) == FOORPC_RESULT_OK ? w : NULL;
}

/* Calls `method` with the params in `w` (30 s timeout); expects FOORPC_RESULT_OK. */
static int call_ok(foorpc_client *c, const char *method, const foorpc_writer *w,
                   foorpc_buf **out, char *why) {
    char d[768];
    foorpc_buf *buf = NULL;
    foorpc_result rc = foorpc_client_call(c, method, foorpc_writer_data(w), foorpc_writer_len(w),
                                          30000, &buf);
    if (rc == FOORPC_RESULT_REMOTE_ERROR) {
        char h[400];
        failf(why, "%s: error reply %s", method,
              render_error(foorpc_buf_data(buf), foorpc_buf_len(buf), h, sizeof h));
        foorpc_buf_free(buf);
        return -1;
    }
    if (rc != FOORPC_RESULT_OK) return failf(why, "%s: %s", method, describe(rc, d, sizeof d));
    *out = buf;
    return 0;
}

/* Reads one int64 out of `data`, which must hold exactly that value. */
static int read_one_int(const uint8_t *data, size_t len, int64_t *v) {
    foorpc_reader *r = NULL;
    int ok = foorpc_reader_new(data, len, &r) == FOORPC_RESULT_OK &&
             foorpc_reader_read_int(r, v) == FOORPC_RESULT_OK && foorpc_reader_remaining(r) == 0;
    foorpc_reader_free(r);
    return ok;
}

/* Calls add(a, b) and checks the sum. */
static int check_add(foorpc_client *c, int64_t a, int64_t b, const char *what, char *why) {
    foorpc_writer *w = new_writer();
    foorpc_buf *res = NULL;
    int64_t got = 0;
    int ret = -1;
    if (!w) return failf(why, "out of memory");
    foorpc_writer_array(w, 2);
    foorpc_writer_int(w, a);
    foorpc_writer_int(w, b);
    if (call_ok(c, "add", w, &res, why) == 0) {
        if (!read_one_int(foorpc_buf_data(res), foorpc_buf_len(res), &got))
            failf(why, "%s: add(%" PRId64 ", %" PRId64 ") is not an integer", what, a, b);
        else if (got != a + b)
            failf(why, "%s: add(%" PRId64 ", %" PRId64 ") = %" PRId64, what, a, b, got);
        else
            ret = 0;
    }
    foorpc_buf_free(res);
    foorpc_writer_free(w);
    return ret;
}

/* ---------------------------------------------------------------------------------------- */
/* The values of echo_each_type (as tests/interop/rust/src/lib.rs echo_values()). */

static float f32_bits(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static double f64_bits(uint64_t bits) {
    double f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Writes echo value number `i` into `w` and its name into `label`; 0 past the last one. */
static int write_echo_value(foorpc_writer *w, int i, char *label, size_t label_len) {
    static const uint64_t uints[] = {0,     127,        128,        255,
                                     256,   65535,      65536,      UINT32_MAX,
                                     (uint64_t)UINT32_MAX + 1,       (uint64_t)INT64_MAX + 1,
                                     UINT64_MAX};
    static const int64_t ints[] = {-1,        -32,       -33,
                                   -128,      -129,      -32768,
                                   -32769,    INT32_MIN, (int64_t)INT32_MIN - 1,
                                   INT64_MIN + 1, INT64_MIN};
    const int n_uints = (int)(sizeof uints / sizeof uints[0]);
    const int n_ints = (int)(sizeof ints / sizeof ints[0]);
    int k = i;

    if (k == 0) return snprintf(label, label_len, "nil"), foorpc_writer_nil(w), 1;
    if (k == 1) return snprintf(label, label_len, "true"), foorpc_writer_bool(w, true), 1;
    if (k == 2) return snprintf(label, label_len, "false"), foorpc_writer_bool(w, false), 1;
    k -= 3;
    if (k < n_uints) {
        snprintf(label, label_len, "uint %" PRIu64, uints[k]);
        foorpc_writer_uint(w, uints[k]);
        return 1;
    }
    k -= n_uints;
    if (k < n_ints) {
        snprintf(label, label_len, "int %" PRId64, ints[k]);
        foorpc_writer_int(w, ints[k]);
        return 1;
    }
    k -= n_ints;
    {
        static const struct {
            const char *name;
            uint32_t bits;
        } f32s[] = {{"1.5", 0x3fc00000u},  {"-0", 0x80000000u},   {"inf", 0x7f800000u},
                    {"-inf", 0xff800000u}, {"NaN", 0x7fc00000u}};
        if (k < 5) {
            snprintf(label, label_len, "float32 %s", f32s[k].name);
            foorpc_writer_f32(w, f32_bits(f32s[k].bits));
            return 1;
        }
        k -= 5;
    }
    {
        static const struct {
            const char *name;
            uint64_t bits;
        } f64s[] = {{"0.1", 0x3fb999999999999aull},
                    {"-0", 0x8000000000000000ull},
                    {"inf", 0x7ff0000000000000ull},
                    {"NaN", 0x7ff8000000000000ull}};
        if (k < 4) {
            snprintf(label, label_len, "float64 %s", f64s[k].name);
            foorpc_writer_f64(w, f64_bits(f64s[k].bits));
            return 1;
        }
        k -= 4;
    }
    switch (k) {
    case 0:
        snprintf(label, label_len, "str empty");
        foorpc_writer_str(w, "", 0);
        return 1;
    case 1:
        snprintf(label, label_len, "str ascii");
        foorpc_writer_cstr(w, "hello");
        return 1;
    case 2:
        snprintf(label, label_len, "str non-BMP");
        foorpc_writer_cstr(w, "\xf0\x9f\x98\x80\xf0\x9d\x84\x9e \xc3\xbcn\xc3\xaf"); /* 😀𝄞 ünï */
        return 1;
    case 3: {
        char s[40];
        memset(s, 'x', sizeof s);
        snprintf(label, label_len, "str 40 bytes");
        foorpc_writer_str(w, s, sizeof s);
        return 1;
    }
    case 4: {
        char s[300];
        memset(s, 'y', sizeof s);
        snprintf(label, label_len, "str 300 bytes");
        foorpc_writer_str(w, s, sizeof s);
        return 1;
    }
    case 5:
        snprintf(label, label_len, "str invalid UTF-8");
        foorpc_writer_str(w, "\xff\xfe" "ab", 4);
        return 1;
    case 6:
        snprintf(label, label_len, "bin empty");
        foorpc_writer_bin(w, NULL, 0);
        return 1;
    case 7: {
        uint8_t b[1000];
        for (int j = 0; j < 1000; j++) b[j] = (uint8_t)j;
        snprintf(label, label_len, "bin 1000");
        foorpc_writer_bin(w, b, sizeof b);
        return 1;
    }
    case 8:
        snprintf(label, label_len, "array empty");
        foorpc_writer_array(w, 0);
        return 1;
    case 9: /* [1, [[], "a"]] */
        snprintf(label, label_len, "array nested");
        foorpc_writer_array(w, 2);
        foorpc_writer_int(w, 1);
        foorpc_writer_array(w, 2);
        foorpc_writer_array(w, 0);
        foorpc_writer_cstr(w, "a");
        return 1;
    case 10:
        snprintf(label, label_len, "array 20");
        foorpc_writer_array(w, 20);
        for (int j = 0; j < 20; j++) foorpc_writer_int(w, j);
        return 1;
    case 11:
        snprintf(label, label_len, "map empty");
        foorpc_writer_map(w, 0);
        return 1;
    case 12: /* {"a": {"b": [nil]}} */
        snprintf(label, label_len, "map nested");
        foorpc_writer_map(w, 1);
        foorpc_writer_cstr(w, "a");
        foorpc_writer_map(w, 1);
        foorpc_writer_cstr(w, "b");
        foorpc_writer_array(w, 1);
        foorpc_writer_nil(w);
        return 1;
    case 13: { /* {1: "one", bin[1, 2]: true, nil: -1} */
        static const uint8_t key[] = {1, 2};
        snprintf(label, label_len, "map non-string keys");
        foorpc_writer_map(w, 3);
        foorpc_writer_int(w, 1);
        foorpc_writer_cstr(w, "one");
        foorpc_writer_bin(w, key, sizeof key);
        foorpc_writer_bool(w, true);
        foorpc_writer_nil(w);
        foorpc_writer_int(w, -1);
        return 1;
    }
    case 14: {
        static const uint8_t d[] = {1, 2, 3};
        snprintf(label, label_len, "ext 5");
        foorpc_writer_ext(w, 5, d, sizeof d);
        return 1;
    }
    case 15: {
        static const uint8_t d[] = {0, 0, 0, 1};
        snprintf(label, label_len, "ext -1 fixext4");
        foorpc_writer_ext(w, -1, d, sizeof d);
        return 1;
    }
    default:
        return 0;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* The cases */

static int case_empty_call(const char *address, char *why) {
    foorpc_client *c = NULL;
    foorpc_writer *w = new_writer();
    foorpc_buf *res = NULL;
    int ret = -1;
    if (!w) return failf(why, "out of memory");
    foorpc_writer_array(w, 0);
    if (connect_to(address, &c, why) == 0 && call_ok(c, "get_notifications", w, &res, why) == 0) {
        char h[80];
        if (foorpc_buf_len(res) == 1 && foorpc_buf_data(res)[0] == 0x90)
            ret = 0;
        else
            failf(why, "get_notifications(): got %s, want [] (90)",
                  hex(foorpc_buf_data(res), foorpc_buf_len(res), h, sizeof h));
    }
    foorpc_buf_free(res);
    foorpc_writer_free(w);
    foorpc_client_free(c);
    return ret;
}

static int case_add(const char *address, char *why) {
    static const int64_t pairs[][2] = {{1, 2}, {-5, 3}, {(int64_t)1 << 40, 1}};
    foorpc_client *c = NULL;
    int ret = connect_to(address, &c, why);
    for (size_t i = 0; ret == 0 && i < sizeof pairs / sizeof pairs[0]; i++)
        ret = check_add(c, pairs[i][0], pairs[i][1], "add", why);
    foorpc_client_free(c);
    return ret;
}

static int case_echo_each_type(const char *address, char *why) {
    foorpc_client *c = NULL;
    foorpc_writer *value = new_writer(), *params = new_writer();
    char label[64];
    int ret = -1;
    if (!value || !params) {
        failf(why, "out of memory");
        goto out;
    }
    if (connect_to(address, &c, why) != 0) goto out;
    ret = 0;
    for (int i = 0; ret == 0; i++) {
        foorpc_buf *res = NULL;
        foorpc_writer_clear(value);
        foorpc_writer_clear(params);
        if (!write_echo_value(value, i, label, sizeof label)) break;
        foorpc_writer_array(params, 1);
        foorpc_writer_raw(params, foorpc_writer_data(value), foorpc_writer_len(value));
        if (call_ok(c, "echo", params, &res, why) != 0) {
            char prefix[WHY_LEN];
            snprintf(prefix, sizeof prefix, "%s", why);
            failf(why, "echo %s: %s", label, prefix);
            ret = -1;
            break;
        }
        /* Byte comparison: exact type and encoding, and nan equals itself. */
        if (foorpc_buf_len(res) != foorpc_writer_len(value) ||
            memcmp(foorpc_buf_data(res), foorpc_writer_data(value), foorpc_buf_len(res)) != 0) {
            char h1[80], h2[80];
            failf(why, "echo %s: sent %s, got %s", label,
                  hex(foorpc_writer_data(value), foorpc_writer_len(value), h1, sizeof h1),
                  hex(foorpc_buf_data(res), foorpc_buf_len(res), h2, sizeof h2));
            ret = -1;
        }
        foorpc_buf_free(res);
    }
out:
    foorpc_client_free(c);
    foorpc_writer_free(value);
    foorpc_writer_free(params);
    return ret;
}

static int case_large_echo(const char *address, char *why) {
    const size_t size = (size_t)4 << 20;
    foorpc_client *c = NULL;
    foorpc_writer *params = new_writer(), *want = new_writer();
    foorpc_buf *res = NULL;
    uint8_t *big = malloc(size);
    int ret = -1;
    if (!params || !want || !big) {
        failf(why, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < size; i++) big[i] = (uint8_t)(i * 7);
    foorpc_writer_bin(want, big, size);
    foorpc_writer_array(params, 1);
    foorpc_writer_bin(params, big, size);
    if (connect_to(address, &c, why) != 0 || call_ok(c, "echo", params, &res, why) != 0) goto out;
    if (foorpc_buf_len(res) != foorpc_writer_len(want) ||
        memcmp(foorpc_buf_data(res), foorpc_writer_data(want), foorpc_buf_len(res)) != 0)
        failf(why, "4 MiB bin came back different (%zu bytes, want %zu)", foorpc_buf_len(res),
              foorpc_writer_len(want));
    else
        ret = 0;
out:
    foorpc_buf_free(res);
    foorpc_client_free(c);
    foorpc_writer_free(params);
    foorpc_writer_free(want);
    free(big);
    return ret;
}

/* Calls `method` with `params`, expecting an error reply; *err receives the error object. */
static int call_expect_error(foorpc_client *c, const char *method, const foorpc_writer *params,
                             foorpc_buf **err, char *why) {
    char d[768];
    foorpc_buf *buf = NULL;
    foorpc_result rc = foorpc_client_call(c, method, foorpc_writer_data(params),
                                          foorpc_writer_len(params), 30000, &buf);
    if (rc == FOORPC_RESULT_REMOTE_ERROR) {
        *err = buf;
        return 0;
    }
    if (rc == FOORPC_RESULT_OK) {
        char h[80];
        failf(why, "%s: expected an error reply, got the result %s", method,
              hex(foorpc_buf_data(buf), foorpc_buf_len(buf), h, sizeof h));
        foorpc_buf_free(buf);
        return -1;
    }
    return failf(why, "%s: expected an error reply, got %s", method, describe(rc, d, sizeof d));
}

static int case_unknown_method(const char *address, char *why) {
    foorpc_client *c = NULL;
    foorpc_writer *w = new_writer();
    foorpc_buf *err = NULL;
    int ret = -1;
    if (!w) return failf(why, "out of memory");
    foorpc_writer_array(w, 0);
    if (connect_to(address, &c, why) == 0 &&
        call_expect_error(c, "no_such_method", w, &err, why) == 0)
        ret = check_add(c, 1, 1, "add after error", why); /* the connection still works */
    foorpc_buf_free(err);
    foorpc_writer_free(w);
    foorpc_client_free(c);
    return ret;
}

static int case_fail_error_shape(const char *address, char *why) {
    foorpc_client *c = NULL;
    foorpc_writer *w = new_writer();
    foorpc_buf *err = NULL;
    foorpc_reader *r = NULL;
    int ret = -1;
    if (!w) return failf(why, "out of memory");
    foorpc_writer_array(w, 1);
    foorpc_writer_cstr(w, "boom");
    if (connect_to(address, &c, why) == 0 && call_expect_error(c, "fail", w, &err, why) == 0) {
        uint32_t n = 0;
        foorpc_type code_type;
        const char *msg = NULL;
        size_t msg_len = 0;
        char h[80];
        hex(foorpc_buf_data(err), foorpc_buf_len(err), h, sizeof h);
        if (foorpc_reader_new(foorpc_buf_data(err), foorpc_buf_len(err), &r) != FOORPC_RESULT_OK ||
            foorpc_reader_read_array(r, &n) != FOORPC_RESULT_OK || n != 2 ||
            ((code_type = foorpc_reader_peek_type(r)) != FOORPC_TYPE_INT &&
             code_type != FOORPC_TYPE_UINT) ||
            foorpc_reader_skip(r) != FOORPC_RESULT_OK) {
            failf(why, "error is not [code, message]: %s", h);
        } else if (foorpc_reader_read_str(r, &msg, &msg_len) != FOORPC_RESULT_OK) {
            failf(why, "error message is not a str: %s", h);
        } else {
            int found = 0;
            for (size_t i = 0; !found && i + 4 <= msg_len; i++)
                found = memcmp(msg + i, "boom", 4) == 0;
            if (found)
                ret = 0;
            else
                failf(why, "message does not carry 'boom': %.*s", (int)msg_len, msg);
        }
    }
    foorpc_reader_free(r);
    foorpc_buf_free(err);
    foorpc_writer_free(w);
    foorpc_client_free(c);
    return ret;
}

static int case_notification_order(const char *address, char *why) {
    foorpc_client *c = NULL;
    foorpc_writer *w = new_writer(), *want = new_writer();
    foorpc_buf *res = NULL;
    int ret = -1;
    char d[768];
    if (!w || !want) {
        failf(why, "out of memory");
        goto out;
    }
    if (connect_to(address, &c, why) != 0) goto out;
    foorpc_writer_array(want, 5);
    for (int i = 1; i <= 5; i++) {
        foorpc_result rc;
        foorpc_writer_clear(w);
        foorpc_writer_array(w, 1);
        foorpc_writer_int(w, i);
        if ((rc = foorpc_client_notify(c, "note", foorpc_writer_data(w), foorpc_writer_len(w))) !=
            FOORPC_RESULT_OK) {
            failf(why, "notify: %s", describe(rc, d, sizeof d));
            goto out;
        }
        foorpc_writer_array(want, 2); /* ["note", [i]] */
        foorpc_writer_cstr(want, "note");
        foorpc_writer_array(want, 1);
        foorpc_writer_int(want, i);
    }
    foorpc_writer_clear(w);
    foorpc_writer_array(w, 0);
    if (call_ok(c, "get_notifications", w, &res, why) != 0) goto out;
    if (foorpc_buf_len(res) != foorpc_writer_len(want) ||
        memcmp(foorpc_buf_data(res), foorpc_writer_data(want), foorpc_buf_len(res)) != 0) {
        char h1[80], h2[80];
        failf(why, "get_notifications(): got %s, want %s",
              hex(foorpc_buf_data(res), foorpc_buf_len(res), h1, sizeof h1),
              hex(foorpc_writer_data(want), foorpc_writer_len(want), h2, sizeof h2));
    } else {
        ret = 0;
    }
out:
    foorpc_buf_free(res);
    foorpc_client_free(c);
    foorpc_writer_free(w);
    foorpc_writer_free(want);
    return ret;
}

/* Outcomes of asynchronous calls, filled by callbacks on foorpc's threads. */
struct async_slot {
    struct async_set *set;
    int index;
};

struct async_set {
    pthread_mutex_t lock;
    pthread_cond_t cv;
    int n, done;
    foorpc_result *rc;
    int64_t *value; /* the integer result, when there is one */
    int *is_int;
    int *order; /* indexes in completion order */
    struct async_slot *slots;
};

static int async_set_init(struct async_set *s, int n) {
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->n = n;
    s->rc = calloc((size_t)n, sizeof *s->rc);
    s->value = calloc((size_t)n, sizeof *s->value);
    s->is_int = calloc((size_t)n, sizeof *s->is_int);
    s->order = calloc((size_t)n, sizeof *s->order);
    s->slots = calloc((size_t)n, sizeof *s->slots);
    if (!s->rc || !s->value || !s->is_int || !s->order || !s->slots) return -1;
    for (int i = 0; i < n; i++) s->slots[i] = (struct async_slot){s, i};
    return 0;
}

static void async_set_destroy(struct async_set *s) {
    free(s->rc);
    free(s->value);
    free(s->is_int);
    free(s->order);
    free(s->slots);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cv);
}

static void on_async_done(void *userdata, foorpc_result rc, const uint8_t *data, size_t len) {
    struct async_slot *slot = userdata;
    struct async_set *s = slot->set;
    int64_t v = 0;
    int is_int = rc == FOORPC_RESULT_OK && read_one_int(data, len, &v);
    pthread_mutex_lock(&s->lock);
    s->rc[slot->index] = rc;
    s->value[slot->index] = v;
    s->is_int[slot->index] = is_int;
    s->order[s->done++] = slot->index;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->lock);
}

/* Waits until `want` callbacks have run or `seconds` have passed; returns how many ran. */
static int async_set_wait(struct async_set *s, int want, double seconds) {
    struct timespec deadline;
    int done;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += (time_t)seconds;
    deadline.tv_nsec += (long)((seconds - (double)(time_t)seconds) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->lock);
    while (s->done < want)
        if (pthread_cond_timedwait(&s->cv, &s->lock, &deadline) != 0) break;
    done = s->done;
    pthread_mutex_unlock(&s->lock);
    return done;
}

static int case_pipelined_out_of_order(const char *address, char *why) {
    static const char *const names[] = {"sleep_ms(300)", "sleep_ms(10)", "add(1, 2)"};
    static const int64_t want[] = {300, 10, 3};
    foorpc_client *c = NULL;
    foorpc_writer *w = new_writer();
    struct async_set s;
    int ret = -1;
    char d[768];
    if (async_set_init(&s, 3) != 0 || !w) {
        failf(why, "out of memory");
        goto out;
    }
    if (connect_to(address, &c, why) != 0) goto out;
    for (int i = 0; i < 3; i++) {
        const char *method = i < 2 ? "sleep_ms" : "add";
        foorpc_result rc;
        foorpc_writer_clear(w);
        if (i < 2) {
            foorpc_writer_array(w, 1);
            foorpc_writer_int(w, i == 0 ? 300 : 10);
        } else {
            foorpc_writer_array(w, 2);
            foorpc_writer_int(w, 1);
            foorpc_writer_int(w, 2);
        }
        rc = foorpc_client_call_async(c, method, foorpc_writer_data(w), foorpc_writer_len(w),
                                      10000, on_async_done, &s.slots[i]);
        if (rc != FOORPC_RESULT_OK) {
            failf(why, "%s: %s", names[i], describe(rc, d, sizeof d));
            goto out;
        }
    }
    if (async_set_wait(&s, 3, 10.0) < 3) {
        failf(why, "replies did not arrive");
        goto out;
    }
    for (int i = 0; i < 3; i++) {
        if (s.rc[i] != FOORPC_RESULT_OK) {
            failf(why, "%s: %s (%u)", names[i], foorpc_result_message(s.rc[i]), (unsigned)s.rc[i]);
            goto out;
        }
        if (!s.is_int[i] || s.value[i] != want[i]) {
            failf(why, "%s: result is not %" PRId64, names[i], want[i]);
            goto out;
        }
    }
    if (s.order[0] != 2 || s.order[1] != 1 || s.order[2] != 0) {
        failf(why, "replies arrived in order [%d, %d, %d], want [2, 1, 0]", s.order[0],
              s.order[1], s.order[2]);
        goto out;
    }
    ret = 0;
out:
    foorpc_client_free(c); /* runs the callbacks still pending (CLOSED) before `s` goes away */
    async_set_destroy(&s);
    foorpc_writer_free(w);
    return ret;
}

static int case_concurrent_1000(const char *address, char *why) {
    const int n = 1000;
    foorpc_client *c = NULL;
    foorpc_writer *w = new_writer();
    struct async_set s;
    int ret = -1;
    char d[768];
    if (async_set_init(&s, n) != 0 || !w) {
        failf(why, "out of memory");
        goto out;
    }
    if (connect_to(address, &c, why) != 0) goto out;
    for (int i = 0; i < n; i++) {
        foorpc_result rc;
        foorpc_writer_clear(w);
        foorpc_writer_array(w, 2);
        foorpc_writer_int(w, i);
        foorpc_writer_int(w, i);
        rc = foorpc_client_call_async(c, "add", foorpc_writer_data(w), foorpc_writer_len(w), 30000,
                                      on_async_done, &s.slots[i]);
        if (rc != FOORPC_RESULT_OK) {
            failf(why, "add(%d, %d): %s", i, i, describe(rc, d, sizeof d));
            goto out;
        }
    }
    if (async_set_wait(&s, n, 40.0) < n) {
        failf(why, "only %d of %d replies arrived", s.done, n);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        if (s.rc[i] != FOORPC_RESULT_OK) {
            failf(why, "add(%d, %d): %s (%u)", i, i, foorpc_result_message(s.rc[i]),
                  (unsigned)s.rc[i]);
            goto out;
        }
        if (!s.is_int[i] || s.value[i] != 2 * (int64_t)i) {
            failf(why, "add(%d, %d) = %" PRId64 ", want %d", i, i, s.value[i], 2 * i);
            goto out;
        }
    }
    ret = 0;
out:
    foorpc_client_free(c); /* runs the callbacks still pending (CLOSED) before `s` goes away */
    async_set_destroy(&s);
    foorpc_writer_free(w);
    return ret;
}

static int case_timeout_on_sleeping_server(const char *address, char *why) {
    foorpc_client *c = NULL;
    foorpc_writer *w = new_writer();
    foorpc_buf *res = NULL;
    foorpc_result rc;
    double start, took;
    int ret = -1;
    char d[768];
    if (!w) return failf(why, "out of memory");
    foorpc_writer_array(w, 1);
    foorpc_writer_int(w, 2000);
    if (connect_to(address, &c, why) != 0) goto out;
    start = now_s();
    rc = foorpc_client_call(c, "sleep_ms", foorpc_writer_data(w), foorpc_writer_len(w), 200, &res);
    took = now_s() - start;
    if (rc != FOORPC_RESULT_TIMEOUT) {
        failf(why, "expected a timeout, got %s", describe(rc, d, sizeof d));
        goto out;
    }
    if (took > 1.5) {
        failf(why, "timeout of 200 ms took %.3f s", took);
        goto out;
    }
    ret = check_add(c, 1, 1, "add after timeout", why);
out:
    foorpc_buf_free(res);
    foorpc_writer_free(w);
    foorpc_client_free(c);
    return ret;
}

/* The client's mul(a, b), run inline on its I/O thread when the server calls it back. */
static void client_mul(void *userdata, const char *method, size_t method_len,
                       const uint8_t *params, size_t params_len, foorpc_responder *resp) {
    (void)userdata, (void)method, (void)method_len;
    foorpc_reader *r = NULL;
    foorpc_writer *w = NULL;
    uint32_t n = 0;
    int64_t a = 0, b = 0, product = 0;
    if (foorpc_reader_new(params, params_len, &r) != FOORPC_RESULT_OK ||
        foorpc_reader_read_array(r, &n) != FOORPC_RESULT_OK || n != 2 ||
        foorpc_reader_read_int(r, &a) != FOORPC_RESULT_OK ||
        foorpc_reader_read_int(r, &b) != FOORPC_RESULT_OK ||
        __builtin_mul_overflow(a, b, &product)) {
        static const char msg[] = "mul takes two integers whose product fits int64";
        foorpc_responder_error_message(resp, 1, msg, sizeof msg - 1);
    } else if (foorpc_writer_new(&w) != FOORPC_RESULT_OK) {
        foorpc_responder_free(resp); /* answers with an error */
    } else {
        foorpc_writer_int(w, product);
        foorpc_responder_ok(resp, foorpc_writer_data(w), foorpc_writer_len(w));
    }
    foorpc_writer_free(w);
    foorpc_reader_free(r);
}

static int case_server_to_client_call(const char *address, char *why) {
    foorpc_client_options *opts = NULL;
    foorpc_client *c = NULL;
    foorpc_writer *w = new_writer();
    foorpc_buf *res = NULL, *err = NULL;
    foorpc_result rc;
    int64_t got = 0;
    int ret = -1;
    char d[768];
    if (!w) return failf(why, "out of memory");
    if ((rc = foorpc_client_options_new(&opts)) != FOORPC_RESULT_OK ||
        (rc = foorpc_client_options_register(opts, "mul", client_mul, NULL,
                                             FOORPC_HANDLER_INLINE)) != FOORPC_RESULT_OK) {
        failf(why, "client options: %s", describe(rc, d, sizeof d));
        goto out;
    }
    if ((rc = foorpc_client_connect_with(address, 5000, opts, &c)) != FOORPC_RESULT_OK) {
        failf(why, "connect: %s", describe(rc, d, sizeof d));
        goto out;
    }
    /* call_back("mul", [6, 7]) */
    foorpc_writer_array(w, 2);
    foorpc_writer_cstr(w, "mul");
    foorpc_writer_array(w, 2);
    foorpc_writer_int(w, 6);
    foorpc_writer_int(w, 7);
    if (call_ok(c, "call_back", w, &res, why) != 0) goto out;
    if (!read_one_int(foorpc_buf_data(res), foorpc_buf_len(res), &got) || got != 42) {
        char h[80];
        failf(why, "call_back(mul, [6, 7]): got %s, want 42",
              hex(foorpc_buf_data(res), foorpc_buf_len(res), h, sizeof h));
        goto out;
    }
    /* A method the client lacks: the server relays the client's error reply. */
    foorpc_writer_clear(w);
    foorpc_writer_array(w, 2);
    foorpc_writer_cstr(w, "no_such_client_method");
    foorpc_writer_array(w, 0);
    if (call_expect_error(c, "call_back", w, &err, why) != 0) goto out;
    ret = 0;
out:
    foorpc_buf_free(res);
    foorpc_buf_free(err);
    foorpc_client_free(c);
    foorpc_client_options_free(opts);
    foorpc_writer_free(w);
    return ret;
}

static int case_disconnect_mid_call(const char *address, char *why) {
    foorpc_client *c = NULL;
    foorpc_writer *w = new_writer();
    foorpc_buf *res = NULL;
    foorpc_result rc;
    double start, took;
    int ret = -1;
    char d[768];
    if (!w) return failf(why, "out of memory");
    foorpc_writer_array(w, 0);
    if (connect_to(address, &c, why) != 0) goto out;
    start = now_s();
    rc = foorpc_client_call(c, "disconnect", foorpc_writer_data(w), foorpc_writer_len(w), 10000,
                            &res);
    took = now_s() - start;
    if (rc == FOORPC_RESULT_REMOTE_ERROR) {
        char h[400];
        failf(why, "expected a lost connection, got the error reply %s",
              render_error(foorpc_buf_data(res), foorpc_buf_len(res), h, sizeof h));
        goto out;
    }
    if (rc != FOORPC_RESULT_CONNECTION_LOST) {
        failf(why, "expected a lost connection, got %s", describe(rc, d, sizeof d));
        goto out;
    }
    if (took > 2.0) {
        failf(why, "noticed only after %.3f s", took);
        goto out;
    }
    ret = 0;
out:
    foorpc_buf_free(res);
    foorpc_writer_free(w);
    foorpc_client_free(c);
    return ret;
}

/* ---------------------------------------------------------------------------------------- */
/* main */

static const struct {
    const char *name;
    case_fn run;
} CASES[] = {
    {"empty_call", case_empty_call},
    {"add", case_add},
    {"echo_each_type", case_echo_each_type},
    {"large_echo", case_large_echo},
    {"unknown_method", case_unknown_method},
    {"fail_error_shape", case_fail_error_shape},
    {"notification_order", case_notification_order},
    {"pipelined_out_of_order", case_pipelined_out_of_order},
    {"concurrent_1000", case_concurrent_1000},
    {"timeout_on_sleeping_server", case_timeout_on_sleeping_server},
    {"server_to_client_call", case_server_to_client_call},
    {"disconnect_mid_call", case_disconnect_mid_call},
};
#define N_CASES ((int)(sizeof CASES / sizeof CASES[0]))

static int usage(void) {
    fprintf(stderr, "usage: conformance_client (--port N | --unix PATH) [--cases a,b,...]\n");
    return 2;
}

static int find_case(const char *name, size_t len) {
    for (int i = 0; i < N_CASES; i++)
        if (strlen(CASES[i].name) == len && memcmp(CASES[i].name, name, len) == 0) return i;
    return -1;
}

int main(int argc, char **argv) {
    char address[4200];
    const char *cases_arg = NULL;
    int have_address = 0;
    int *selected = NULL, n_selected = 0, passed = 0, failed = 0;
    char why[WHY_LEN];

    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc) return usage();
        if (strcmp(argv[i], "--port") == 0) {
            snprintf(address, sizeof address, "tcp://127.0.0.1:%s", argv[i + 1]);
            have_address = 1;
        } else if (strcmp(argv[i], "--unix") == 0) {
            snprintf(address, sizeof address, "unix://%s", argv[i + 1]);
            have_address = 1;
        } else if (strcmp(argv[i], "--cases") == 0) {
            cases_arg = argv[i + 1];
        } else {
            return usage();
        }
    }
    if (!have_address) return usage();

    if (cases_arg == NULL) {
        selected = malloc(N_CASES * sizeof *selected);
        if (!selected) return 1;
        for (int i = 0; i < N_CASES; i++) selected[n_selected++] = i;
    } else {
        size_t total = strlen(cases_arg);
        selected = malloc((total + 1) * sizeof *selected);
        if (!selected) return 1;
        for (const char *p = cases_arg;;) {
            const char *comma = strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            int k = find_case(p, len);
            if (k < 0) {
                fprintf(stderr, "unknown case %.*s\n", (int)len, p);
                free(selected);
                return 2;
            }
            selected[n_selected++] = k;
            if (!comma) break;
            p = comma + 1;
        }
    }

    for (int i = 0; i < n_selected; i++) {
        const char *name = CASES[selected[i]].name;
        why[0] = 0;
        if (CASES[selected[i]].run(address, why) == 0) {
            passed++;
            printf("PASS %s\n", name);
        } else {
            failed++;
            printf("FAIL %s: %s\n", name, why[0] ? why : "failed");
        }
        fflush(stdout);
    }
    printf("%d passed, %d failed\n", passed, failed);
    fflush(stdout);
    free(selected);
    return failed == 0 ? 0 : 1;
}
