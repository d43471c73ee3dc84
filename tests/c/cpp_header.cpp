// A C++ program that includes foorpc.h and links against libfoorpc: checks the
// header's extern "C" guards and that its enums and typedefs compile as C++.
#include <foorpc.h>

#include <cstdio>
#include <cstring>
#include <string>

int main() {
    foorpc_writer *w = nullptr;
    foorpc_reader *r = nullptr;
    if (foorpc_writer_new(&w) != FOORPC_RESULT_OK) return 1;
    foorpc_writer_array(w, 2);
    foorpc_writer_int(w, -7);
    foorpc_writer_cstr(w, "c++");
    foorpc_reader_new(foorpc_writer_data(w), foorpc_writer_len(w), &r);
    uint32_t n = 0;
    int64_t v = 0;
    const char *s = nullptr;
    size_t len = 0;
    foorpc_result rc = foorpc_reader_read_array(r, &n);
    bool ok = rc == FOORPC_RESULT_OK && n == 2 &&
              foorpc_reader_read_int(r, &v) == FOORPC_RESULT_OK && v == -7 &&
              foorpc_reader_read_str(r, &s, &len) == FOORPC_RESULT_OK &&
              std::string(s, len) == "c++" && foorpc_reader_peek_type(r) == FOORPC_TYPE_NONE;
    foorpc_reader_free(r);
    foorpc_writer_free(w);
    ok = ok && std::strlen(foorpc_version()) > 0;
    std::printf("C++ %s: foorpc %s\n", ok ? "ok" : "FAILED", foorpc_version());
    return ok ? 0 : 1;
}
