"""Throughput, memory and start-up benchmarks (not tests); results in benchmarks/RESULTS.md."""
