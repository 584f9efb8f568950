"""Post-training quantization of a trained DiT through qwix: schemes, calibration of static
activation ranges on sampling trajectories, SmoothQuant's equivalent transform, mixed precision,
and quantized models saved in a run's folder."""
