"""The grain input pipeline: shard per host, shuffle, crop, pad to buckets, batch.

Iteration is deterministic for a seed and resumable: the iterator's ``get_state()`` is saved
with each checkpoint and restored with ``set_state()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import grain
import numpy as np

from acestep_jax.codec.codec import LATENT_CHANNELS, LATENT_HEIGHT
from acestep_jax.models.transformer import TransformerConfig
from acestep_jax.training.config import DataSection
from acestep_jax.training.records import PROMPT_PREFIX, PROMPT_WEIGHTS, SSL_PREFIX


def pad_length(n: int, buckets: Sequence[int], multiple: int) -> int:
    """The first bucket ≥ ``n`` (``n`` rounded up to ``multiple`` when none fits or no buckets)."""
    for b in sorted(buckets):
        if b >= n:
            return b
    return max(multiple, math.ceil(n / multiple) * multiple)


def choose_prompt(ex: dict, rng: np.random.Generator) -> dict:
    """One of an example's prompt variants as its ``text_states``, drawn by ``prompt_weights``
    (the reference's recipe draws a prompt each time it reads a song); no draw without variants."""
    names = ["text_states", *sorted((k for k in ex if k.startswith(PROMPT_PREFIX)),
                                    key=lambda k: int(k[len(PROMPT_PREFIX):]))]
    if len(names) == 1:
        return ex
    weights = np.asarray(ex.get(PROMPT_WEIGHTS, np.ones(len(names))), np.float64)
    pick = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    out = {k: v for k, v in ex.items() if not k.startswith(PROMPT_PREFIX) and k != PROMPT_WEIGHTS}
    out["text_states"] = ex[pick]
    return out


def weighted(source) -> grain.MapDataset:
    """``source`` as a dataset where an example of weight ``w`` (``source.weights()``) appears ``w`` times:
    a dataset's repeats of one song, kept as one record."""
    ds = grain.MapDataset.source(source)
    weights = source.weights() if hasattr(source, "weights") else None
    if weights is None or np.all(weights == 1):
        return ds
    index = np.repeat(np.arange(len(source)), weights)
    return grain.MapDataset.range(len(index)).map(lambda j: source[int(index[j])])


def crop_example(ex: dict, rng: np.random.Generator, max_frames: int) -> dict:
    """Random window of at most ``max_frames`` latent frames; SSL features are cut to the same span."""
    t = ex["latents"].shape[-1]
    if t <= max_frames:
        return ex
    start = int(rng.integers(0, t - max_frames + 1))
    out = dict(ex)
    out["latents"] = ex["latents"][..., start : start + max_frames]
    for k, v in ex.items():
        if k.startswith(SSL_PREFIX):
            s = v.shape[0]
            a = (start * s) // t
            b = min(s, -(-((start + max_frames) * s) // t))
            out[k] = v[a:b]
    return out


def collate(examples: Sequence[dict], cfg: DataSection, ssl_names: Sequence[str] = ()) -> dict:
    """Pad a list of examples into a batch of fixed, bucketed shapes (see :mod:`.loss` for keys)."""
    b = len(examples)
    lens = [min(e["latents"].shape[-1], cfg.max_frames) for e in examples]
    t = pad_length(max(lens), cfg.frame_buckets, cfg.pad_multiple)
    latents = np.zeros((b, LATENT_CHANNELS, LATENT_HEIGHT, t), np.float32)
    frame_mask = np.zeros((b, t), np.int32)
    text_lens = [min(len(e["text_states"]), cfg.max_text_tokens) for e in examples]
    lt = min(pad_length(max(text_lens), (), cfg.pad_multiple), max(cfg.max_text_tokens, 1))
    width = examples[0]["text_states"].shape[-1]
    text = np.zeros((b, lt, width), np.float32)
    text_mask = np.zeros((b, lt), np.int32)
    lyr_lens = [min(len(e["lyric_ids"]), cfg.max_lyric_tokens) for e in examples]
    ll = min(pad_length(max(lyr_lens), (), cfg.pad_multiple), max(cfg.max_lyric_tokens, 1))
    lyric_ids = np.zeros((b, ll), np.int32)
    lyric_mask = np.zeros((b, ll), np.int32)
    speaker = np.stack([np.asarray(e["speaker"], np.float32) for e in examples])
    for i, e in enumerate(examples):
        latents[i, ..., : lens[i]] = e["latents"][..., : lens[i]]
        frame_mask[i, : lens[i]] = 1
        text[i, : text_lens[i]] = e["text_states"][: text_lens[i]]
        text_mask[i, : text_lens[i]] = 1
        lyric_ids[i, : lyr_lens[i]] = e["lyric_ids"][: lyr_lens[i]]
        lyric_mask[i, : lyr_lens[i]] = 1
    batch = {
        "latents": latents, "frame_mask": frame_mask, "text_states": text, "text_mask": text_mask,
        "speaker": speaker, "lyric_ids": lyric_ids, "lyric_mask": lyric_mask,
    }
    for name in ssl_names:
        key = SSL_PREFIX + name
        present = [key in e for e in examples]
        if not any(present):
            continue
        feats = [e.get(key) for e in examples]
        dim = next(f for f in feats if f is not None).shape[-1]
        s = pad_length(max(len(f) for f in feats if f is not None), (), cfg.pad_multiple)
        arr = np.zeros((b, s, dim), np.float32)
        lengths = np.zeros((b,), np.int32)
        for i, f in enumerate(feats):
            if f is not None:
                arr[i, : len(f)] = f
                lengths[i] = len(f)
        batch[key] = arr
        batch[f"ssl_len/{name}"] = lengths
    return batch


def check_compatible(example: dict, model_cfg, where: str = "training data") -> None:
    """Raise ``ValueError`` when an example does not fit the transformer (widths, vocabulary)."""
    text = example["text_states"].shape[-1]
    if text != model_cfg.text_embedding_dim:
        raise ValueError(f"{where}: prompt states are {text} wide but the transformer expects "
                         f"{model_cfg.text_embedding_dim} (records made with another text encoder?)")
    if len(example["speaker"]) != model_cfg.speaker_embedding_dim:
        raise ValueError(f"{where}: speaker embedding has {len(example['speaker'])} values, "
                         f"expected {model_cfg.speaker_embedding_dim}")
    top = int(np.max(example["lyric_ids"]))
    if top >= model_cfg.lyric_encoder_vocab_size:
        raise ValueError(f"{where}: lyric id {top} outside the vocabulary of {model_cfg.lyric_encoder_vocab_size}")
    for name, dim in zip(model_cfg.ssl_names, model_cfg.ssl_latent_dims):
        feats = example.get(SSL_PREFIX + name)
        if feats is not None and feats.shape[-1] != dim:
            raise ValueError(f"{where}: SSL features {name!r} are {feats.shape[-1]} wide, the projector gives {dim}")


def make_dataset(
    source,
    cfg: DataSection,
    *,
    batch_size: int,
    micro_batches: int = 1,
    ssl_names: Sequence[str] = (),
    shard: grain.sharding.ShardOptions | None = None,
) -> grain.IterDataset:
    """An endless iterable of this host's collated batches of ``batch_size`` examples.

    ``source`` is any random-access sequence of examples (e.g. :class:`RecordSource`).
    The examples form one global stream, shuffled with ``cfg.seed`` (a new order each
    epoch) and randomly cropped per position. Each host's batch holds ``micro_batches``
    micro-batches; a global micro-batch is the hosts' micro-batches side by side
    (host 0 first), taken from consecutive stream positions. So every host reads only its
    own examples, and the global batches are the same whatever the number of hosts.
    ``shard`` names this host (default: this JAX process of all of them).
    """
    if shard is None:
        import jax

        shard = grain.sharding.ShardOptions(jax.process_index(), jax.process_count())
    if batch_size % micro_batches:
        raise ValueError(f"batch size {batch_size} does not split into {micro_batches} micro-batches")
    if len(source) < 1:
        raise ValueError("the training data holds no examples")
    stream = weighted(source).shuffle(seed=cfg.seed).repeat(None)
    stream = stream.random_map(lambda ex, rng: crop_example(choose_prompt(ex, rng), rng, cfg.max_frames),
                               seed=cfg.seed + 1)
    micro = batch_size // micro_batches  # per host
    hosts, host = shard.shard_count, shard.shard_index

    def stream_position(k: int) -> int:  # this host's k-th example → its global stream position
        step, p = divmod(k, batch_size)
        i, r = divmod(p, micro)
        return (step * micro_batches + i) * micro * hosts + host * micro + r

    ds = grain.MapDataset.range(len(stream) // hosts).map(lambda k: stream[stream_position(k)])
    ds = ds.batch(batch_size, drop_remainder=True, batch_fn=lambda exs: collate(exs, cfg, ssl_names))
    opts = grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=cfg.prefetch)
    return ds.to_iter_dataset(opts)


def pad_batch(batch: dict, shapes: dict) -> dict:
    """``batch`` zero-padded to ``shapes`` (key → shape, each dimension ≥ the batch's): masks
    and lengths mark the padding, so the loss is unchanged. Hosts pad to a shape they agree on."""
    out = {}
    for k, x in batch.items():
        pad = [(0, int(t) - s) for s, t in zip(x.shape, shapes[k], strict=True)]
        out[k] = np.pad(x, pad) if any(p for _, p in pad) else x
    return out


def synthetic_examples(
    n: int,
    *,
    text_dim: int,
    ssl_dims: dict[str, int] | None = None,
    lyric_vocab: int = 300,
    frames: tuple[int, int] = (8, 24),
    text_tokens: tuple[int, int] = (3, 12),
    lyric_tokens: tuple[int, int] = (2, 20),
    speaker_dim: int = TransformerConfig.speaker_embedding_dim,
    seed: int = 0,
) -> list[dict]:
    """Random examples with learnable structure (latents depend on the prompt), for smoke tests.

    Lengths are drawn uniformly from the inclusive ``(min, max)`` ranges; SSL features get
    2.5 frames per latent frame.
    """
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((text_dim, LATENT_CHANNELS * LATENT_HEIGHT)).astype(np.float32) / np.sqrt(text_dim)
    out = []
    for i in range(n):
        t = int(rng.integers(frames[0], frames[1] + 1))
        lt = int(rng.integers(text_tokens[0], text_tokens[1] + 1))
        text = rng.standard_normal((lt, text_dim)).astype(np.float32)
        mean = (text.mean(0) @ basis).reshape(LATENT_CHANNELS, LATENT_HEIGHT, 1)
        wave = np.sin(np.arange(t, dtype=np.float32) * (0.3 + 0.1 * (i % 5)))[None, None]
        latents = (mean + 0.5 * wave * mean + 0.1 * rng.standard_normal((LATENT_CHANNELS, LATENT_HEIGHT, t))).astype(np.float32)
        ex = {
            "latents": latents,
            "text_states": text,
            "lyric_ids": rng.integers(1, lyric_vocab, int(rng.integers(lyric_tokens[0], lyric_tokens[1] + 1))).astype(np.int32),
            "speaker": np.zeros((speaker_dim,), np.float32),
            "key": f"synthetic-{i}",
            "prompt": f"synthetic prompt {i}",
            "lyrics": "",
        }
        for name, dim in (ssl_dims or {}).items():
            ex[SSL_PREFIX + name] = rng.standard_normal((int(t * 2.5), dim)).astype(np.float32)
        out.append(ex)
    return out
