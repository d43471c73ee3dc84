# Benchmarks (bench/README.md): every figure beside its baseline, in one run.
# Not part of `make test`: benchmarks never assert on timings.
.PHONY: bench bench-quick

## Every benchmark, 5 rounds (+1 warm-up); prints one line per figure and ratio.
bench:
	bench/run

## The same in about a minute: 5 rounds, fewer calls.
bench-quick:
	bench/run --quick
