"""Models; importing this package registers every built-in model."""

from mlzsl_jax.models import (  # noqa: F401  (each module registers its model and loss)
    attention_per_label, biam, clip_zero_shot, conse, dem, fast0tag, labelem, lesa)
from mlzsl_jax.models.registry import get_model_builder, register_model, registered_models

__all__ = ["get_model_builder", "register_model", "registered_models"]
