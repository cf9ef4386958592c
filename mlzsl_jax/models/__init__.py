"""Models; importing this package registers every built-in model."""

from mlzsl_jax.models import biam  # noqa: F401
from mlzsl_jax.models.registry import get_model_builder, register_model, registered_models

__all__ = ["get_model_builder", "register_model", "registered_models"]
