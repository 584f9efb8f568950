"""Data sources (random-access, deterministic per (seed, index)) and the grain pipeline."""
