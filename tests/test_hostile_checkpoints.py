"""Hostile and broken checkpoints: no loading path runs pickled code, broken files fail with clear errors,
and what tinyclap writes is never a pickle (docs/robustness.md, "Checkpoints").

A hostile pickle here is a real one: loading it with `torch.load(weights_only=False)` creates a marker
file (`test_payloads_are_live` proves it), so "the marker does not exist afterwards" means "the code did not
run", not "the payload was broken".
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import shlex
import shutil
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helpers
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tinyclap.models import load_model, load_student, save_student
from tinyclap.models.checkpoint import CheckpointError, read_model, safe_torch_load
from tinyclap.models.students import create_student
from tinyclap.models.teacher import CLAPTeacher, TeacherConfig, load_teacher, save_teacher

STUDENT = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"


# --- hostile payloads -----------------------------------------------------------------------------------


class ShellPayload:
    """Unpickling this runs `os.system("touch MARKER")`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


class TouchPayload:
    """Unpickling this calls `pathlib.Path(MARKER).touch()` (no shell involved)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _checkpoint(payload: Any) -> dict[str, Any]:
    # looks like an MS CLAP checkpoint: {"model": state_dict}, with the payload hidden inside
    return {"model": {"audio_encoder.projection.linear1.weight": torch.zeros(2, 2), "x": payload}}


def _torch_zip(path: Path, marker: Path) -> None:
    torch.save(_checkpoint(ShellPayload(marker)), path)


def _torch_zip_touch(path: Path, marker: Path) -> None:
    torch.save(_checkpoint(TouchPayload(marker)), path)


def _torch_legacy(path: Path, marker: Path) -> None:
    torch.save(_checkpoint(ShellPayload(marker)), path, _use_new_zipfile_serialization=False)


def _raw_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_checkpoint(TouchPayload(marker)), protocol=2))


PAYLOADS: dict[str, Callable[[Path, Path], None]] = {
    "torch_zip_os_system": _torch_zip,
    "torch_zip_path_touch": _torch_zip_touch,
    "torch_legacy_format": _torch_legacy,
    "raw_pickle": _raw_pickle,
}


@pytest.mark.parametrize("kind", PAYLOADS)
def test_payloads_are_live(kind: str, tmp_path: Path) -> None:
    """Positive control: an unsafe load of each payload really runs it."""
    marker = tmp_path / "control-marker"
    PAYLOADS[kind](tmp_path / "evil.pth", marker)
    if kind == "raw_pickle":
        pickle.loads((tmp_path / "evil.pth").read_bytes())
    else:
        torch.load(tmp_path / "evil.pth", weights_only=False)
    assert marker.exists()


def _tokenizer_dir() -> Path:
    from tinyclap.models.teacher import bundled_tokenizer_dir

    return bundled_tokenizer_dir()


def _load_aisfx(path: Path) -> Any:
    from tinyclap.models.proxy import load_aisfx

    return load_aisfx(path)


def _load_proxy(path: Path) -> Any:
    from tinyclap.models.proxy import load_proxy_teacher

    return load_proxy_teacher(path)


# every path that reads a torch pickle (.pth/.pt): all must use weights_only=True
PTH_LOADERS: dict[str, Callable[[Path], Any]] = {
    "safe_torch_load": safe_torch_load,
    "load_teacher": load_teacher,
    "load_teacher_with_config": lambda p: load_teacher(p, config=TeacherConfig.tiny()),
    "load_teacher_with_tokenizer": lambda p: load_teacher(p, _tokenizer_dir()),
    "load_model": load_model,
    "proxy.load_aisfx": _load_aisfx,
}


@pytest.mark.parametrize("suffix", [".pth", ".pt"])
@pytest.mark.parametrize("kind", PAYLOADS)
@pytest.mark.parametrize("loader", PTH_LOADERS)
def test_pickle_checkpoint_refused_without_running(
    loader: str, kind: str, suffix: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    PAYLOADS[kind](path, marker)
    with pytest.raises(CheckpointError, match="refused or unreadable checkpoint") as e:
        PTH_LOADERS[loader](path)
    assert str(path) in str(e.value)
    assert "never runs pickled code" in str(e.value)
    assert not marker.exists(), f"{loader} ran the pickled payload"


# every path that reads our own format: a pickle named .safetensors (or behind a .json / run folder)
OURS_LOADERS: dict[str, Callable[[Path], Any]] = {
    "read_model": read_model,
    "load_student": load_student,
    "load_model": load_model,
    "load_teacher": load_teacher,
    "proxy.load_proxy_teacher": _load_proxy,
}


@pytest.mark.parametrize("via", ["safetensors", "json", "run_folder"])
@pytest.mark.parametrize("loader", OURS_LOADERS)
def test_pickle_named_safetensors_refused(loader: str, via: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    stem = {"load_teacher": "teacher", "proxy.load_proxy_teacher": "proxy_teacher"}.get(loader, "student")
    run = tmp_path / "run"
    run.mkdir()
    st = run / f"{stem}.safetensors"
    _torch_zip(st, marker)
    (run / f"{stem}.json").write_text(json.dumps({"kind": "student"}))
    arg = {"safetensors": st, "json": st.with_suffix(".json"), "run_folder": run}[via]
    with pytest.raises(CheckpointError, match="not a readable safetensors file") as e:
        OURS_LOADERS[loader](arg)
    assert str(st) in str(e.value)
    assert not marker.exists()


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from tinyclap.cli import main

    rc = main(argv)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--teacher", "{pth}", "--classes", "{npz}"],
        ["--model", "{pth}", "--classes", "{npz}"],
        ["--model", STUDENT, "--teacher", "{pth}", "--labels", "dog,rain"],
        ["--student", "{st}", "--classes", "{npz}"],
        ["--model", STUDENT, "--classes", "{evil_npz}"],
        ["--model", STUDENT, "--classes", "{pickle_npz}"],
    ],
    ids=[
        "teacher_pth",
        "model_pth",
        "text_teacher_pth",
        "student_safetensors",
        "classes_object_npz",
        "classes_pickle",
    ],
)
def test_classify_refuses_hostile_files(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tinyclap.zeroshot import ZeroShotClassifier

    marker = tmp_path / "pwned"
    files = {
        "pth": tmp_path / "evil.pth",
        "st": tmp_path / "evil.safetensors",
        "npz": tmp_path / "classes.npz",
        "evil_npz": tmp_path / "evil.npz",
        "pickle_npz": tmp_path / "pickle.npz",
    }
    _torch_zip(files["pth"], marker)
    _torch_zip(files["st"], marker)
    ZeroShotClassifier(["dog", "rain"], np.eye(2, 1024), 2.0).save(files["npz"])
    # an .npz whose arrays are pickled objects, and a bare pickle named .npz
    np.savez(files["evil_npz"], weights=np.array([ShellPayload(marker)], dtype=object), meta=np.array("{}"))
    _raw_pickle(files["pickle_npz"], marker)
    audio = tmp_path / "a.wav"
    import soundfile as sf

    sf.write(audio, np.zeros(4410, np.float32), 44100)
    argv = ["classify", *[a.format(**files) for a in args], str(audio)]
    rc, err = _run_cli(argv, capsys)
    assert rc != 0
    assert "tinyclap classify: error:" in err and "Traceback" not in err
    named = [str(p) for key, p in files.items() if key != "npz" and f"{{{key}}}" in " ".join(args)]
    assert named and all(n in err for n in named), err
    assert not marker.exists()


# --- wrong shapes ---------------------------------------------------------------------------------------


def _resave(st: Path, edit: Callable[[dict[str, torch.Tensor]], None], out: Path) -> Path:
    """Copy a safetensors file (metadata included) with its tensors edited."""
    with safe_open(str(st), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(st))
    edit(tensors)
    save_file(tensors, str(out), metadata=meta)
    return out


@pytest.fixture(scope="module")
def student_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_student(create_student(STUDENT), tmp_path_factory.mktemp("student") / "student")


@pytest.fixture(scope="module")
def tiny_teacher() -> CLAPTeacher:
    return helpers.tiny_teacher()


def _wrong_student(t: dict[str, torch.Tensor]) -> None:
    t["projection.linear1.weight"] = torch.zeros(512, 2048)
    t["base.bn0.weight"] = torch.zeros(65)
    t["base.surprise"] = torch.zeros(1)
    del t["projection.layer_norm.bias"]


@pytest.mark.parametrize("loader", [load_student, load_model])
def test_student_wrong_shapes_named(
    loader: Callable[[Path], Any], student_ckpt: Path, tmp_path: Path
) -> None:
    bad = _resave(student_ckpt, _wrong_student, tmp_path / "student.safetensors")
    with pytest.raises(CheckpointError) as e:
        loader(bad)
    msg = str(e.value)
    assert str(bad) in msg
    assert "projection.linear1.weight: checkpoint (512, 2048) vs model (1024, 2048)" in msg
    assert "base.bn0.weight: checkpoint (65,) vs model (64,)" in msg
    assert "unexpected keys (1):\n    base.surprise" in msg
    assert "missing keys (1):\n    projection.layer_norm.bias" in msg


def _wrong_teacher(t: dict[str, torch.Tensor]) -> None:
    t["caption_encoder.projection.layer_norm.bias"] = torch.zeros(63)
    t["audio_encoder.projection.linear2.weight"] = torch.zeros(64, 65)


def test_teacher_wrong_shapes_named(tiny_teacher: CLAPTeacher, tmp_path: Path) -> None:
    ours = _resave(
        save_teacher(tiny_teacher, tmp_path / "teacher"), _wrong_teacher, tmp_path / "bad.safetensors"
    )
    official = tmp_path / "bad.pth"
    state = {k: v.clone() for k, v in tiny_teacher.state_dict().items()}
    _wrong_teacher(state)
    torch.save({"model": state}, official)
    for path, kw in ((ours, {}), (official, {"config": TeacherConfig.tiny()})):
        with pytest.raises(CheckpointError) as e:
            load_teacher(path, **kw)
        msg = str(e.value)
        assert str(path) in msg and "wrong shapes (2)" in msg
        assert "caption_encoder.projection.layer_norm.bias: checkpoint (63,) vs model (64,)" in msg
        assert "audio_encoder.projection.linear2.weight: checkpoint (64, 65) vs model (64, 64)" in msg
    # without config= the layout is inferred from the shapes (Cnn14 sizes; BERT is taken as bert-base)
    with pytest.raises(CheckpointError, match="config inferred from its shapes") as e:
        load_teacher(official)
    assert str(official) in str(e.value)


def test_model_without_tensors_or_not_a_dict(tmp_path: Path) -> None:
    """Safe-to-load .pth files of the wrong structure are refused with the file named."""
    cases = {
        "list.pth": [torch.zeros(2)],
        "empty.pth": {"model": {}},
        "non_tensor.pth": {"model": {"a.weight": torch.zeros(1), "b": 3}},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError) as e:
            load_teacher(tmp_path / name)
        assert str(tmp_path / name) in str(e.value)


# --- broken safetensors files ---------------------------------------------------------------------------


def _header_len(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


BROKEN: dict[str, Callable[[bytes], bytes]] = {
    "zero_bytes": lambda b: b"",
    "corrupted_header_json": lambda b: b[:8] + b"\xff" * 32 + b[40:],
    "header_not_json_object": lambda b: struct.pack("<Q", 4) + b"[1] " + b[8 + _header_len(b) :],
    "header_length_huge": lambda b: struct.pack("<Q", 1 << 62) + b[8:],
    "header_length_past_end": lambda b: struct.pack("<Q", len(b)) + b[8:],
    "truncated_half": lambda b: b[: len(b) // 2],
    "truncated_in_header": lambda b: b[:100],
    "data_cut_short": lambda b: b[:-100],
    "trailing_garbage": lambda b: b + b"\x00" * 16,
}


@pytest.mark.parametrize("kind", BROKEN)
@pytest.mark.parametrize("loader", [read_model, load_student, load_model])
def test_broken_safetensors(
    loader: Callable[[Path], Any], kind: str, student_ckpt: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "student.safetensors"
    bad.write_bytes(BROKEN[kind](student_ckpt.read_bytes()))
    with pytest.raises(CheckpointError, match="not a readable safetensors file") as e:
        loader(bad)
    assert str(bad) in str(e.value)


def _with_config(student_ckpt: Path, out: Path, config: Any, json_beside: bool = False) -> Path:
    tensors = load_file(str(student_ckpt))
    save_file(tensors, str(out), metadata=None if json_beside else {"tinyclap": json.dumps(config)})
    if json_beside:
        out.with_suffix(".json").write_text(json.dumps(config))
    return out


def _config(student_ckpt: Path) -> dict[str, Any]:
    config, _ = read_model(student_ckpt)
    return config


def test_config_problems_named(student_ckpt: Path, tmp_path: Path) -> None:
    base = _config(student_ckpt)
    no_config = _with_config(student_ckpt, tmp_path / "bare.safetensors", None, json_beside=False)
    save_file(load_file(str(student_ckpt)), str(no_config))  # no metadata and no .json
    with pytest.raises(CheckpointError, match="no tinyclap config") as e:
        load_student(no_config)
    assert str(no_config) in str(e.value)
    bad_json = tmp_path / "badjson.safetensors"
    save_file(load_file(str(student_ckpt)), str(bad_json), metadata={"tinyclap": "{not json"})
    with pytest.raises(CheckpointError, match="config: not valid JSON"):
        load_student(bad_json)
    teacher_kind = _with_config(student_ckpt, tmp_path / "kind.safetensors", {**base, "kind": "teacher"})
    with pytest.raises(CheckpointError, match="holds a 'teacher', not a student"):
        load_student(teacher_kind)
    odd_kind = _with_config(student_ckpt, tmp_path / "odd.safetensors", {**base, "kind": "banana"})
    with pytest.raises(CheckpointError, match="unknown checkpoint kind 'banana'"):
        load_model(odd_kind)
    # the .json beside the file is used when the header has no config
    beside = _with_config(student_ckpt, tmp_path / "beside.safetensors", base, json_beside=True)
    assert load_student(beside).name == STUDENT


@pytest.mark.parametrize("loader", [load_student, load_model])
def test_unknown_student_name_refused(
    loader: Callable[[Path], Any], student_ckpt: Path, tmp_path: Path
) -> None:
    base = _config(student_ckpt)
    path = _with_config(
        student_ckpt, tmp_path / "unk.safetensors", {**base, "student": {"name": "phinet_banana"}}
    )
    with pytest.raises(ValueError, match="invalid student name 'phinet_banana'"):
        loader(path)


MALFORMED_CONFIGS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "unknown_student_name": lambda c: {**c, "student": {"name": "phinet_banana"}},
    "student_key_missing": lambda c: {k: v for k, v in c.items() if k != "student"},
    "student_not_a_dict": lambda c: {**c, "student": "phinet"},
    "embed_dim_not_int": lambda c: {**c, "student": {**c["student"], "embed_dim": "big"}},
    "config_not_an_object": lambda c: [1, 2, 3],
    # refused from the tensor shapes before anything is built (building it would allocate ~8 GB)
    "hostile_embed_dim": lambda c: {**c, "student": {**c["student"], "embed_dim": 10**9}},
}


@pytest.mark.parametrize("kind", MALFORMED_CONFIGS)
def test_malformed_student_config_names_file(kind: str, student_ckpt: Path, tmp_path: Path) -> None:
    path = _with_config(
        student_ckpt, tmp_path / "cfg.safetensors", MALFORMED_CONFIGS[kind](_config(student_ckpt))
    )
    with pytest.raises(CheckpointError) as e:
        load_student(path)
    assert str(path) in str(e.value)


# --- what we write is never a pickle --------------------------------------------------------------------


def _assert_safetensors_file(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    assert not data.startswith(b"\x80") and not data.startswith(b"PK"), "a pickle or a torch zip"
    n = _header_len(data)
    assert data[8:9] == b"{" and 8 + n <= len(data)
    header = json.loads(data[8 : 8 + n])
    config = json.loads(header["__metadata__"]["tinyclap"])
    assert config["format"] == "tinyclap/1"
    assert json.loads(path.with_suffix(".json").read_text()) == config  # the same config beside it
    return config


def test_our_outputs_are_safetensors(student_ckpt: Path, tiny_teacher: CLAPTeacher, tmp_path: Path) -> None:
    config = _assert_safetensors_file(student_ckpt)
    assert config["kind"] == "student" and config["student"]["name"] == STUDENT
    teacher_st = save_teacher(tiny_teacher, tmp_path)
    assert teacher_st == tmp_path / "teacher.safetensors"
    assert _assert_safetensors_file(teacher_st)["kind"] == "teacher"
    # nothing else was written (no stray .pth/.pkl) and no temporary files are left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.json", "teacher.safetensors"]
    assert sorted(p.name for p in student_ckpt.parent.iterdir()) == ["student.json", "student.safetensors"]


def test_class_matrix_is_plain_arrays(tmp_path: Path) -> None:
    from tinyclap.zeroshot import ZeroShotClassifier

    path = ZeroShotClassifier(["a", "b"], np.eye(2, 8), 1.0).save(tmp_path / "c.npz")
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            with z.open(name) as f:
                magic = f.read(6)
            assert magic == b"\x93NUMPY", name
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)


def test_our_loaders_never_unpickle(
    student_ckpt: Path, tiny_teacher: CLAPTeacher, tmp_path: Path, monkeypatch
) -> None:
    """Loading our own files must not need torch.load or pickle at all."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickling called while loading a tinyclap checkpoint")

    teacher_st = save_teacher(tiny_teacher, tmp_path / "teacher")
    shutil.copy(student_ckpt, tmp_path / "student.safetensors")
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    assert load_student(tmp_path / "student.safetensors").name == STUDENT
    assert load_model(tmp_path).embed_dim == 1024  # the run folder resolves to the student
    assert load_teacher(teacher_st).embed_dim == 64


# --- the other files tinyclap reads: training state, target cache, exported class matrix -----------------


@pytest.mark.parametrize("kind", ["pickle", "wrong_kind"])
def test_distill_resume_state_refused(kind: str, student_ckpt: Path, tmp_path: Path) -> None:
    """`stageN/last.safetensors` (what `resume=True` reads): safetensors only, and a training state."""
    from tinyclap.train.state import read_stage_result

    marker = tmp_path / "pwned"
    stage = tmp_path / "stage1"
    stage.mkdir()
    if kind == "pickle":
        _torch_zip(stage / "last.safetensors", marker)
        match = "not a readable safetensors file"
    else:
        shutil.copy(student_ckpt, stage / "last.safetensors")  # a student, not a training state
        match = "not a training-state checkpoint"
    with pytest.raises(CheckpointError, match=match):
        read_stage_result(stage)
    assert not marker.exists()


def test_cache_shard_with_pickled_arrays_refused(tmp_path: Path) -> None:
    from tinyclap.train.cache import FORMAT, CacheError, CacheStore

    marker = tmp_path / "pwned"
    config = {
        "format": FORMAT,
        "n_frames": 4,
        "n_mels": 2,
        "embed_dim": 3,
        "teacher": "x",
        "sample_rate": 44100,
    }
    (tmp_path / "cache.json").write_text(json.dumps(config))
    shard = tmp_path / "shards" / "r00-00000"
    shard.mkdir(parents=True)
    (shard / "items.json").write_text(json.dumps([{"path": "a.wav", "split": "train"}]))
    np.save(shard / "logmel.npy", np.array([ShellPayload(marker)], dtype=object), allow_pickle=True)
    np.save(shard / "target.npy", np.zeros((1, 3), np.float32))
    with pytest.raises(CacheError, match="logmel.npy: unreadable"):
        CacheStore(tmp_path)
    assert not marker.exists()


def test_exported_class_matrix_refuses_pickles(tmp_path: Path) -> None:
    """The torch-free runtime reads the class matrix from bytes with allow_pickle=False (after its SHA-256
    check, which an attacker who rewrites the manifest too would pass)."""
    from tinyclap.zeroshot import ZeroShotClassifier

    marker = tmp_path / "pwned"
    buf = tmp_path / "evil.npz"
    np.savez(buf, weights=np.array([ShellPayload(marker)], dtype=object), meta=np.array("{}"))
    _raw_pickle(tmp_path / "raw.npz", marker)
    for path in (buf, tmp_path / "raw.npz"):
        with pytest.raises(ValueError) as e:
            ZeroShotClassifier.load(path.read_bytes(), name=path)
        assert str(path) in str(e.value)
    assert not marker.exists()


# --- configs are checked against the tensors before anything is built ----------------------------------


def _proxy_head_file(path: Path, config: dict[str, Any], embed_dim: int = 32) -> Path:
    from tinyclap.models.proxy import ProxyHead

    head = ProxyHead(512, 384, embed_dim)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path),
              metadata={"tinyclap": json.dumps(config)})
    return path


@pytest.mark.parametrize(
    ("change", "words"),
    [({"embed_dim": 10**9}, "invalid proxy teacher config"), ({"embed_dim": 64}, "wrong shapes"),
     ({"embed_dim": "big"}, "invalid proxy teacher config"), ({"dropout": 7}, "invalid proxy teacher config")],
    ids=["hostile_embed_dim", "embed_dim_not_the_tensors", "embed_dim_not_int", "dropout"],
)
@pytest.mark.parametrize("loader", ["load_proxy_teacher", "load_teacher", "load_model"])
def test_proxy_config_refused_before_towers_load(
    loader: str, change: dict[str, Any], words: str, tmp_path: Path
) -> None:
    """The head's config is checked before the ~100 MB towers are loaded or their hashes verified (the
    sources here are bogus: reaching them would fail with another message)."""
    from tinyclap.models.proxy import load_proxy_teacher

    config = {"kind": "proxy-teacher", "embed_dim": 32, "audio_tower": {}, "text_tower": {}, **change}
    path = _proxy_head_file(tmp_path / "proxy_teacher.safetensors", config)
    load = {"load_proxy_teacher": load_proxy_teacher, "load_teacher": load_teacher, "load_model": load_model}[loader]
    with pytest.raises(CheckpointError, match=words) as e:
        load(path)
    assert str(path) in str(e.value)


def test_hostile_student_architecture_refused(student_ckpt: Path, tmp_path: Path) -> None:
    """A well-formed name whose size is absurd is refused from the config, before building anything."""
    config = {**_config(student_ckpt), "student": {"name": "phinet_alpha_900.00_beta_0.75_t0_4_N_4000"}}
    path = _with_config(student_ckpt, tmp_path / "huge.safetensors", config)
    with pytest.raises(CheckpointError, match="sizes beyond") as e:
        load_student(path)
    assert str(path) in str(e.value)
    # a name within bounds that does not describe these tensors: named from a meta-device build
    config = {**_config(student_ckpt), "student": {"name": "phinet_alpha_1.50_beta_0.75_t0_4_N_4"}}
    path = _with_config(student_ckpt, tmp_path / "other.safetensors", config)
    with pytest.raises(CheckpointError, match="wrong shapes") as e:
        load_student(path)


# --- every loader under a memory cap: hostile sizes, malformed JSON, non-finite weights ----------------------

# a driver run in ONE capped child process: each case loads one file and prints "name|ExceptionType|message"
_DRIVER = r"""
import json, sys
from pathlib import Path
from tinyclap.models import load_model, load_student
from tinyclap.models.teacher import load_teacher
from tinyclap.models.proxy import load_proxy_teacher
from tinyclap.train.cache import CacheStore
from tinyclap.train.state import read_stage_result
LOADERS = {"load_model": load_model, "load_student": load_student, "load_teacher": load_teacher,
           "load_proxy_teacher": load_proxy_teacher, "CacheStore": CacheStore, "resume": read_stage_result}
for name, loader, path in json.loads(sys.argv[1]):
    try:
        LOADERS[loader](path)
        out = "LOADED|"
    except BaseException as e:
        out = f"{type(e).__name__}|{e}"
    print(name + "|" + out.replace("\n", "\\n"), flush=True)
"""


def _save_with(tensors: dict[str, torch.Tensor], path: Path, config_text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"tinyclap": config_text})
    return path


def _hostile_files(student_ckpt: Path, teacher: CLAPTeacher, root: Path) -> list[tuple[str, str, Path]]:
    """(case, loader, file) for every kind of file a model is loaded from; all generated here."""
    s_tensors, s_cfg = load_file(str(student_ckpt)), _config(student_ckpt)
    t_path = save_teacher(teacher, root / "teacher")
    t_tensors, t_cfg = load_file(str(t_path)), read_model(t_path, "teacher")[0]
    name = s_cfg["student"]["name"]
    cases: list[tuple[str, str, Path]] = []

    def student(case: str, text: str, tensors: dict[str, torch.Tensor] = s_tensors, loader: str = "load_student"):
        cases.append((case, loader, _save_with(tensors, root / case / "student.safetensors", text)))

    for case, big in {"alpha_60": "phinet_alpha_60.00_beta_0.75_t0_4_N_4", "N_100000": name[:-1] + "100000",
                      "t0_100000000": name.replace("t0_4", "t0_100000000")}.items():
        student(case, json.dumps({**s_cfg, "student": {"name": big}}))
    text = json.dumps(s_cfg)
    student("embed_dim_1e999", text.replace('"embed_dim": 1024', '"embed_dim": 1e999'))
    student("embed_dim_NaN", text.replace('"embed_dim": 1024', '"embed_dim": NaN'))
    student("deep_json", '{"a":' * 100_000 + "1" + "}" * 100_000)
    student("array_json", "[" * 50 + "]" * 50)
    student("nan_weight", text, {**s_tensors, "projection.linear1.weight": s_tensors["projection.linear1.weight"]
                                 * float("nan")})
    student("inf_weight", text, {**s_tensors, "base.bn0.weight": s_tensors["base.bn0.weight"] / 0.0})
    cases.append(("run_folder_alpha_60", "load_model", root / "alpha_60"))  # a run folder holding a hostile config

    def teacher_case(case: str, edit: Callable[[dict[str, Any]], None], tensors=t_tensors) -> None:
        cfg = json.loads(json.dumps(t_cfg))
        edit(cfg["teacher"])
        cases.append((case, "load_teacher", _save_with(tensors, root / case / "teacher.safetensors",
                                                       json.dumps(cfg))))

    teacher_case("teacher_vocab_3e6", lambda c: c["text"].update(vocab_size=3_000_000))
    teacher_case("teacher_n_fft_1e8", lambda c: c["frontend"].update(n_fft=10**8, win_length=10**8))
    teacher_case("teacher_width_60000", lambda c: c["text"].update(hidden_size=60_000, intermediate_size=60_000))
    teacher_case("teacher_nan_weight", lambda c: None,
                 {**t_tensors, "logit_scale": torch.tensor(float("nan"))} if "logit_scale" in t_tensors else
                 {k: (v * float("nan") if i == 0 else v) for i, (k, v) in enumerate(t_tensors.items())})
    pth = root / "msclap_nan.pth"
    torch.save({"model": {k: v * float("nan") if v.is_floating_point() else v
                          for k, v in teacher.state_dict().items()}}, pth)
    cases.append(("msclap_pth_nan", "load_teacher", pth))
    (root / "proxy").mkdir()
    proxy = _proxy_head_file(root / "proxy" / "proxy_teacher.safetensors",
                             {"kind": "proxy-teacher", "embed_dim": 30_000, "audio_tower": {}, "text_tower": {}})
    cases += [("proxy_embed_dim_30000", "load_proxy_teacher", proxy), ("proxy_via_load_model", "load_model", proxy)]
    for case, text in {"cache_n_frames_1e999": '{"format": "tinyclap-cache/1", "n_frames": 1e999, "n_mels": 64, '
                       '"embed_dim": 8, "teacher": "x", "sample_rate": 44100}',
                       "cache_deep": "[" * 100_000 + "]" * 100_000}.items():
        (root / case).mkdir()
        (root / case / "cache.json").write_text(text)
        cases.append((case, "CacheStore", root / case))
    (root / "resume" / "stage1").mkdir(parents=True)
    _save_with(s_tensors, root / "resume" / "stage1" / "last.safetensors", '{"kind": ' * 5000)
    cases.append(("resume_state_bad_json", "resume", root / "resume" / "stage1"))
    return cases


def _named_file(case: str, path: Path, message: str) -> bool:
    return str(path) in message or str(path.with_suffix(".json")) in message or (
        path.is_dir() and str(path) in message)


@pytest.mark.slow
def test_every_loader_refuses_hostile_files_under_a_memory_cap(
    student_ckpt: Path, tiny_teacher: CLAPTeacher, tmp_path: Path
) -> None:
    """Every case in ONE child capped at 1.5 GB of address space and 120 s: refused with our error class,
    naming the file (a config-level refusal in one line), no MemoryError, no RecursionError, no timeout."""
    cases = _hostile_files(student_ckpt, tiny_teacher, tmp_path)
    arg = json.dumps([(c, loader, str(p)) for c, loader, p in cases])
    r = helpers.run_capped(helpers.python_argv(_DRIVER, arg), timeout=240)
    results = {line.split("|", 1)[0]: line.split("|", 2)[1:] for line in r.stdout.splitlines() if "|" in line}
    assert r.returncode == 0 and len(results) == len(cases), r.stderr[-3000:]
    for case, _, path in cases:
        kind, message = results[case]
        assert kind in ("CheckpointError", "CacheError"), (case, kind, message)
        first = message.split("\\n")[0]
        assert _named_file(case, path, first), (case, message)
        if "wrong shapes" not in message:  # a shape mismatch lists the tensors after its first line, one per line
            assert "\\n" not in message, (case, message)
        if "nan" in case.lower() and "weight" in case:
            assert "NaN or infinite" in first, (case, message)
    assert "1e999" in results["cache_n_frames_1e999"][1] and "nested" in results["cache_deep"][1]


@pytest.mark.slow
def test_hostile_config_via_cli_is_one_line_under_a_memory_cap(student_ckpt: Path, tmp_path: Path) -> None:
    """`tinyclap eval --model CKPT` with a student config naming an absurd architecture: exit 1, one line on
    stderr naming the file, no output folder, inside the memory cap."""
    ckpt = _with_config(student_ckpt, tmp_path / "huge.safetensors",
                        {**_config(student_ckpt), "student": {"name": "phinet_alpha_60.00_beta_0.75_t0_4_N_4"}})
    classes = tmp_path / "classes.npz"
    from tinyclap.zeroshot import ZeroShotClassifier

    ZeroShotClassifier(["a", "b"], np.eye(2, 1024), 1.0).save(classes)
    wav = helpers.write_wav(tmp_path / "a.wav", helpers.tone(1.0))
    csv_file = helpers.write_csv(tmp_path / "d.csv", ["path", "label"], [[str(wav), "a"]])
    r = helpers.run_capped(helpers.tinyclap_argv("eval", "--model", str(ckpt), "--classes", str(classes),
                                                 "--dataset", f"csv:{csv_file}", "--out", str(tmp_path / "ev")))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith("tinyclap eval: error:") and str(ckpt) in lines[0] and "sizes beyond" in lines[0]
    assert not (tmp_path / "ev").exists()
