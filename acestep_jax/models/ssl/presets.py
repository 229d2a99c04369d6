"""The released encoders' configs (packaged ``configs/ssl/``) and randomly initialised models of them.

``mert`` is MERT-v1-330M (24 kHz, 1024 wide, 24 pre-LN layers), ``m-hubert`` is
mHuBERT-147 (16 kHz, 768 wide, 12 post-LN layers): their Hub ``config.json`` values.
"""

from __future__ import annotations

import json

from flax import nnx

from acestep_jax.models.ssl.config import HubertConfig
from acestep_jax.models.ssl.model import HubertModel
from acestep_jax.presets import packaged_config

RELEASED = {"mert": "mert-v1-330m.json", "m-hubert": "mhubert-147.json"}


def released_config(name: str, **overrides) -> HubertConfig:
    """The released config of ``name`` (``mert`` or ``m-hubert``) with ``overrides`` (e.g. dtypes)."""
    if name not in RELEASED:
        raise ValueError(f"unknown SSL model {name!r}; choose from {sorted(RELEASED)}")
    return HubertConfig.from_dict(json.loads(packaged_config(f"ssl/{RELEASED[name]}").read_text()), **overrides)


def random_model(cfg: HubertConfig, seed: int = 0) -> HubertModel:
    """A model of ``cfg`` with host-generated random weights (fast at full size, see ``random_weights``)."""
    from acestep_jax.presets import random_weights

    return random_weights(nnx.eval_shape(lambda: HubertModel(cfg, rngs=nnx.Rngs(0))), seed)
