"""The whole codec against the reference MusicDCAE (tiny DC-AE + tiny vocoder)."""

import math

import numpy as np
import pytest

from acestep_jax.codec import MusicCodec, latent_frames
from acestep_jax.codec.codec import aligned_context, dcae_context_frames, vocoder_context_frames
from acestep_jax.codec.config import DCAEConfig, VocoderConfig
from acestep_jax.convert.dcae import load_dcae
from acestep_jax.convert.vocoder import load_vocoder
from tests.helpers import assert_close, compile_events


@pytest.fixture(scope="module")
def codec(golden):
    g = golden("music_dcae")
    c = g.config
    dcae = load_dcae(g.path("dcae.safetensors"), DCAEConfig.from_dict(c["dcae"]))
    vocoder = load_vocoder(g.path("vocoder.safetensors"), VocoderConfig.from_dict(c["vocoder"]))
    model = MusicCodec.from_parts(
        dcae,
        vocoder,
        scale_factor=c["scale_factor"],
        shift_factor=c["shift_factor"],
        min_mel=c["min_mel_value"],
        max_mel=c["max_mel_value"],
    )
    return g, model


def test_encode_44k(codec):
    g, model = codec
    latents, lengths = model.encode(g.io["audio_44k"], 44100)
    assert_close(latents, g.io["latents_44k"], what="latents_44k")
    np.testing.assert_array_equal(lengths, g.io["latent_lengths"])
    assert latents.shape[-1] == latent_frames(g.io["audio_44k"].shape[-1], 44100)


def _items(decoded):
    """Golden decoded audio as ``[B, channels, samples]`` (a batch of one is stored without B)."""
    return decoded[None] if decoded.ndim == 2 else decoded


def test_decode_44k(codec):
    g, model = codec
    audio = model.decode(g.io["latents_44k"])
    assert_close(audio, _items(g.io["decoded_44k"]), what="decoded_44k")


def test_48k_through_the_same_sinc_resampler(codec):
    # The resampler reproduces torchaudio's filter, so the resampled cases agree as tightly.
    g, model = codec
    latents, _ = model.encode(g.io["audio_48k"], 48000)
    assert_close(latents, g.io["latents_48k"], what="latents_48k")
    assert latents.shape[-1] == latent_frames(g.io["audio_48k"].shape[-1], 48000)
    audio = model.decode(g.io["latents_44k"], sample_rate=48000)
    assert_close(audio, _items(g.io["decoded_48k"]), what="decoded_48k")


def test_windowed_decode_equals_plain_decode(codec):
    """Windowed decoding reproduces the plain decode everywhere, window edges included.

    Every window carries at least the receptive field of the convolutions
    (``*_context_frames``) as real context and the outer windows sit on the true
    ends, so each kept frame sees exactly the inputs it sees in the plain decode;
    the linear attention's whole-sequence sums are accumulated over the windows
    first. Only float reassociation differs (sums in another order, convolutions of
    another length), hence the 1e-5 bound instead of bitwise equality.
    """
    g, model = codec
    window, vocoder_window = 6, 64
    context = aligned_context(window, dcae_context_frames(model.dcae.config))
    vocoder_context = aligned_context(vocoder_window, vocoder_context_frames(model.vocoder.config))
    mels_per_latent = 2 ** (len(model.dcae.config.decoder_block_out_channels) - 1)
    # long enough that the middle windows carry full context on both sides, at both stages
    vocoder_frames = (vocoder_window + 2 * vocoder_context) // mels_per_latent
    frames = max(window + 2 * context, vocoder_frames) + 1
    rng = np.random.default_rng(0)
    base = g.io["latents_44k"]
    pieces = max(3, math.ceil(frames / base.shape[-1]))
    latents = np.concatenate([base[..., :: (-1) ** i] for i in range(pieces)], axis=-1)
    latents = (latents + 0.1 * rng.standard_normal(latents.shape)).astype(np.float32)
    assert context > 0 and vocoder_context > 0 and latents.shape[-1] >= frames
    plain = model.decode(latents, 48000)  # resampled on the device after the windows are joined
    windowed = model.decode(latents, 48000, window=window, vocoder_window=vocoder_window)
    assert windowed.shape == plain.shape
    assert_close(windowed, plain, rtol=1e-5, atol=1e-5, what="windowed decode")


def test_bad_inputs_are_refused(codec):
    _, model = codec
    with pytest.raises(ValueError, match="audio must be"):
        model.encode(np.zeros((2, 44100), np.float32))
    with pytest.raises(ValueError, match="latents must be"):
        model.decode(np.zeros((1, 4, 16, 3), np.float32))
    with pytest.raises(ValueError, match="num_samples"):
        latent_frames(0)


def test_latent_frames():
    assert latent_frames(4096) == 1
    assert latent_frames(4097) == 2
    assert latent_frames(48000, 48000) == latent_frames(44100, 44100) == 11


def _padded_case(g, lengths, total, seed=0):
    """Random latents near the golden ones: ``[len(lengths), 8, 16, total]``, noise past each length."""
    rng = np.random.default_rng(seed)
    base = g.io["latents_44k"][:1]
    reps = math.ceil(total / base.shape[-1])
    latents = np.concatenate([base[..., :: (-1) ** i] for i in range(reps)], axis=-1)[..., :total]
    latents = np.repeat(latents, len(lengths), axis=0)
    return (latents + 0.3 * rng.standard_normal(latents.shape)).astype(np.float32)


@pytest.mark.parametrize("sample_rate", [44100, 48000])
def test_masked_decode_equals_each_item_alone(codec, sample_rate):
    """Decoding latents padded to ``T`` with per-item lengths gives, for every item, its
    unpadded decode (every convolution sees zeros past the item's end at its own
    resolution, the vocoder's stem repeats its last frame, the attention sums skip the
    padding); the padding's contents do not matter, and the audio is zero past the end."""
    from acestep_jax.codec.codec import FRAME_SAMPLES
    from acestep_jax.codec.resample import resampled_length

    g, model = codec
    lengths, total = [3, 7, 5, 8], 8
    latents = _padded_case(g, lengths, total)
    padded = model.decode(latents, sample_rate, lengths=lengths)
    assert padded.shape[-1] == resampled_length(total * FRAME_SAMPLES, 44100, sample_rate)
    for i, n in enumerate(lengths):
        alone = model.decode(latents[i : i + 1, ..., :n], sample_rate)[0]
        m = alone.shape[-1]
        assert_close(padded[i, :, :m], alone, what=f"item {i} ({n} frames)")
        assert not padded[i, :, resampled_length(n * FRAME_SAMPLES, 44100, sample_rate) :].any()


def test_masked_windowed_decode_equals_each_item_alone(codec):
    """The windowed decode with lengths: windows sit where the padded length puts them,
    and a window crossing an item's end sees the same zeros as the plain decode's edge."""
    g, model = codec
    window, vocoder_window = 6, 64
    context = aligned_context(window, dcae_context_frames(model.dcae.config))
    total = 3 * window + 2 * context + 3
    lengths = [total, total - 5, window + 1, 2]
    latents = _padded_case(g, lengths, total, seed=1)
    padded = model.decode(latents, 48000, window=window, vocoder_window=vocoder_window, lengths=lengths)
    for i, n in enumerate(lengths):
        alone = model.decode(latents[i : i + 1, ..., :n], 48000)[0]
        assert_close(padded[i, :, : alone.shape[-1]], alone, what=f"item {i} ({n} frames)")


def test_new_lengths_at_a_padded_length_compile_nothing(codec):
    """Plain and windowed decodes with lengths depend on the padded length only."""
    g, model = codec
    total = 3 * 6 + 2 * aligned_context(6, dcae_context_frames(model.dcae.config)) + 3
    latents = _padded_case(g, [total, total], total, seed=2)
    for window in (None, 6):
        model.decode(latents, 48000, window=window, vocoder_window=64, lengths=[total, 4])
        with compile_events() as seen:
            model.decode(latents, 48000, window=window, vocoder_window=64, lengths=[total - 7, 9])
        assert not seen, f"window {window}: traced or compiled for new lengths: {seen}"


def test_windows_are_multiples_of_16_frames():
    """XLA:GPU's Triton GEMMs refuse row counts that are not multiples of 16 (the A100 target refused
    the vocoder's 1212-frame windows): contexts grow until each window is one."""
    assert aligned_context(1024, 94) == 96 and (1024 + 2 * 96) % 16 == 0
    assert aligned_context(128, 8) == 8 and aligned_context(6, 5) == 5 and aligned_context(6, 6) == 13
    assert aligned_context(7, 5) == 5  # an odd core cannot be aligned


def test_bad_lengths_are_refused(codec):
    _, model = codec
    with pytest.raises(ValueError, match="lengths must be"):
        model.decode(np.zeros((2, 8, 16, 3), np.float32), lengths=[3, 4])
    with pytest.raises(ValueError, match="lengths must be"):
        model.decode(np.zeros((2, 8, 16, 3), np.float32), lengths=[3])
