"""Meshes, logical-axis rules and sequence-parallel attention."""
