"""An item's latents do not depend on how its prompt, lyrics and frames are padded or on what
it is batched with (the ``"item"`` context positions, isolated frame padding)."""

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acestep_jax.sampling import Conditioning, SamplingParams, generate, seconds_to_frames
from tests.helpers import assert_close

PARAMS = SamplingParams(duration=1.2, infer_steps=4, scheduler_type="euler", bucket=True, batch_invariant=True)
LONGER = PARAMS.replace(duration=2.0)  # the other items: the item's frames are padded to theirs


def _item(io, text_len: int, lyric_len: int) -> Conditioning:
    """The pipeline golden's first item with its prompt and lyrics cut to the given lengths."""
    return Conditioning(
        text=io["encoder_text_hidden_states"][:1, :text_len], text_mask=io["text_attention_mask"][:1, :text_len],
        lyric_ids=io["lyric_token_ids"][:1, :lyric_len], lyric_mask=io["lyric_mask"][:1, :lyric_len],
        speaker=io["speaker_embds"][:1], text_null=io["encoder_text_hidden_states_null"][:1, :text_len],
    )


def _pad(a, width: int):
    return np.pad(np.asarray(a), [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2))


def _random_item(rng, like: Conditioning, text_width: int, lyric_width: int, vocab: int) -> Conditioning:
    lt, ll = int(rng.integers(1, text_width + 1)), int(rng.integers(1, lyric_width + 1))
    text = rng.standard_normal((1, text_width, like.text.shape[-1])).astype(np.float32)
    return Conditioning(
        text=text, text_mask=(np.arange(text_width) < lt)[None].astype(np.int32),
        lyric_ids=rng.integers(1, vocab, (1, lyric_width)), lyric_mask=(np.arange(lyric_width) < ll)[None].astype(np.int32),
        speaker=rng.standard_normal(like.speaker.shape).astype(np.float32), text_null=0.5 * text,
    )


@pytest.mark.slow
@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(text_pad=st.integers(1, 12), lyric_pad=st.integers(1, 12), others=st.integers(1, 3), seed=st.integers(0, 99))
def test_padding_and_batch_change_no_item(tiny_model, pipeline_golden, text_pad, lyric_pad, others, seed):
    io = pipeline_golden.io
    text_len, lyric_len = 7, io["lyric_token_ids"].shape[1] - 5
    item = _item(io, text_len, lyric_len)
    alone = np.asarray(generate(tiny_model, PARAMS, item, [5]))[0]

    rng = np.random.default_rng(seed)
    tw, lw = text_len + text_pad, lyric_len + lyric_pad
    padded = Conditioning(text=_pad(item.text, tw), text_mask=_pad(item.text_mask, tw),
                          lyric_ids=_pad(item.lyric_ids, lw), lyric_mask=_pad(item.lyric_mask, lw),
                          speaker=item.speaker, text_null=_pad(item.text_null, tw))
    vocab = tiny_model.cfg.lyric_encoder_vocab_size
    items = [_random_item(rng, item, tw, lw, vocab) for _ in range(others)]
    at = int(rng.integers(0, others + 1))
    items.insert(at, padded)
    batch = Conditioning(**{f.name: (None if getattr(padded, f.name) is None else
                                     np.concatenate([getattr(c, f.name) for c in items]))
                            for f in dataclasses.fields(Conditioning)})
    params = [LONGER] * len(items)
    params[at] = PARAMS
    seeds = [int(s) for s in rng.integers(100, 200, len(items))]
    seeds[at] = 5
    out = np.asarray(generate(tiny_model, params, batch, seeds))[at]
    frames = seconds_to_frames(PARAMS.duration)
    assert out.shape[-1] > frames  # the item's frames were padded too
    assert_close(out[..., :frames], alone, rtol=1e-5, atol=1e-5, what="item padded and batched vs alone")
