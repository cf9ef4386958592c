"""mlzsl_jax: multi-label zero-shot learning (BiAM and baselines) in JAX/Flax."""

__version__ = "0.1.0"
