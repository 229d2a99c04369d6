"""Dtype names used in configs and on the command line."""

import jax.numpy as jnp

_NAMES = {
    "float32": jnp.float32,
    "fp32": jnp.float32,
    "f32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "bf16": jnp.bfloat16,
    "float16": jnp.float16,
    "fp16": jnp.float16,
}


def resolve_dtype(dtype) -> jnp.dtype:
    """Return a numpy dtype for a name such as ``"bfloat16"`` or a dtype object."""
    if isinstance(dtype, str):
        try:
            return jnp.dtype(_NAMES[dtype.lower()])
        except KeyError:
            raise ValueError(
                f"unknown dtype {dtype!r}; expected one of {sorted(set(_NAMES))}"
            ) from None
    return jnp.dtype(dtype)
