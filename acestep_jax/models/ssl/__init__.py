"""Self-supervised audio encoders for REPA (HuBERT family: MERT-v1-330M, mHuBERT-147)."""

from acestep_jax.models.ssl.config import HubertConfig
from acestep_jax.models.ssl.model import HubertModel, HubertOutput
from acestep_jax.models.ssl.presets import random_model, released_config

__all__ = ["HubertConfig", "HubertModel", "HubertOutput", "random_model", "released_config"]
