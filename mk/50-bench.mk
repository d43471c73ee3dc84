# Benchmarks (bench/README.md): every figure beside its baseline, in one run.
# Only the smoke test is part of `make test`: it checks that every benchmark
# program still builds, runs and prints its figure, never what the figure is.
.PHONY: bench bench-quick test-bench
TEST_TARGETS += test-bench

## Every benchmark, 5 rounds (+1 warm-up); prints one line per figure and ratio.
bench:
	bench/run

## The same in about a minute: 5 rounds, fewer calls.
bench-quick:
	bench/run --quick

## Every benchmark once with a few calls; fails if a figure is missing (n/a).
test-bench: build-python
	bench/run --smoke
