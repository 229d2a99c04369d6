"""Property-based fuzzing of SamplingParams: any values either validate and set up a run, or raise UsageError."""

import dataclasses

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from acestep_jax.errors import UsageError
from acestep_jax.sampling import Conditioning, Noise, SamplingParams, prepare
from acestep_jax.sampling.params import SOURCE_TASKS, TASKS

FIELDS = {f.name: f.default for f in dataclasses.fields(SamplingParams)}
ANY_JSON = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=8) \
    | st.lists(st.integers(-5, 300), max_size=4)
# plausible values per field, so that some examples pass validation and exercise the set-up
PLAUSIBLE = {
    "task": st.sampled_from(TASKS), "scheduler_type": st.sampled_from(["euler", "heun", "pingpong"]),
    "cfg_type": st.sampled_from(["apg", "cfg", "cfg_star"]), "infer_steps": st.integers(1, 12),
    "duration": st.floats(0.05, 3.0), "oss_steps": st.lists(st.integers(1, 12), max_size=3).map(tuple),
    "n_avg": st.integers(1, 3), "zero_steps": st.integers(0, 3), "retake_variance": st.floats(0.0, 1.0),
    "guidance_interval": st.floats(0.0, 1.0), "guidance_interval_decay": st.floats(0.0, 1.0),
    "repaint_start": st.floats(-1.0, 1.0), "repaint_end": st.floats(0.0, 3.0),
    "ref_audio_strength": st.floats(0.0, 0.95), "n_min": st.floats(0.0, 0.5), "n_max": st.floats(0.5, 1.0),
}


def _plausible(name):
    default = FIELDS[name]
    if name in PLAUSIBLE:
        return PLAUSIBLE[name]
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, float):
        return st.floats(-1.0, 20.0)
    return st.just(default)


# mostly plausible values (so many examples validate and exercise the set-up), plus up to two
# fields holding arbitrary JSON values
PARAMS = st.builds(
    lambda good, bad: {**good, **bad},
    st.fixed_dictionaries({}, optional={name: _plausible(name) for name in FIELDS}),
    st.dictionaries(st.sampled_from(sorted(FIELDS)), ANY_JSON, max_size=2),
)


def _cond(frames: int) -> Conditioning:
    ids = np.ones((1, 4), np.int32)
    return Conditioning(text=np.zeros((1, 3, 8), np.float32), text_mask=np.ones((1, 3), np.int32),
                        lyric_ids=ids, lyric_mask=ids, src_latents=np.zeros((1, 8, 16, frames), np.float32),
                        target_text=np.zeros((1, 3, 8), np.float32), target_text_mask=np.ones((1, 3), np.int32),
                        target_lyric_ids=ids, target_lyric_mask=ids)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(PARAMS)
def test_sampling_params_fuzz(values):
    try:
        params = SamplingParams(**values)
        source = 20 if params.task in SOURCE_TASKS else None
        params.validate(source)
    except UsageError:
        return
    cond = _cond(20)
    if params.task not in SOURCE_TASKS:
        cond = dataclasses.replace(cond, src_latents=None)
    _, inputs, frames = prepare(params, cond, Noise.from_seeds([1]))
    assert frames >= 1 and inputs.latents.x.shape[0] == 1
    assert inputs.schedule.timesteps.shape[0] == inputs.items.scale.shape[1]
