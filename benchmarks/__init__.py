"""winnow's microbenchmark suite: `python -m benchmarks run <name>` (see __main__.py)."""
