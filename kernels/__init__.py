"""Pallas kernels and their pure-XLA references, side by side."""
