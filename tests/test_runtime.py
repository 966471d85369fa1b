"""The torch-free runtime (`tinyclap.runtime`: `Classifier.from_export` behind its own command line) and
long-audio timelines (`tinyclap classify --window`, `python -m tinyclap.runtime --window`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tinyclap.audio.frontend import LogMel
from tinyclap.cli import main
from tinyclap.deploy.clips import find_audio, load_clips, pick
from tinyclap.deploy.export import export
from tinyclap.deploy.quantize import Int8Options
from tinyclap.models import save_student
from tinyclap.models.students import create_student
from tinyclap.runtime import ExportError, Runtime
from tinyclap.runtime import main as runtime_main
from tinyclap.zeroshot import ZeroShotClassifier

NAME = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"
LABELS = ["dog", "rain", "siren", "engine"]
DIM = 256  # a smaller shared space than CLAP's 1024 keeps the exported files (and memory checks) small
# makes `import torch` fail, as on a device without torch
NO_TORCH = "import sys; sys.modules['torch'] = None\n"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, us8k_root: Path) -> tuple[Path, Path, Path]:
    """(export folder with fp32 + int8, student checkpoint, classes.npz) for one random student."""
    tmp = tmp_path_factory.mktemp("runtime")
    torch.manual_seed(0)
    student = create_student(NAME, embed_dim=DIM).eval()
    ckpt = save_student(student, tmp / "student")
    clf = ZeroShotClassifier(LABELS, np.random.default_rng(0).standard_normal((4, DIM)), float(np.log(50)))
    classes = clf.save(tmp / "classes.npz")
    fold1 = pick(find_audio(us8k_root / "audio" / "fold1"), 8)
    export(
        student,
        tmp / "export",
        clf,
        parity_audio=fold1[:2],
        quantize="int8",
        calibration_audio=fold1[2:5],
        heldout_audio=fold1[5:],
        int8=Int8Options(fp32_blocks=2, measure_frontend=False),
    )
    return tmp / "export", ckpt, classes


def _run(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_runtime_classifies_without_torch(
    exported: tuple[Path, Path, Path], animals_dir: Path, tmp_path: Path
) -> None:
    folder, _, _ = exported
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    files = [str(animals_dir / "cat.mp3"), str(bad), str(animals_dir / "owl.mp3")]
    code = NO_TORCH + (
        "from tinyclap.runtime import main\n"
        "from tinyclap.classifier import Classifier\n"
        "rc = main(sys.argv[1:])\n"
        "clf = Classifier.from_export(sys.argv[1], int8=True, threads=1)\n"
        "rows = list(clf.iter_timeline(sys.argv[4], window=2.0, hop=1.5))\n"
        "print('ROWS', len(rows), rows[-1].end, abs(rows[0].scores.sum() - 1) < 1e-4, file=sys.stderr)\n"
        "assert sys.modules['torch'] is None\n"
        "sys.exit(rc)\n"
    )
    res = _run(code, str(folder), *files, "--json", "--top", "3", "--int8")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [r["file"] for r in out["results"]] == [files[0], files[2]]
    assert all(len(r["labels"]) == 3 and r["labels"][0]["label"] in LABELS for r in out["results"])
    assert out["failed"][0]["file"] == str(bad) and f"skipped {bad}:" in res.stderr
    # owl.mp3 is 8.5 s: 2 s windows every 1.5 s start at 0, 1.5, 3, 4.5, 6 and one padded window at 7.5
    assert "ROWS 6 8.49" in res.stderr and "True" in res.stderr


def test_python_m_runtime_timeline_without_torch(
    exported: tuple[Path, Path, Path], animals_dir: Path, tmp_path: Path
) -> None:
    folder, _, _ = exported
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NO_TORCH)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
    }
    res = subprocess.run(
        [sys.executable, "-m", "tinyclap.runtime", str(folder), str(animals_dir / "dog.mp3"), "--window", "5",
         "--hop", "2"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].endswith("dog.mp3") and len(lines) == 3  # 0-5 s and a padded window from 2 s
    assert lines[1].split()[:2] == ["0.00", "5.00"] and lines[1].split()[-1] in LABELS
    # torch really was blocked: importing it in the same setting fails
    blocked = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env)
    assert blocked.returncode != 0


def test_runtime_timeline_is_the_classifier_timeline(
    exported: tuple[Path, Path, Path], animals_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m tinyclap.runtime --window` and `tinyclap classify --export-dir --window` are one implementation
    (`Classifier.iter_timeline`): the same JSON document (docs/json.md); the runtime keeps its own text view."""
    folder, _, _ = exported
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    files = [str(animals_dir / "owl.mp3"), str(bad)]
    assert runtime_main([str(folder), *files, "--window", "5", "--hop", "2", "--json"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["failed"][0]["file"] == str(bad) and f"skipped {bad}:" in cap.err
    (res,) = out["results"]
    tl = res["timeline"]
    assert (res["file"], tl["window"], tl["hop"]) == (files[0], 5.0, 2.0)
    assert main(["classify", *files, "--export-dir", str(folder), "--window", "5", "--hop", "2", "--json"]) == 0
    assert out == json.loads(capsys.readouterr().out)  # the same code, the same document (docs/json.md)
    # owl.mp3 is 8.5 s: full windows at 0 and 2 s, then a padded one from 4 s to the end
    assert [(r["start"], round(r["end"], 1)) for r in tl["rows"]] == [(0.0, 5.0), (2.0, 7.0), (4.0, 8.5)]
    assert runtime_main([str(folder), files[0], "--window", "5", "--hop", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = tl["rows"][1]
    p = row["probabilities"][tl["labels"].index(row["top_label"])]
    assert lines[2] == f"  {2.0:9.2f} {row['end']:9.2f}  {p:6.3f}  {row['top_label']}"
    assert runtime_main([str(folder), str(bad), "--window", "5"]) == 1  # nothing readable


def test_runtime_matches_torch(
    exported: tuple[Path, Path, Path], us8k_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, ckpt, classes = exported
    rt = Runtime(folder)
    clips = load_clips(pick(find_audio(us8k_root / "audio" / "fold3"), 3))
    from tinyclap.models import load_student

    student = load_student(ckpt)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(student(LogMel()(torch.from_numpy(clips.waves))), dim=-1).numpy()
    got = rt.embed(clips.waves)
    assert got.shape == (3, DIM) and ((ref * got).sum(-1) >= 0.9999).all()
    with pytest.raises(ValueError, match="220500"):
        rt.embed(clips.waves[:, :1000])
    # classify: same ranking and scores as `tinyclap classify` with the PyTorch student
    f = clips.paths[0]
    assert (
        main(["classify", f, "--student", str(ckpt), "--classes", str(classes), "--json", "--top", "4"]) == 0
    )
    torch_labels = json.loads(capsys.readouterr().out)["results"][0]["labels"]
    assert main(["classify", f, "--export-dir", str(folder), "--json", "--top", "4"]) == 0
    onnx_labels = json.loads(capsys.readouterr().out)["results"][0]["labels"]
    assert runtime_main([str(folder), f, "--json", "--top", "4"]) == 0  # the same code: the same output
    assert json.loads(capsys.readouterr().out)["results"][0]["labels"] == onnx_labels
    assert [d["label"] for d in torch_labels] == [d["label"] for d in onnx_labels]
    assert np.allclose([d["probability"] for d in torch_labels], [d["probability"] for d in onnx_labels], atol=1e-4)


def test_tampered_or_incomplete_exports_refused(
    exported: tuple[Path, Path, Path], animals_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in a weight
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"model\.onnx: SHA-256 mismatch.*modified or corrupted"):
        Runtime(copy)
    Runtime(copy, int8=True)  # the untouched int8 model still loads
    rc = main(["classify", str(animals_dir / "cat.mp3"), "--export-dir", str(copy)])
    assert rc == 1 and "SHA-256 mismatch" in capsys.readouterr().err
    res = _run(
        NO_TORCH + "from tinyclap.runtime import main; sys.exit(main(sys.argv[1:]))",
        str(copy),
        str(animals_dir / "cat.mp3"),
    )
    assert res.returncode == 1 and "SHA-256 mismatch" in res.stderr and "Traceback" not in res.stderr

    shutil.copy(folder / "model.onnx", copy / "model.onnx")
    with open(copy / "classes.npz", "ab") as f:
        f.write(b"\0")  # the size is checked before the file is read
    with pytest.raises(ExportError, match=r"classes\.npz: \d+ bytes, instead of the expected \d+"):
        Runtime(copy)
    data = bytearray((folder / "classes.npz").read_bytes())
    data[-30] ^= 0x01
    (copy / "classes.npz").write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"classes\.npz: SHA-256 mismatch"):
        Runtime(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ExportError, match="manifest.json: missing"):
        Runtime(copy)
    with pytest.raises(ExportError, match="no such directory"):
        Runtime(tmp_path / "nowhere")


def _write_long_wav(path: Path, seconds: int, rate: int = 8000) -> None:
    """A low-rate 16-bit WAV (fast to write): tones that change every 20 s over noise, written in blocks."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        for s0 in range(0, seconds, 60):
            t = np.arange(s0 * rate, min(seconds, s0 + 60) * rate) / rate
            freq = 300.0 + 200.0 * ((t // 20) % 5)
            f.write(0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size))


def test_ten_minute_timeline_bounded_memory(exported: tuple[Path, Path, Path], tmp_path: Path) -> None:
    folder, _, _ = exported
    wav = tmp_path / "long.wav"
    _write_long_wav(wav, 600)
    decoded_bytes = 600 * 44100 * 4  # the whole file as float32 at 44.1 kHz: 106 MB
    out_csv = tmp_path / "timeline.csv"
    tracemalloc.start()
    try:
        rc = main(
            [
                "classify",
                str(wav),
                "--export-dir",
                str(folder),
                "--int8",
                "--window",
                "5",
                "--hop",
                "1",
                "--timeline-csv",
                str(out_csv),
                "--json",
            ]
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rc == 0
    print(f"10-minute timeline: tracemalloc peak {peak / 1e6:.1f} MB vs {decoded_bytes / 1e6:.0f} MB decoded")
    assert peak < decoded_bytes / 5
    rows = out_csv.read_text().splitlines()
    assert rows[0].split(",") == ["file", "start", "end", "top_label", *LABELS]
    assert len(rows) == 1 + 596  # windows start at 0..595 s; the last one ends exactly at 600 s
    last = rows[-1].split(",")
    assert last[1:3] == ["595.000", "600.000"] and last[3] in LABELS
    assert abs(sum(float(p) for p in last[4:]) - 1.0) < 1e-4


def test_timeline_torch_model_json_and_plot(
    exported: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, ckpt, classes = exported
    wav = tmp_path / "short.wav"
    _write_long_wav(wav, 72)
    png = tmp_path / "plot.png"
    argv = [
        "classify",
        str(wav),
        "--window",
        "5",
        "--hop",
        "5",
        "--json",
        "--plot",
        str(png),
        "--batch-size",
        "4",
    ]
    assert main([*argv, "--student", str(ckpt), "--classes", str(classes)]) == 0
    torch_tl = json.loads(capsys.readouterr().out)
    tl = torch_tl["results"][0]["timeline"]
    rows = tl["rows"]
    assert len(rows) == 15  # 0, 5, ..., 65 s, then a zero-padded window from 70 s to the end (72 s)
    assert (rows[0]["start"], rows[0]["end"]) == (0.0, 5.0) and (rows[-1]["start"], rows[-1]["end"]) == (
        70.0,
        72.0,
    )
    assert all(r["top_label"] == tl["labels"][int(np.argmax(r["probabilities"]))] for r in rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the exported model gives the same timeline
    assert main([*argv[:-4], "--export-dir", str(folder)]) == 0
    onnx_rows = json.loads(capsys.readouterr().out)["results"][0]["timeline"]["rows"]
    for a, b in zip(rows, onnx_rows):
        assert np.allclose(a["probabilities"], b["probabilities"], atol=1e-3)
    # stdout table, and the errors of timeline mode
    assert main(["classify", str(wav), "--export-dir", str(folder), "--window", "30", "--hop", "30"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:3] == ["start", "end", "top"] and len(table) == 2 + 3
    assert main(["classify", str(wav), "--export-dir", str(folder), "--plot", str(png)]) == 1
    assert "need --window" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse refuses a hop of 0 (and any number outside its bounds)
        main(["classify", str(wav), "--export-dir", str(folder), "--window", "5", "--hop", "0"])
