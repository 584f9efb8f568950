"""Evaluation: metrics of generated videos and of sparse attention's fidelity."""
