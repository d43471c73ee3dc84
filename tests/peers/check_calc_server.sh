#!/usr/bin/env bash
# tests/peers/check_calc_server.sh PYTHON SERVER_COMMAND...
# Starts a calc_server (SERVER_COMMAND ADDRESS) on a free TCP port and has
# clients foorpc did not write call it: the msgpack-package client (every
# value type, errors, pipelining, timeouts) and pynvim. Exits non-zero on any
# failure; the last line is `N passed, N failed`, counting the two clients.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="$1"; shift
out="$(mktemp)"
"$@" tcp://127.0.0.1:0 > "$out" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q ' on tcp://' "$out" && break; sleep 0.05; done
port="$(grep -o '[0-9]*$' "$out" | head -1)"
[ -n "$port" ] || { echo "the server did not start"; exit 1; }
passed=0; failed=0
run() {
  if timeout 120 "$py" "$@" --port "$port"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
}
run "$here/msgpack_client.py" --cases add,echo_each_type,large_echo,unknown_method,fail_error_shape,pipelined_out_of_order,concurrent_1000,timeout_on_sleeping_server
run "$here/pynvim_client.py" --cases add,echo_each_type,unknown_method,fail_error_shape
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
