"""Fixtures of the sampling tests: the tiny golden transformer and the pipeline conditioning."""

import pytest

from acestep_jax.convert.transformer import load_transformer
from acestep_jax.models.transformer import TransformerConfig
from acestep_jax.sampling import Conditioning
from tests.helpers import tile_batch


@pytest.fixture(scope="session")
def tiny_model(golden):
    g = golden("transformer")
    return load_transformer(g.path("weights.safetensors"), TransformerConfig.from_dict(g.config))


@pytest.fixture(scope="session")
def pipeline_golden(golden):
    return golden("pipeline")


def make_cond(io, src: bool = False, batch: int | None = None) -> Conditioning:
    """The pipeline golden's shared conditioning (optionally repeated or cut to ``batch`` items)."""
    def tile(a):
        return a if batch is None else tile_batch(a, batch)

    return Conditioning(
        text=tile(io["encoder_text_hidden_states"]),
        text_mask=tile(io["text_attention_mask"]),
        lyric_ids=tile(io["lyric_token_ids"]),
        lyric_mask=tile(io["lyric_mask"]),
        speaker=tile(io["speaker_embds"]),
        text_null=tile(io["encoder_text_hidden_states_null"]),
        src_latents=tile(io["src_latents"]) if src else None,
    )
