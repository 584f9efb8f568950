"""A run's folder (its --workdir): config.json, metrics, written videos, and open_run, the one
way sample.py, python -m eval and the sparse-fidelity tool open a trained run."""
