"""Benchmark suite of ATRank-MT (not part of the product): ``python -m bench.run``."""
