"""The training runtime: train state, optimizer, the pure train step, its layout on a mesh,
checkpoints, and model FLOPs."""
