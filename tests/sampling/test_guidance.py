"""Guidance variants against the reference (golden/guidance) and the guidance interval."""

import numpy as np

from acestep_jax.sampling import guidance as G
from tests.helpers import assert_close, golden_matches


def test_apg_momentum(golden):
    g = golden("guidance")
    io, scale = g.io, g.config["apg"]["guidance_scale_momentum_cases"]
    calls = sorted(int(i) for (i,) in golden_matches("guidance", r"apg_momentum_(\d+)"))
    assert calls == list(range(len(calls))), calls  # consecutive calls sharing one momentum buffer
    buf = G.apg_momentum_init(io["cond_0"])
    for i in calls:
        out, buf = G.apg(io[f"cond_{i}"], io[f"uncond_{i}"], scale, buf)
        assert_close(out, io[f"apg_momentum_{i}"], what=f"apg_momentum_{i}")


def test_apg_cfg_star_double(golden):
    g = golden("guidance")
    io, c = g.io, g.config
    cond, uncond = io["cond_0"], io["uncond_0"]
    assert_close(G.apg(cond, uncond, c["apg"]["guidance_scale_no_momentum"]), io["apg_no_momentum"], what="apg")
    assert_close(G.cfg(cond, uncond, c["cfg_scale"]), io["cfg"], what="cfg")
    star = c["cfg_star"]
    for (step,) in golden_matches("guidance", r"cfg_star_i(\d+)"):
        out = G.cfg_zero_star(cond, uncond, star["scale"], int(step), star["zero_steps"])
        assert_close(out, io[f"cfg_star_i{step}"], what=f"cfg_star_i{step}")
    d = c["double_condition"]
    out = G.double_condition(cond, uncond, io[d["only_text_cond"]], d["text"], d["lyric"])
    assert_close(out, io["double_condition"], what="double_condition")


def test_guidance_schedule():
    s = G.guidance_schedule(10, 15.0, guidance_interval=0.5)
    np.testing.assert_array_equal(s.active, [False] * 2 + [True] * 5 + [False] * 3)
    np.testing.assert_allclose(s.scale, 15.0)
    s = G.guidance_schedule(6, 7.0, 1.0, guidance_interval_decay=1.0, min_guidance_scale=3.0, length=11)
    np.testing.assert_array_equal(s.active, [True] * 6 + [False] * 5)
    np.testing.assert_allclose(s.scale[:6], np.linspace(7.0, 3.0, 6), rtol=1e-6)
    # a one-step interval with decay keeps the full scale (the reference divides by zero)
    s = G.guidance_schedule(2, 7.0, 0.5, guidance_interval_decay=1.0)
    assert s.active.sum() == 1 and np.allclose(s.scale[s.active], 7.0)
