"""Self-supervised audio encoders for REPA (HuBERT family: MERT-v1-330M, mHuBERT-147).

Their released configs and random models are in :mod:`acestep_jax.presets`.
"""

from acestep_jax.models.ssl.config import HubertConfig
from acestep_jax.models.ssl.model import HubertModel, HubertOutput

__all__ = ["HubertConfig", "HubertModel", "HubertOutput"]
