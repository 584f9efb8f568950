"""The network: the video DiT (and the causal VAE next). Imports only jax, flax, numpy, kernels/
and sharding/ (tests/test_layout.py enforces it); built from a DiTConfig (dit/config.py)."""
