# Rust: the core crate, its examples and tests.
.PHONY: build-rust test-rust lint-rust
build: build-rust
TEST_TARGETS += test-rust

build-rust:
	$(CARGO) build --release -p foorpc --examples

test-rust:
	$(CARGO) test --release -p foorpc
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release -p foorpc --all-targets -- -D warnings
