"""Self-describing student checkpoints, the model loader, and the `info` / `classify` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tinyclap.cli import main
from tinyclap.models import StudentEmbedder, load_model, load_student, save_student
from tinyclap.models.checkpoint import CheckpointError
from tinyclap.models.students import create_student
from tinyclap.zeroshot import ZeroShotClassifier

SMALL = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"


@pytest.fixture(scope="module")
def student_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    student = create_student(SMALL, embed_dim=32).eval()
    path = save_student(student, tmp_path_factory.mktemp("run") / "student", note="test")
    return student, path


def test_save_load_student_round_trip(student_ckpt) -> None:
    student, path = student_ckpt
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    cfg = json.loads(path.with_suffix(".json").read_text())
    assert cfg["kind"] == "student" and cfg["student"]["name"] == SMALL and cfg["note"] == "test"
    assert cfg["frontend"]["n_mels"] == 64 and cfg["sample_rate"] == 44100
    x = torch.randn(2, 120, 64)
    for p in (path, path.with_suffix(".json"), path.parent):
        back = load_student(p)
        assert torch.equal(back(x), student(x))
    emb = load_model(path.parent)
    assert isinstance(emb, StudentEmbedder) and emb.embed_dim == 32
    out = emb.embed_waveform(torch.randn(2, 44100))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))


def test_load_model_names_and_errors(tmp_path) -> None:
    emb = load_model(SMALL)
    assert emb.embed_dim == 1024 and emb.sample_rate == 44100
    with pytest.raises(ValueError, match="phinet_alpha_"):
        load_model("phinet_alpha_1_beta_0.75_t0_6_N_7")
    with pytest.raises(CheckpointError, match="not found|no student"):
        load_model(tmp_path)  # an empty folder


def test_mismatched_student_checkpoint_refused(tmp_path, student_ckpt) -> None:
    _, path = student_ckpt
    cfg = json.loads(path.with_suffix(".json").read_text())
    cfg["student"]["embed_dim"] = 64  # weights are 32-d: shapes must be named in the error
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad.safetensors"
    save_file(load_file(path), bad, metadata={"tinyclap": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match=r"embed_dim 64 but projection.layer_norm.weight has shape \(32,\)"):
        load_student(bad)
    # right config, one tensor of the wrong shape: named with both shapes
    tensors = load_file(path)
    tensors["base.bn0.weight"] = torch.ones(65)
    save_file(tensors, bad, metadata={"tinyclap": path.with_suffix(".json").read_text()})
    with pytest.raises(CheckpointError, match=r"base.bn0.weight: checkpoint \(65,\) vs model \(64,\)"):
        load_student(bad)


def test_info_json(capsys) -> None:
    assert main(["info", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert by_name["phinet_alpha_1.50_beta_0.75_t0_6_N_7"]["params"] == 4_434_547
    assert by_name["cnn14"]["params"] == 83_901_391
    assert all(r["macs"] > 0 for r in rows)


def test_classify_with_class_file(tmp_path, student_ckpt, animals_dir, capsys) -> None:
    student, path = student_ckpt
    labels = ["cat", "dog", "cow"]
    clf = ZeroShotClassifier(labels, np.random.default_rng(0).normal(size=(3, 32)), 1.0)
    classes = clf.save(tmp_path / "classes.npz")
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    files = [str(animals_dir / "cat.mp3"), str(animals_dir / "dog.mp3"), str(bad)]
    rc = main(["classify", *files, "--student", str(path), "--classes", str(classes), "--json", "--top", "3"])
    captured = capsys.readouterr()
    assert rc == 0
    out = json.loads(captured.out)
    assert [r["file"] for r in out["results"]] == files[:2]
    assert out["failed"][0]["file"] == str(bad)
    assert "bad.wav" in captured.err
    # the scores are the classifier's on the mean window embedding (independent recomputation)
    from tinyclap.audio import load_audio
    from tinyclap.evaluation.embedding import embed_clip

    emb = embed_clip(StudentEmbedder(student), load_audio(files[0]))
    p = clf.predict_proba(emb[None].numpy())[0]
    got = {d["label"]: d["probability"] for d in out["results"][0]["labels"]}
    for j, lb in enumerate(labels):
        assert got[lb] == pytest.approx(float(p[j]), abs=1e-5)
    assert main(["classify", *files, "--student", str(path), "--classes", str(classes), "--strict"]) == 1


def test_classify_needs_classes(student_ckpt, animals_dir, capsys) -> None:
    _, path = student_ckpt
    rc = main(["classify", str(animals_dir / "cat.mp3"), "--student", str(path), "--labels", "cat,dog"])
    assert rc == 1
    assert "text encoder" in capsys.readouterr().err


def _tiny_export(folder, clip_samples: int = 64, dim: int = 8):
    """A hand-made export folder: a graph that L2-normalises the first `dim` samples, classes, manifest."""
    import hashlib

    import onnx
    from onnx import TensorProto, helper

    folder.mkdir()
    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["waveform", "starts", "ends", "axes"], ["head"]),
            helper.make_node("LpNormalization", ["head"], ["embedding"], axis=-1, p=2),
        ],
        "tiny",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", clip_samples])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("starts", 0), ("ends", dim), ("axes", 1))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx")
    ZeroShotClassifier(["a", "b"], np.eye(2, dim), 0.0).save(folder / "classes.npz")
    names = ("model.onnx", "classes.npz")
    files = {n: {"sha256": hashlib.sha256((folder / n).read_bytes()).hexdigest(), "bytes": (folder / n).stat().st_size}
             for n in names}
    manifest = {"format": "tinyclap-export/1", "sample_rate": 16000, "clip_samples": clip_samples,
                "embed_dim": dim, "files": files}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_load_model_export_folder(tmp_path) -> None:
    """An export folder loads as a model with the AudioEmbedder interface, numpy or torch in and out."""
    from tinyclap.models import ExportedModel

    folder = _tiny_export(tmp_path / "export")
    for spec in (folder, folder / "model.onnx"):
        model = load_model(spec)
        assert isinstance(model, ExportedModel) and (model.sample_rate, model.embed_dim) == (16000, 8)
    wave = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    want = wave[:, :8] / np.linalg.norm(wave[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(model.embed_waveform(wave), want, rtol=1e-5)
    out = model.embed_waveform(torch.from_numpy(wave))
    assert isinstance(out, torch.Tensor) and np.allclose(out.numpy(), want, rtol=1e-5)
    with pytest.raises(ValueError, match="normalize=False"):
        model.embed_waveform(wave, normalize=False)
    save_student(create_student(SMALL, embed_dim=8), tmp_path / "odd" / "student", kind="odd")
    with pytest.raises(CheckpointError, match="unknown checkpoint kind 'odd'"):
        load_model(tmp_path / "odd")
