"""Released tinyCLAP students by name: fetched from a Hub cache laid out here (offline), weights-only, strict."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from helpers import distinct_sound, write_wav

from tinyclap.cli import main
from tinyclap.models.checkpoint import CheckpointError
from tinyclap.models.pretrained import HUB_REPO, HUB_REVISION, PRETRAINED

NAME = "tinyclap-phinet-1.50"
REV = "0123456789abcdef0123456789abcdef01234567"


class _Hostile:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, offline: only what a test lays out can be found."""
    import huggingface_hub.constants as hc

    cache = tmp_path / "hub"
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    return cache


def _put(cache: Path, filename: str, payload: object) -> Path:
    """Write `payload` (torch.save) as `filename` of HUB_REPO at HUB_REVISION, in the cache's layout
    (models--OWNER--NAME/snapshots/COMMIT/FILE, refs/REVISION -> COMMIT)."""
    root = cache / ("models--" + HUB_REPO.replace("/", "--"))
    (root / "snapshots" / REV).mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / HUB_REVISION).write_text(REV)
    torch.save(payload, root / "snapshots" / REV / filename)
    return root / "snapshots" / REV / filename


def _released_state(seed: int = 0) -> tuple[torch.nn.Module, OrderedDict]:
    """A random student of the released architecture and its state dict as SpeechBrain saves it."""
    from tinyclap.models.students import create_student

    torch.manual_seed(seed)
    student = create_student(PRETRAINED[NAME].student).eval()
    return student, OrderedDict(student.state_dict())


def test_released_student_by_name_offline(hub: Path) -> None:
    from huggingface_hub import try_to_load_from_cache

    from tinyclap.models import load_model

    student, state = _released_state()
    path = _put(hub, PRETRAINED[NAME].filename, state)
    assert try_to_load_from_cache(HUB_REPO, PRETRAINED[NAME].filename, revision=HUB_REVISION) == str(path)
    model = load_model(NAME)
    wave = torch.randn(2, 44100) * 0.1
    with torch.no_grad():
        expected = torch.nn.functional.normalize(student(model.frontend(wave)), dim=-1)
    assert torch.allclose(model.embed_waveform(wave), expected, atol=1e-6)


def test_missing_from_offline_cache_is_one_line(hub: Path) -> None:
    from tinyclap.models import load_model

    with pytest.raises(CheckpointError, match=r"tinyclap-phinet-1.50: fpaissan/tinyCLAP/phinet_alpha_1.50_beta_0.75_"
                                              r"t0_6_N_7.ckpt@main is not in the Hugging Face cache"):
        load_model(NAME)


def test_hostile_or_foreign_pickles_are_refused(hub: Path, tmp_path: Path) -> None:
    from tinyclap.models import load_model

    target = tmp_path / "pwned"
    _put(hub, PRETRAINED[NAME].filename, {"base.bn0.weight": torch.ones(64), "x": _Hostile(str(target))})
    with pytest.raises(CheckpointError, match="refused or unreadable"):
        load_model(NAME)
    assert not target.exists()
    _, state = _released_state()
    state["projection.linear1.weight"] = torch.zeros(3, 3)
    _put(hub, PRETRAINED[NAME].filename, state)
    with pytest.raises(CheckpointError, match=r"projection.linear1.weight: checkpoint \(3, 3\)"):
        load_model(NAME)


def test_classify_by_name_uses_the_2022_text_tower(hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import tiny_teacher

    import tinyclap.models.pretrained as pretrained
    from tinyclap.models.teacher import bundled_tokenizer_dir, save_teacher

    _put(hub, PRETRAINED[NAME].filename, _released_state()[1])
    teacher = save_teacher(tiny_teacher(d_proj=1024), tmp_path / "t2022")  # stands in for CLAP_weights_2022.pth
    monkeypatch.setattr(pretrained, "pretrained_teacher", lambda name: (str(teacher), str(bundled_tokenizer_dir())))
    wav = write_wav(tmp_path / "a.wav", distinct_sound(0, 2.0))
    assert main(["classify", "--model", NAME, "--labels", "dog,rain", "--json", str(wav)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert not out["failed"] and {r["label"] for r in out["results"][0]["labels"]} == {"dog", "rain"}


def test_text_side_not_downloaded_says_what_to_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tinyclap.models.pretrained import pretrained_teacher

    monkeypatch.setenv("TINYCLAP_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="tinyclap download teacher msclap-2022"):
        pretrained_teacher(NAME)


def test_zoo_lists_every_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(PRETRAINED)
    assert rows[NAME]["size"] == "17.8 MB" and rows["tinyclap-cnn14"]["size"] == "336 MB"
    assert all(r["licence"] and r["reported"] and HUB_REPO in r["source"] for r in rows.values())
