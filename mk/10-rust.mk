# Rust: the core crate, its examples and tests (clippy covers the whole workspace).
.PHONY: build-rust test-rust test-rust-peers
build: build-rust
TEST_TARGETS += test-rust test-rust-peers

build-rust:
	$(CARGO) build --release -p foorpc --examples

test-rust:
	$(CARGO) test --release -p foorpc
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

## Clients foorpc did not write (msgpack package, pynvim) call the Rust calc_server.
test-rust-peers: build-rust venv
	tests/peers/check_calc_server.sh $(VPY) target/release/examples/calc_server
