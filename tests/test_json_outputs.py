"""The `--json` outputs beyond classify and search (docs/json.md): `info` (the zoo, `--teachers`, `--fit`),
`profile` (a student, `--target mcu`), `embed`, `export` (the ONNX manifest), `adapt`, `cache` and `zoo`, each
run on tiny inputs and validated against its JSON Schema file (`tinyclap.schemas`, draft 2020-12)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from helpers import distinct_sound, save_tiny_teacher, write_wav

from tinyclap import schemas
from tinyclap.cli import main

NAME = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"
DIM = 64
SR = 22050


def printed(capsys: pytest.CaptureFixture[str], argv: list[str], kind: str, lines: bool = False) -> Any:
    """What `tinyclap ARGV` prints as strict JSON (one document, or one per line when `lines`), validated
    against the schema of `kind`."""
    assert main(argv) == 0
    out = capsys.readouterr().out
    texts = [t for t in out.splitlines() if t.strip()] if lines else [out]
    docs = [json.loads(t, parse_constant=_refuse) for t in texts]
    assert docs
    for doc in docs:
        schemas.validate(doc, kind)
    return docs if lines else docs[0]


def _refuse(name: str) -> None:
    raise AssertionError(f"{name} in a JSON document")


@pytest.fixture(scope="module")
def model(work: Path) -> dict[str, Path]:
    """A random student checkpoint (`DIM`-d), a random class matrix of three labels, and five short clips of
    distinct sounds (two per label for `adapt`'s examples, one for the parity check)."""
    import torch

    from tinyclap.models import save_student
    from tinyclap.models.students import create_student
    from tinyclap.zeroshot import ZeroShotClassifier

    torch.manual_seed(0)
    ckpt = save_student(create_student(NAME, embed_dim=DIM).eval(), work / "student")
    classes = work / "classes.npz"
    ZeroShotClassifier(["dog", "rain", "siren"], np.random.default_rng(0).standard_normal((3, DIM)),
                       float(np.log(50))).save(classes)
    audio = work / "audio"
    audio.mkdir()
    for i in range(5):
        write_wav(audio / f"clip{i}.wav", distinct_sound(i, 1.5, SR), SR)
    return {"ckpt": ckpt, "classes": classes, "audio": audio}


def test_new_schema_files() -> None:
    """Each output's schema is a valid draft 2020-12 schema, and docs/json.md names it and its top-level fields."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "json.md").read_text()
    for kind in schemas.OUTPUTS:
        schema = schemas.load_schema(kind)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$id"] == f"urn:tinyclap:schema:{kind}:{schemas.VERSION}"
        assert f"`{kind}.schema.json`" in doc
        fields = schema.get("items", schema).get("properties", {})
        missing = sorted(f for f in fields if f"`{f}`" not in doc)
        assert not missing, f"docs/json.md does not name these {kind} fields: {missing}"
    with pytest.raises(jsonschema.ValidationError):  # a field missing, or one the schema does not know
        schemas.validate([{"name": "x"}], "zoo")
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate({"limits": {}, "window": 1.0, "fit": [], "extra": 1}, "info-fit")


def test_info(capsys: pytest.CaptureFixture[str]) -> None:
    rows = printed(capsys, ["info", "--json"], "info-students")
    assert any("mcu" in r for r in rows) and any("mcu" not in r for r in rows)
    teachers = printed(capsys, ["info", "--teachers", "--json"], "info-teachers")
    assert {t["kind"] for t in teachers} >= {"msclap-2022"}
    fit = printed(capsys, ["info", "--fit", "sram=256k,flash=512k", "--pool-window", "1", "--json"], "info-fit")
    assert fit["limits"] == {"sram": 262144, "flash": 524288} and fit["fit"]


def test_zoo(capsys: pytest.CaptureFixture[str]) -> None:
    assert printed(capsys, ["zoo", "--json"], "zoo")


def test_profile(capsys: pytest.CaptureFixture[str]) -> None:
    mcu = printed(capsys, ["profile", "--target", "mcu", "--model", "mcu-s", "--json"], "profile-mcu", lines=True)
    assert len({r["window"] for r in mcu}) == len(mcu) > 1
    (cpu,) = printed(capsys, ["profile", "--model", NAME, "--json", "--runs", "1", "--warmup", "0",
                              "--no-teacher", "--no-int8"], "profile", lines=True)
    assert cpu["model"] == NAME and "vs_teacher" not in cpu


def test_export_embed(model: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clips = sorted(model["audio"].glob("*.wav"))
    man = printed(capsys, ["export", "--model", str(model["ckpt"]), "--classes", str(model["classes"]), "--out",
                           str(work / "export"), "--parity-audio", str(clips[0]), "--json"], "export")
    assert man["classes"]["labels"] == ["dog", "rain", "siren"] and man["parity"]["model.onnx"]["passed"]
    (model["audio"] / "bad.wav").write_text("not audio")
    try:
        rep = printed(capsys, ["embed", str(model["audio"]), "--model", str(work / "export"), "--out",
                               str(work / "index"), "--no-progress", "--workers", "0", "--json"], "embed")
    finally:
        (model["audio"] / "bad.wav").unlink()
    assert rep["embedded"] == 5 and rep["failed"][0]["path"].endswith("bad.wav")


def test_adapt(model: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clips = sorted(model["audio"].glob("*.wav"))
    csv = work / "examples.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{lb}\n" for p, lb in zip(clips[:4], ["dog", "dog", "rain", "rain"],
                                                                            strict=True)) + "gone.wav,rain\n")
    rep = printed(capsys, ["adapt", "--model", str(model["ckpt"]), "--examples", str(csv), "--text-classes",
                           str(model["classes"]), "--out", str(work / "adapted.npz"), "--no-progress", "--json"],
                  "adapt")
    assert rep["examples"] == 4 and rep["failed"][0][0].endswith("gone.wav")


def test_cache(work: Path, model: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    teacher = save_tiny_teacher(work / "teacher")
    (model["audio"] / "bad.wav").write_text("not audio")
    try:
        rep = printed(capsys, ["cache", "--teacher", str(teacher), "--data", str(model["audio"]), "--out",
                               str(work / "cache"), "--workers", "0", "--no-progress", "--verify", "--json"], "cache")
    finally:
        (model["audio"] / "bad.wav").unlink()
    assert rep["files_read"] == 5 and len(rep["skipped"]) == 1
