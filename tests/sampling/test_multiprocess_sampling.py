"""``sample.py`` on two processes × 4 CPU devices (two "hosts"): the batch sharded over all 8
devices gives the single-process result, and each output file is written once, by process 0."""

import json

import numpy as np
import pytest
import soundfile as sf

from tests import multiprocess

pytestmark = pytest.mark.slow

TIMEOUT_S = 400
BATCH = 8


def sample_worker(argv: list[str], latents: str) -> None:
    """``sample.py ARGV``; process 0 also saves the generated latents to ``latents``."""
    import jax

    from acestep_jax.cli.sample import main
    from acestep_jax.pipeline import ACEStepPipeline

    generate = ACEStepPipeline.generate

    def keep_latents(self, *args, **kwargs):
        result = generate(self, *args, **kwargs)
        if jax.process_index() == 0:
            np.save(latents, result.latents)
        return result

    ACEStepPipeline.generate = keep_latents
    raise SystemExit(main(argv))


def _sample(out, cache, processes: int):
    argv = ["--tiny-random", "--prompt", "rock, guitar", "--duration", "2", "--steps", "3", "--batch", str(BATCH),
            "--seeds", *map(str, range(BATCH)), "--dtype", "float32", "--shard", "--out", str(out / "song.wav"),
            "--compile-cache", str(cache), "--quiet"]
    return multiprocess.run("tests.sampling.test_multiprocess_sampling:sample_worker",
                            {"argv": argv, "latents": str(out.parent / f"latents_{processes}.npy")},
                            timeout=TIMEOUT_S, processes=processes, devices=8 // processes)


def test_two_processes_sample_like_one_and_write_each_file_once(tmp_path):
    cache = tmp_path / "xla"
    done = _sample(tmp_path / "two", cache, processes=2)
    names = [f"song_{i}.wav" for i in range(BATCH)]
    written = [[line for line in d.output.splitlines() if line.endswith(".wav")] for d in done]
    assert written[0] == [str(tmp_path / "two" / n) for n in names] and written[1] == []  # process 0 writes all
    files = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert files == sorted(names + [n.replace(".wav", ".json") for n in names])

    _sample(tmp_path / "one", cache, processes=1)
    two, one = np.load(tmp_path / "latents_2.npy"), np.load(tmp_path / "latents_1.npy")
    assert two.shape == (BATCH, 8, 16, 21) and np.abs(one).max() > 0  # 2 s of latent frames
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-5)
    for n in names:
        two, rate = sf.read(tmp_path / "two" / n, dtype="float32")
        one, _ = sf.read(tmp_path / "one" / n, dtype="float32")
        assert rate == 48000 and two.shape == one.shape and np.abs(one).max() > 0
        # the random tiny codec turns the latents' last-digit differences into a few larger
        # local ones (seen: 78 of 187,246 samples in one file), so most samples must agree
        close = np.isclose(two, one, rtol=1e-4, atol=1e-4)
        assert close.mean() > 0.999, (n, close.mean())
    first = json.loads((tmp_path / "two" / "song_3.json").read_text())
    assert first["seeds"] == list(range(BATCH)) and first["output"]["index"] == 3  # a coupled batch
