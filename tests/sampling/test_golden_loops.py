"""Whole sampling loops against the reference pipeline (golden/pipeline), replaying its draws."""

import dataclasses
import json

import numpy as np
import pytest

from acestep_jax.sampling import Noise, SamplingParams, generate
from tests.helpers import Golden, assert_close, golden_root, require_cases
from tests.sampling.conftest import make_cond

# keyword defaults of the reference's text2music_diffusion_process / flowedit, which the
# golden harness called directly (the public __call__ has other defaults)
PROCESS_DEFAULTS = {
    "cfg_type": "apg", "guidance_interval": 0.5, "guidance_interval_decay": 1.0, "min_guidance_scale": 3.0,
    "omega_scale": 10.0, "use_erg_tag": False, "use_erg_lyric": False, "use_erg_diffusion": False,
    "retake_variance": 0.5, "n_min": 0.0, "n_max": 1.0, "n_avg": 1,
}


def _cases():
    path = golden_root() / "pipeline" / "config.json"
    if not path.is_file():
        raise RuntimeError(f"golden pipeline config not found at {path}")
    return require_cases(json.loads(path.read_text()).get("cases"), f"pipeline cases ({path})")


def case_params(kwargs: dict, duration: float) -> SamplingParams:
    kw = dict(kwargs)
    task = kw.pop("_task", "text2music")
    kw.pop("_seed")
    use_null = kw.pop("_use_null_text", False)
    if kw.pop("audio2audio_enable", False):
        task = "audio2audio"
    kw.pop("add_retake_noise", None)  # implied by the task
    if "oss_steps" in kw:
        kw["oss_steps"] = tuple(kw["oss_steps"])
    return SamplingParams(**{**PROCESS_DEFAULTS, "task": task, "duration": duration, "use_erg_tag": use_null, **kw})


def case_noise(io: dict, name: str, params: SamplingParams) -> Noise:
    """The recorded draws in call order: randn_tensor (initial/retake/edit forward) and
    normal_ (pingpong per-step)."""
    keys = sorted(k for k in io if k.startswith(f"{name}__draw"))
    randn = [io[k] for k in keys if k.endswith("_randn_tensor")]
    normal = [io[k] for k in keys if k.endswith("_normal_")]
    assert len(randn) + len(normal) == len(keys), keys
    if params.task == "edit":
        return Noise(edit_forward=np.stack(randn), edit_steps=np.stack(normal) if normal else None)
    kw = {"initial": randn[0], "retake": randn[1] if len(randn) > 1 else None}
    return Noise(steps=np.stack(normal) if normal else None, **kw)


def _case_cond(io: dict, name: str, params: SamplingParams):
    cond = make_cond(io, src=params.task != "text2music")
    if params.task == "edit":
        target_ids = io[f"{name}__target_lyric_ids"]
        cond = dataclasses.replace(
            cond,
            target_text=io[f"{name}__target_text"],
            target_text_mask=io["text_attention_mask"],
            target_lyric_ids=target_ids,
            target_lyric_mask=np.ones_like(target_ids),
            target_speaker=io["speaker_embds"],
        )
    return cond


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_pipeline_case(tiny_model, pipeline_golden: Golden, case):
    io, name = pipeline_golden.io, case["name"]
    params = case_params(case["kwargs"], pipeline_golden.config["duration"])
    out = generate(tiny_model, params, _case_cond(io, name, params), case_noise(io, name, params))
    assert_close(out, io[f"{name}__out"], rtol=1e-3, atol=1e-3, what=name)


@pytest.mark.parametrize("case", [c for c in _cases() if c["kwargs"].get("_task") == "edit"], ids=lambda c: c["name"])
def test_padded_edit_case(tiny_model, pipeline_golden: Golden, case, monkeypatch):
    """The edit loop pads (and masks) frames as the others do: on GPU (to a multiple of 16) and
    bucketed, it still replays the reference's edit."""
    from acestep_jax.sampling import tasks

    io, name = pipeline_golden.io, case["name"]
    params = case_params(case["kwargs"], pipeline_golden.config["duration"])
    cond = _case_cond(io, name, params)
    frames = np.asarray(cond.src_latents).shape[-1]
    monkeypatch.setattr(tasks, "frame_multiple", lambda platform: 16)
    for p in (params, params.replace(bucket=True)):
        padded = tasks.prepare(p, cond, case_noise(io, name, p), 16)[1].latents.x.shape[-1]
        assert padded > frames, "the golden source length is already a multiple: nothing is padded"
        out = generate(tiny_model, p, cond, case_noise(io, name, p))
        assert_close(out, io[f"{name}__out"], rtol=1e-3, atol=1e-3, what=f"{name} padded to {padded}")
