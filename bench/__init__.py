"""Benchmarks, run as modules from the repository root: python -m bench.attention,
python -m bench.train_step, python -m bench.sampling. Results go to bench/results/."""
