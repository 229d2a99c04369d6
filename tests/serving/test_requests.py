"""Request parsing: the project's format, the reference's, the one mapping table, errors naming fields."""

import numpy as np
import pytest
import soundfile as sf

from acestep_jax.sampling import SamplingParams
from acestep_jax.serving.requests import (
    BY_REFERENCE,
    FIELDS,
    SERVER_LIMITS,
    Limits,
    RequestError,
    parse_request,
    with_local_checks,
)

# an input_params record as the reference pipeline writes it (every key it writes)
REFERENCE_RECORD = {
    "format": "wav", "lora_name_or_path": "none", "lora_weight": 1.0, "task": "text2music",
    "prompt": "funk, bass", "lyrics": "[verse]\nla", "audio_duration": 30.5, "infer_step": 27,
    "guidance_scale": 15, "scheduler_type": "euler", "cfg_type": "apg", "omega_scale": 10,
    "guidance_interval": 0.3, "guidance_interval_decay": 0, "min_guidance_scale": 3, "use_erg_tag": True,
    "use_erg_lyric": False, "use_erg_diffusion": True, "oss_steps": [], "timecosts": {"diffusion": 1.0},
    "actual_seeds": [3826585269], "retake_seeds": [2907904223], "retake_variance": 0.5,
    "guidance_scale_text": 0, "guidance_scale_lyric": 0, "repaint_start": 0, "repaint_end": 0,
    "edit_n_min": 0.0, "edit_n_max": 1.0, "edit_n_avg": 1, "src_audio_path": None, "edit_target_prompt": None,
    "edit_target_lyrics": None, "audio2audio_enable": False, "ref_audio_strength": 0.5, "ref_audio_input": None,
    "audio_path": "./outputs/output_0.wav",
}


def _rng():
    return np.random.default_rng(0)


def test_reference_record_maps_onto_the_projects_fields():
    r = parse_request(REFERENCE_RECORD)
    assert r.reference and r.seeds == (3826585269,) and r.retake_seeds == (2907904223,)
    p = r.params
    assert (p.duration, p.infer_steps, p.guidance_interval, p.use_erg_lyric) == (30.5, 27, 0.3, False)
    assert p.bucket and p.batch_invariant and r.lora == () and r.src_audio is None
    # the same request in the project's names gives the same request
    own = parse_request(r.to_dict())
    assert own == r and not own.reference


def test_every_reference_name_is_mapped_once():
    names = [f.reference for f in FIELDS if f.reference]
    assert len(names) == len(set(names))
    assert set(BY_REFERENCE) <= set(REFERENCE_RECORD) | {"batch_size"}


def test_seeds_and_outputs():
    assert parse_request({"prompt": "x", "seeds": [1, 2, 3]}).seeds == (1, 2, 3)
    r = parse_request({"prompt": "x", "batch_size": 2}, rng=_rng())
    assert r.count == 2 and len(set(r.seeds)) == 2 and r.seeds == parse_request(
        {"prompt": "x", "batch_size": 2}, rng=_rng()).seeds
    # the reference: batch_size outputs (default 1), seed i or the last one
    assert parse_request({"prompt": "x", "actual_seeds": [4, 5]}).seeds == (4,)
    assert parse_request({"prompt": "x", "manual_seeds": "4, 5", "batch_size": 3}).seeds == (4, 5, 5)
    with pytest.raises(RequestError, match="batch_size: is 3 but 2 seeds"):
        parse_request({"prompt": "x", "seeds": [1, 2], "batch_size": 3})
    with pytest.raises(RequestError, match="retake_seeds: has 1 entries for 2 outputs"):
        parse_request({"prompt": "x", "seeds": [1, 2], "retake_seeds": [1]})
    with pytest.raises(RequestError, match="given twice"):
        parse_request({"prompt": "x", "actual_seeds": [1], "manual_seeds": [2]})


def test_reference_random_duration_is_drawn_and_recorded():
    r = parse_request({"prompt": "x", "audio_duration": -1}, Limits(max_duration=100.0), rng=_rng())
    assert 30.0 <= r.params.duration <= 100.0
    assert parse_request(r.to_dict()).params.duration == r.params.duration
    with pytest.raises(RequestError, match="duration: must be in"):
        parse_request({"prompt": "x", "duration": -1})  # only the reference's format draws one


@pytest.mark.parametrize("data, message", [
    ({"prompt": "x", "nope": 1}, "nope: unknown key"),
    ({"prompt": "x", "audio_duration": 3, "infer_steps": 2}, "infer_steps: is this project's name"),
    ({"prompt": "x", "audio_duration": float("nan")}, "audio_duration: must be a finite number, got nan"),
    ({"prompt": "x", "infer_step": 1000}, "infer_step: must be at most 200"),
    ({"prompt": "x", "duration": 300}, "duration: must be in (0, 240]"),
    ({"prompt": "x", "guidance_interval": 1.5}, "guidance_interval: must be in [0, 1], got 1.5"),
    ({"prompt": "x", "omega_scale": "10"}, "omega_scale: must be a finite number, got a string ('10')"),
    ({"prompt": "x", "use_erg_tag": 1}, "use_erg_tag: must be true or false, got an integer"),
    ({"prompt": "x", "infer_steps": 2.5}, "infer_steps: must be an integer, got 2.5"),
    ({"prompt": "x", "seeds": [1, -2]}, "seeds[1]: must be in [0, 4294967295], got -2"),
    ({"prompt": "x", "oss_steps": [3, 5], "scheduler_type": "heun"}, "oss_steps: oss_steps cannot be used"),
    ({"prompt": "x", "scheduler_type": "ddim"}, "scheduler_type: must be one of euler, heun, pingpong"),
    ({"prompt": "x", "format": "aiff"}, "format: must be one of wav, flac, ogg, mp3"),
    ({"prompt": "x", "sample_rate": 7}, "sample_rate: must be in [8000, 192000], got 7"),
    ({"prompt": "x", "name": "../up"}, "name: must be 1-100 letters"),
    ({"prompt": "x", "zero_steps": 9, "infer_steps": 5}, "zero_steps: must be at most infer_steps"),
    ({"prompt": "x", "task": "edit", "src_audio": "a.wav"}, "target_prompt: and the target lyrics are required"),
    ({"prompt": "x", "task": "repaint"}, "src_audio: is required by task 'repaint'"),
    ({"prompt": "x", "src_audio_path": "a.wav"}, "src_audio_path: is not used by task 'text2music'"),
    ({"prompt": "x", "audio2audio_enable": True}, "audio2audio_enable: needs ref_audio_input"),
    ({"prompt": "x", "ref_audio_input": "a.wav"}, "ref_audio_input: is only read with audio2audio_enable"),
    ({"prompt": "x", "lora_weight": 0.5}, "lora_weight: is given without lora"),
    ({"prompt": "x", "output": 1, "audio_duration": 2}, "output: is this project's name"),
    ({"prompt": None}, "prompt: must not be null"),
    ({"lyrics": "x"}, "prompt: is required"),
    ("text", "body: must be a JSON object, got a string"),
])
def test_errors_name_the_field(data, message):
    with pytest.raises(RequestError) as e:
        parse_request(data, rng=_rng())
    assert str(e.value).startswith(message), str(e.value)


def test_server_limits():
    for data, field in (({"prompt": "x", "task": "repaint", "src_audio": "a.wav"}, "src_audio"),
                        ({"prompt": "x", "task": "audio2audio"}, "src_upload"),
                        ({"prompt": "x", "task": "repaint", "src_upload": "a.wav"}, "src_upload"),
                        ({"prompt": "x", "lora": "/x"}, "lora"),
                        ({"prompt": "x", "lyrics": "a" * 20001}, "lyrics"),
                        ({"prompt": "x", "seeds": list(range(9))}, "seeds"),
                        ({"prompt": "x", "checkpoint_path": "/x"}, "checkpoint_path"),
                        ({"prompt": "x", "save_path": "/x"}, "save_path")):
        with pytest.raises(RequestError) as e:
            parse_request(data, SERVER_LIMITS)
        assert e.value.field == field
    with pytest.raises(RequestError, match="sample_rate: must be one of 16000, "):
        parse_request({"prompt": "x", "sample_rate": 44101}, SERVER_LIMITS)
    r = parse_request({"prompt": "x", "task": "retake", "retake_variance": 0.2, "bf16": False, "debug": True},
                      SERVER_LIMITS)
    assert r.params.task == "retake" and r.params.retake_variance == 0.2
    upload = "ab" * 16
    r = parse_request({"prompt": "x", "task": "repaint", "src_upload": upload, "repaint_end": 1.0}, SERVER_LIMITS)
    assert r.src_upload == upload and r.source is None and r.to_dict()["src_upload"] == upload
    with pytest.raises(RequestError, match="src_upload: is only taken by the HTTP server"):
        parse_request({"prompt": "x", "task": "repaint", "src_upload": upload})
    allowed = Limits(local_paths=False, loras=("owner/lora",))
    assert parse_request({"prompt": "x", "lora": "owner/lora"}, allowed).lora[0].path == "owner/lora"
    with pytest.raises(RequestError, match="is not one of this server's LoRAs: owner/lora"):
        parse_request({"prompt": "x", "lora": "owner/other"}, allowed)


def test_source_tasks_check_their_audio(tmp_path):
    src = tmp_path / "src.wav"
    sf.write(src, np.zeros((44100 * 2, 2), np.float32), 44100)
    ok = with_local_checks(parse_request({"prompt": "x", "task": "repaint", "src_audio": str(src),
                                          "repaint_start": 0.5, "repaint_end": 1.5}))
    assert ok.params.task == "repaint" and ok.params.duration == SamplingParams.duration
    a2a = parse_request({"prompt": "x", "audio2audio_enable": True, "ref_audio_input": str(src)})
    assert a2a.params.task == "audio2audio" and a2a.src_audio == str(src)
    with pytest.raises(RequestError, match="repaint_start: repaint window"):
        with_local_checks(parse_request({"prompt": "x", "task": "repaint", "src_audio": str(src),
                                         "repaint_start": 1, "repaint_end": 9}))
    with pytest.raises(RequestError, match="lora_name_or_path: /nonexistent/lora does not exist"):
        with_local_checks(parse_request({"prompt": "x", "lora_name_or_path": "/nonexistent/lora"}))
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros((8000 * 241, 1), np.float32), 8000)
    with pytest.raises(RequestError, match=r"src_audio: .*long.wav is 241.0 s long; source audio may be at most 240 s"):
        with_local_checks(parse_request({"prompt": "x", "task": "extend", "src_audio": str(long)}))
    assert with_local_checks(ok, tmp_path).src_audio == str(src)  # absolute paths stay
    rel = with_local_checks(parse_request({"prompt": "x", "task": "repaint", "src_audio": "src.wav",
                                           "repaint_start": 0.5, "repaint_end": 1.5}), tmp_path)
    assert rel.src_audio == str(tmp_path / "src.wav")
    with pytest.raises(RequestError, match="src_audio_path: .*missing.wav does not exist"):
        with_local_checks(parse_request({"prompt": "x", "task": "repaint", "src_audio_path": str(tmp_path / "missing.wav"),
                                         "repaint_end": 1}))


def test_a_reference_record_naming_a_lora_by_hub_id():
    record = {**REFERENCE_RECORD, "lora_name_or_path": "ACE-Step/ACE-Step-v1-chinese-rap-LoRA", "lora_weight": 0.8}
    r = with_local_checks(parse_request(record))
    assert [(s.path, s.weight) for s in r.lora] == [("ACE-Step/ACE-Step-v1-chinese-rap-LoRA", 0.8)]
    assert parse_request(r.to_dict()).lora == r.lora
