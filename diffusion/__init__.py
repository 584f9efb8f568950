"""Diffusion on top of the network: the flow-matching objective, sigma schedules, ODE solvers
and guidance, AdaSpa's sampling runtime, and the video sampler."""
