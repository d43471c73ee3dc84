#!/usr/bin/env bash
# The C suite behind `make test-c`. Expects libfoorpc installed in $PREFIX
# (`make install PREFIX=...`) and the Rust examples built (`make build-rust`).
#
# 1. the install layout (soname symlinks, pkg-config file without rpath);
# 2. C, C++ and static builds through pkg-config, the examples through their Makefile;
# 3. tests/c/test_api (shared and static), tests/c/test_robustness, the C++ program;
# 4. the C examples against each other, against the Rust examples, and a Python
#    client using only `msgpack` against the C server, over TCP and Unix sockets;
# 5. the C API and robustness tests, the C server and the C client under valgrind.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
: "${PREFIX:?set PREFIX to an install made by make install}"
PYTHON=${PYTHON:-python3}
OUT=$ROOT/build/c-tests
RUST_EXAMPLES=$ROOT/target/release/examples
rm -rf "$OUT"
mkdir -p "$OUT"
export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export LD_LIBRARY_PATH="$PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
CFLAGS=(-std=c11 -O1 -g -Wall -Wextra -Werror)
VALGRIND=(valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect)

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "PASS $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }
# run NAME CMD...: runs a check, logging its output to $OUT/NAME.log
run() {
    local name=$1
    shift
    if "$@" >"$OUT/$name.log" 2>&1; then ok "$name"; else bad "$name (log: $OUT/$name.log)"; tail -n 20 "$OUT/$name.log"; fi
}

SERVER_PID=
SERVER_ADDR=
# start_server NAME CMD...: starts a server printing "... listening on ADDRESS", waits for it
start_server() {
    local name=$1
    shift
    "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" &
    SERVER_PID=$!
    for _ in $(seq 1 600); do
        if SERVER_ADDR=$(sed -n 's/^.* listening on \(.*\)$/\1/p' "$OUT/$name.out") && [ -n "$SERVER_ADDR" ]; then
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.05
    done
    bad "$name did not start"
    cat "$OUT/$name.err"
    return 1
}
# stop_server NAME: SIGTERM, then the exit status must be 0 within 30 s
stop_server() {
    local name=$1 status=0
    kill -TERM "$SERVER_PID"
    for _ in $(seq 1 300); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID"
        bad "$name did not stop on SIGTERM"
    fi
    wait "$SERVER_PID" || status=$?
    if [ "$status" = 0 ]; then ok "$name exits 0 after SIGTERM"; else bad "$name exit status $status"; cat "$OUT/$name.err"; fi
    SERVER_PID=
}
cleanup() { [ -z "$SERVER_PID" ] || kill -KILL "$SERVER_PID" 2>/dev/null || true; }
trap cleanup EXIT

port_of() { echo "${1##*:}"; }

# ---- 1. install layout ------------------------------------------------------
version=$(pkg-config --modversion foorpc)
major=${version%%.*}
check_install() {
    test "$(readlink "$PREFIX/lib/libfoorpc.so")" = "libfoorpc.so.$major"
    test "$(readlink "$PREFIX/lib/libfoorpc.so.$major")" = "libfoorpc.so.$version"
    test -f "$PREFIX/lib/libfoorpc.so.$version" -a -f "$PREFIX/lib/libfoorpc.a"
    test -f "$PREFIX/include/foorpc.h"
    readelf -d "$PREFIX/lib/libfoorpc.so" | grep -q "SONAME.*\[libfoorpc.so.$major\]"
    ! grep -qi rpath "$PREFIX/lib/pkgconfig/foorpc.pc"
    test "$(pkg-config --libs foorpc)" = "-L$PREFIX/lib -lfoorpc"
    grep -q "#define FOORPC_VERSION_MAJOR $major\$" "$PREFIX/include/foorpc.h"
}
run install_layout check_install

# ---- 2. builds -----------------------------------------------------------------
build_c() {
    cc "${CFLAGS[@]}" $(pkg-config --cflags foorpc) -o "$OUT/test_api" tests/c/test_api.c \
        $(pkg-config --libs foorpc) -lpthread -lm
}
build_static() {
    # Everything but -lfoorpc from the static flags, and the archive itself.
    cc "${CFLAGS[@]}" $(pkg-config --cflags foorpc) -o "$OUT/test_api_static" tests/c/test_api.c \
        "$PREFIX/lib/libfoorpc.a" $(pkg-config --static --libs foorpc | sed 's/-lfoorpc//') -lpthread
    ! ldd "$OUT/test_api_static" | grep -q libfoorpc
}
build_robustness() {
    cc "${CFLAGS[@]}" -pthread $(pkg-config --cflags foorpc) -o "$OUT/test_robustness" \
        tests/c/test_robustness.c $(pkg-config --libs foorpc) -lpthread -lm
}
build_cpp() {
    g++ -std=c++11 -O1 -Wall -Wextra -Werror $(pkg-config --cflags foorpc) -o "$OUT/cpp_header" \
        tests/c/cpp_header.cpp $(pkg-config --libs foorpc)
}
build_rpath() {
    # The same program with an rpath instead of LD_LIBRARY_PATH.
    env -u LD_LIBRARY_PATH cc "${CFLAGS[@]}" $(pkg-config --cflags foorpc) -o "$OUT/cpp_rpath_c" \
        -x c - $(pkg-config --libs foorpc) -Wl,-rpath,"$PREFIX/lib" <<'C'
#include <foorpc.h>
#include <stdio.h>
int main(void) { return puts(foorpc_version()) < 0; }
C
    env -u LD_LIBRARY_PATH "$OUT/cpp_rpath_c"
}
build_examples() {
    make -C examples-c clean all
}
run build_test_api build_c
run build_test_api_static build_static
run build_test_robustness build_robustness
run build_cpp build_cpp
run build_with_rpath build_rpath
run build_examples build_examples

# ---- 3. API tests -----------------------------------------------------------
run test_api "$OUT/test_api"
tail -n 1 "$OUT/test_api.log"
run test_api_static "$OUT/test_api_static"
run test_robustness "$OUT/test_robustness"
tail -n 1 "$OUT/test_robustness.log"
run cpp_header "$OUT/cpp_header"

# ---- 4. the examples against each other and other languages ------------------
PY_CASES=add,echo_each_type,large_echo,unknown_method,fail_error_shape,pipelined_out_of_order,concurrent_1000,timeout_on_sleeping_server
SOCK=/tmp/foorpc-c-test-$$.sock
for where in "tcp://127.0.0.1:0" "unix://$SOCK"; do
    kind=${where%%:*}
    start_server "c_server_$kind" examples-c/calc_server "$where" || continue
    run "c_client_vs_c_server_$kind" examples-c/calc_client "$SERVER_ADDR" 20
    run "rust_client_vs_c_server_$kind" "$RUST_EXAMPLES/calc_client" "$SERVER_ADDR"
    if [ "$kind" = tcp ]; then
        run "python_msgpack_client_vs_c_server_$kind" "$PYTHON" tests/peers/msgpack_client.py \
            --port "$(port_of "$SERVER_ADDR")" --cases "$PY_CASES"
    else
        run "python_msgpack_client_vs_c_server_$kind" "$PYTHON" tests/peers/msgpack_client.py \
            --unix "$SOCK" --cases "$PY_CASES"
    fi
    stop_server "c_server_$kind"
done
test ! -e "$SOCK" && ok "unix socket file removed on stop" || bad "unix socket file left behind"

start_server rust_server "$RUST_EXAMPLES/calc_server" "tcp://127.0.0.1:0" && {
    run c_client_vs_rust_server examples-c/calc_client "$SERVER_ADDR" 20
    stop_server rust_server
}

# ---- 5. valgrind ------------------------------------------------------------------
if command -v valgrind >/dev/null; then
    run valgrind_test_api "${VALGRIND[@]}" "$OUT/test_api"
    run valgrind_test_robustness "${VALGRIND[@]}" "$OUT/test_robustness"
    start_server valgrind_c_server "${VALGRIND[@]}" examples-c/calc_server "tcp://127.0.0.1:0" && {
        run valgrind_c_client "${VALGRIND[@]}" examples-c/calc_client "$SERVER_ADDR" 200
        run python_msgpack_client_vs_valgrind_c_server "$PYTHON" tests/peers/msgpack_client.py \
            --port "$(port_of "$SERVER_ADDR")" --timeout 30 \
            --cases add,echo_each_type,unknown_method,fail_error_shape,pipelined_out_of_order
        stop_server valgrind_c_server
    }
else
    bad "valgrind is not installed"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
