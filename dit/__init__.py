"""Video diffusion transformers: the DiT, 3D RoPE, conditioning, flow matching and samplers."""
