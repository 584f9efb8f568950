"""Published weights read into our networks, without PyTorch: torch_checkpoint (torch.save files
through a restricted unpickler), wan_vae (Wan2.1's VAE in its original and diffusers layouts)."""
