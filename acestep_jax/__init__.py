"""acestep-jax: ACE-Step v1 music generation in JAX / Flax NNX."""

__version__ = "0.1.0"
