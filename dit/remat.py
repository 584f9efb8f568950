"""Rematerialisation policies by name (model.remat), mapped to jax.checkpoint_policies.

- none: no rematerialisation; every activation of a block is kept for the backward pass.
- full: keep only each block's input; recompute the rest of the block in the backward pass.
- dots_saveable: keep matmul outputs (without batch dims), recompute elementwise work.
- offload_block_inputs: like full, but the block input goes to pinned host memory and comes
  back for the backward pass, so device memory holds no per-layer activations at all.
"""
import jax

BLOCK_INPUT = "block_input"  # checkpoint_name of each block's input

REMAT_POLICIES = ("none", "full", "dots_saveable", "offload_block_inputs")


def remat_policy(name: str):
  """The jax.checkpoint policy for `name`; None means do not wrap in jax.checkpoint at all."""
  policies = jax.checkpoint_policies
  if name == "none":
    return None
  if name == "full":
    return policies.nothing_saveable
  if name == "dots_saveable":
    return policies.dots_with_no_batch_dims_saveable
  if name == "offload_block_inputs":
    return policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=[BLOCK_INPUT],
        offload_src="device", offload_dst="pinned_host")
  raise ValueError(f"unknown remat policy {name!r}; set model.remat to one of {REMAT_POLICIES}")
