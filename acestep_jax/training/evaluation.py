"""Evaluation hooks for :class:`~acestep_jax.training.trainer.Trainer` (``run.eval_fn``).

A hook is ``fn(trainer, step)``, called on every host every ``run.eval_every`` steps.
:func:`sample_latents` samples with the current weights from the conditions of the first
training examples, like the reference trainer's periodic ``predict_step`` (APG, guidance 15,
omega 10, Euler, no ERG), and writes the latents (and prompts) to
``<output_dir>/eval/step_<N>/``; decode them with ``sample.py``'s codec or
:meth:`acestep_jax.codec.MusicCodec.decode`.
"""

from __future__ import annotations

import json
import os

import numpy as np

from acestep_jax.codec import frames_to_seconds
from acestep_jax.training.data import collate

NUM_SAMPLES = 2
INFER_STEPS = 60
SEED = 1234


def sample_latents(trainer, step: int, *, num: int = NUM_SAMPLES, infer_steps: int = INFER_STEPS) -> str:
    """Sample ``num`` clips as long as the first ``num`` training examples; returns the output folder."""
    import jax

    from acestep_jax.sampling import Conditioning, SamplingParams, generate

    examples = [trainer.source[i] for i in range(min(num, len(trainer.source)))]
    batch = collate(examples, trainer.cfg.data, ())
    frames = int(batch["frame_mask"].sum(1).max())
    params = SamplingParams(
        duration=frames_to_seconds(frames + 0.5), infer_steps=infer_steps, guidance_scale=15.0, omega_scale=10.0,
        scheduler_type="euler", cfg_type="apg", guidance_interval=1.0,
        use_erg_tag=False, use_erg_lyric=False, use_erg_diffusion=False,
    )
    cond = Conditioning(
        text=batch["text_states"], text_mask=batch["text_mask"], lyric_ids=batch["lyric_ids"],
        lyric_mask=batch["lyric_mask"], speaker=batch["speaker"],
    )
    seeds = [SEED + i for i in range(len(examples))]
    latents = generate(trainer.current_model(), params, cond, noise=seeds)
    latents = np.asarray(jax.device_get(latents))
    folder = os.path.join(trainer.cfg.run.output_dir, "eval", f"step_{step}")
    if jax.process_index() == 0:
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, ".tmp-latents.npy")
        np.save(tmp, latents)
        os.replace(tmp, os.path.join(folder, "latents.npy"))
        meta = [{"key": e.get("key", ""), "prompt": e.get("prompt", ""), "lyrics": e.get("lyrics", ""), "seed": s}
                for e, s in zip(examples, seeds)]
        with open(os.path.join(folder, "samples.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, ensure_ascii=False)
    return folder
