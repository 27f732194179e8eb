"""Strict test configuration: JAX on CPU with 8 virtual devices, rank promotion raises."""

import os

# Must be set before jax is imported anywhere, so sharding code runs on CPU in CI.
os.environ["JAX_PLATFORMS"] = "cpu"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
