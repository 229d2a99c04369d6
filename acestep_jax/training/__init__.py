"""Training: records and the grain pipeline, the flow-matching + REPA loss, the sharded
train step with checkpoints, LoRA fine-tuning, preprocessing and the ``train.py`` CLI."""

from acestep_jax.training.config import TrainConfig
from acestep_jax.training.loss import flow_matching_loss, masked_repa_loss
from acestep_jax.training.trainer import Trainer, build_model

__all__ = ["TrainConfig", "Trainer", "build_model", "flow_matching_loss", "masked_repa_loss"]
