"""Open vocabulary without torch: `tinyclap export --text` (the teacher's text tower as ONNX + tokenizer.json),
the runtime, `classify --export-dir` and `tinyclap.Classifier` taking free-text labels with it, the Hugging
Face pipeline style call, and the torch-free install (a venv with the runtime's packages only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_teacher

from tinyclap.classifier import Classifier
from tinyclap.cli import main
from tinyclap.deploy.clips import find_audio, pick
from tinyclap.deploy.export import export
from tinyclap.deploy.text import TEXT_FILE, TEXT_INT8_FILE, TOKENIZER_FILE
from tinyclap.deploy.text_export import text_parts
from tinyclap.models.students import create_student
from tinyclap.models.teacher import bundled_tokenizer_dir
from tinyclap.zeroshot import ZeroShotClassifier

NAME = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"
LABELS = ["dog", "rain", "siren"]
FREE = ["a kettle whistling", "a dog barking in the distance", "rain on a tin roof"]
# no torch and no transformers, as on a device
NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
# the torch-free runtime's packages (pyproject's core dependencies and theirs), installed --no-deps
RUNTIME_PACKAGES = ("numpy", "onnxruntime", "flatbuffers", "packaging", "protobuf", "onnx", "ml_dtypes",
                    "typing_extensions", "soundfile", "cffi", "pycparser", "soxr", "tokenizers")
MAX_RUNTIME_MB = 250


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    """MS CLAP 2022's structure (Cnn14 + BERT + projections), tiny and random, with BERT's uncased vocab."""
    return tiny_teacher(0, bundled_tokenizer_dir(), d_proj=64).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, us8k_root: Path, teacher: torch.nn.Module) -> Path:
    torch.manual_seed(0)
    student = create_student(NAME, embed_dim=64).eval()
    clf = ZeroShotClassifier.from_teacher(teacher, LABELS)
    out = tmp_path_factory.mktemp("text") / "export"
    export(student, out, clf, parity_audio=pick(find_audio(us8k_root / "audio" / "fold1"), 3), text=teacher)
    return out


def test_manifest_records_text_tower_and_parity(exported: Path) -> None:
    m = json.loads((exported / "manifest.json").read_text())
    for name in (TEXT_FILE, TEXT_INT8_FILE, TOKENIZER_FILE):
        assert len(m["files"][name]["sha256"]) == 64  # hashed like the audio graphs
    t = m["text"]
    assert t["teacher"] == "msclap-2022-bert" and t["max_length"] == 100
    p = t["parity"]
    assert p["tokenizer_agreement"] == 1.0 and p["texts"] > len(LABELS)
    assert p[TEXT_FILE]["min_cosine"] >= 0.9999
    assert p[TEXT_INT8_FILE]["mean_cosine"] > 0.9
    assert p[TEXT_FILE]["zero_shot_clips"] == 3 and 0 <= p[TEXT_INT8_FILE]["zero_shot_top1_agreement"] <= 1
    assert m["files"][TEXT_INT8_FILE]["bytes"] < m["files"][TEXT_FILE]["bytes"]


def test_export_text_matches_teacher(exported: Path, teacher: torch.nn.Module) -> None:
    clf = Classifier.from_export(exported, classes=FREE, templates=["{}"])
    assert clf.labels == FREE and clf.can_encode_text
    with torch.no_grad():
        ref = torch.nn.functional.normalize(teacher.encode_text(FREE), dim=-1).numpy()
    assert np.sum(clf.classes.weights * ref, axis=1).min() > 0.9999
    assert np.sum(clf.encode_text(FREE) * ref, axis=1).min() > 0.9999
    same = Classifier.from_model(str(exported), FREE, templates=["{}"])  # load_model's door to an export
    assert np.allclose(same.classes.weights, clf.classes.weights, atol=1e-6)


def test_runtime_free_text_without_torch(exported: Path, animals_dir: Path) -> None:
    code = NO_TORCH + "from tinyclap.runtime import main\nsys.exit(main(sys.argv[1:]))\n"
    argv = [str(exported), str(animals_dir / "dog.mp3"), "--labels", ",".join(FREE), "--json"]
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ranked = json.loads(r.stdout)["results"][0]["labels"]
    assert sorted(x["label"] for x in ranked) == sorted(FREE)


def test_classify_export_dir_labels(exported: Path, animals_dir: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("# my classes\na kettle whistling\n\na cow mooing\n")
    assert main(["classify", "--export-dir", str(exported), str(animals_dir / "cow.mp3"), "--labels", str(labels),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {x["label"] for x in out["results"][0]["labels"]} == {"a kettle whistling", "a cow mooing"}


def test_export_without_text_refuses_labels(exported: Path, tmp_path: Path, animals_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    m = json.loads((exported / "manifest.json").read_text())
    del m["text"]
    for name in ("model.onnx", "student.onnx", "classes.npz"):
        (plain / name).write_bytes((exported / name).read_bytes())
    m["files"] = {k: v for k, v in m["files"].items() if (plain / k).exists()}
    (plain / "manifest.json").write_text(json.dumps(m))
    rc = main(["classify", "--export-dir", str(plain), str(animals_dir / "dog.mp3"), "--labels", "a,b"])
    err = capsys.readouterr().err
    assert rc == 1 and "no text tower" in err and "export --text" in err and "Traceback" not in err


def test_tampered_tokenizer_refused(exported: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in exported.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    tok = json.loads((bad / TOKENIZER_FILE).read_text())
    vocab = tok["model"]["vocab"]
    vocab["dog"], vocab["cat"] = vocab["cat"], vocab["dog"]
    (bad / TOKENIZER_FILE).write_text(json.dumps(tok))
    clf = Classifier.from_export(bad)
    with pytest.raises(ValueError, match="refusing to load it"):
        clf.set_labels(["dog"])
    assert not clf.can_encode_text


def test_text_parts_refuses_a_student() -> None:
    from tinyclap.models import StudentEmbedder

    with pytest.raises(ValueError, match="no text tower"):
        text_parts(StudentEmbedder(create_student(NAME, embed_dim=64)))


def test_pipeline_style_call(exported: Path, animals_dir: Path) -> None:
    """`clf(audio, candidate_labels=[...], hypothesis_template=...)` as Hugging Face's pipeline is called."""
    clf = Classifier.from_export(exported)
    out = clf(str(animals_dir / "dog.mp3"), candidate_labels=FREE, hypothesis_template="This is a sound of {}.")
    assert [sorted(d) for d in out] == [["label", "score"]] * 3
    assert sorted(d["label"] for d in out) == sorted(FREE)
    scores = [d["score"] for d in out]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-4
    wave = np.sin(np.arange(16000 * 3) * 0.05).astype(np.float32)
    arr = clf(wave, sample_rate=16000)
    assert [d["label"] for d in arr] != [] and {d["label"] for d in arr} == set(FREE)
    assert len(clf([wave, wave], sample_rate=16000)) == 2
    assert clf({"array": wave, "sampling_rate": 16000}) == arr  # the datasets/HF audio dict


@pytest.mark.slow
def test_minimal_runtime_install(exported: Path, animals_dir: Path, tmp_path: Path) -> None:
    """A venv with only the runtime's packages (no torch, no transformers, no tqdm) and tinyclap built from this
    checkout classifies a real clip with free-text labels; its site-packages stays under 250 MB."""
    root = Path(__file__).resolve().parents[1]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    pins = [f"{p}=={version(p)}" for p in RUNTIME_PACKAGES]
    pip = [sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps"]
    r = subprocess.run([*pip, *pins, str(root)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    probe = subprocess.run([py, "-c", "import importlib.util as u; print([m for m in ('torch', 'transformers', "
                            "'tqdm') if u.find_spec(m)])"], capture_output=True, text=True, env=env, timeout=60)
    assert probe.stdout.strip() == "[]", probe
    argv = [py, "-m", "tinyclap.runtime", str(exported), str(animals_dir / "dog.mp3"), "--labels", ",".join(FREE)]
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and all(f in r.stdout for f in FREE), r.stderr[-2000:]
    cli = [py, "-m", "tinyclap.cli"]
    r = subprocess.run([*cli, "classify", "--export-dir", str(exported), str(animals_dir / "owl.mp3"), "--window", "5",
                        "--labels", ",".join(FREE), "--segments"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "length" in r.stdout, r.stderr[-2000:]
    r = subprocess.run([*cli, "info"], capture_output=True, text=True, env=env, timeout=120)  # needs torch
    assert r.returncode == 1 and "tinyclap[train]" in r.stderr and "Traceback" not in r.stderr
    site = next((venv / "lib").glob("python3*/site-packages"))
    size = sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"minimal runtime site-packages: {size / 1e6:.1f} MB")
    assert size <= MAX_RUNTIME_MB * 1e6


def test_serve_export_takes_free_text(exported: Path) -> None:
    from tinyclap.serve.limits import ServeConfig
    from tinyclap.serve.server import build_engine

    engine = build_engine(ServeConfig(), export_dir=str(exported))
    assert engine.info()["free_text_labels"] is True
    assert engine.classifier_for(FREE).labels == FREE
    # serve --templates reaches an export's text tower too (it was dropped for exports)
    bare = build_engine(ServeConfig(), export_dir=str(exported), templates=["{}"])
    want = Classifier.from_export(exported, classes=FREE, templates=["{}"]).classes.weights
    assert np.allclose(bare.classifier_for(FREE).classes.weights, want, atol=1e-6)
    assert not np.allclose(engine.classifier_for(FREE).classes.weights, want, atol=1e-3)


def test_export_cli_text(tmp_path: Path, us8k_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import save_tiny_teacher

    from tinyclap.models import save_student

    student = save_student(create_student(NAME, embed_dim=64), tmp_path / "student")
    teacher = save_tiny_teacher(tmp_path / "teacher")
    argv = ["export", "--model", str(student), "--teacher", str(teacher), "--tokenizer", str(bundled_tokenizer_dir()),
            "--labels", "dog,rain", "--parity-audio", str(us8k_root / "audio" / "fold1"), "--parity-size", "1",
            "--out", str(tmp_path / "export")]
    assert main([*argv, "--text"]) == 0
    out = capsys.readouterr().out
    assert "text   text.int8.onnx" in out and (tmp_path / "export" / TOKENIZER_FILE).is_file()
    # a student is no teacher: one line, nothing written
    argv[argv.index("--teacher") + 1] = str(student)
    assert main([*argv[:-1], str(tmp_path / "other"), "--text"]) == 1
    err = capsys.readouterr().err
    assert "a teacher is expected" in err and not (tmp_path / "other").exists()


def test_index_text_search_uses_the_exports_text_tower(exported: Path, animals_dir: Path, tmp_path: Path) -> None:
    """An index built with a `--text` export answers text queries with that export's own text tower, without
    torch, and ranks like the export's classifier does."""
    index = tmp_path / "index"
    assert main(["embed", str(animals_dir), "--model", str(exported), "--out", str(index), "--no-progress",
                 "--workers", "0"]) == 0
    code = NO_TORCH + "from tinyclap.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    r = subprocess.run([sys.executable, "-c", code, "search", str(index), "a dog barking", "--raw", "-k", "3",
                        "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)["hits"]
    from tinyclap.index import Index

    query = Classifier.from_export(exported).encode_text(["a dog barking"])[0]  # the export's own text vector
    with Index.open(index) as idx:
        want = idx.search(query, 3)
    assert [h["path"] for h in hits] == [w.path for w in want]
    assert np.allclose([h["start"] for h in hits], [w.start for w in want], atol=1e-3)
    assert np.allclose([h["cosine"] for h in hits], [w.score for w in want], atol=1e-5)
