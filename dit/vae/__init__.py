"""The causal video VAE (Wan2.1's architecture): dit.vae.config, layers, model, coding."""
