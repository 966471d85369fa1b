"""Hostile audio headers, class files and export folders (issue 11, part A), each generated here.

The risky cases run in a child process under a memory cap and a timeout (`helpers.run_capped`) and assert
a one-line error naming the file and the cause (no traceback), the exit status, that the rest of a batch is
still processed, and that nothing earlier is destroyed.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import run_capped, small_export, tinyclap_argv, tone, write_wav

from tinyclap.audio import AudioError, load_audio, stream_windows
from tinyclap.zeroshot import ZeroShotClassifier

NAME = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"
LABELS = ["dog", "rain", "siren"]
DIM = 64
RUNTIME = [sys.executable, "-m", "tinyclap.runtime"]


def wav_header(rate: int, data_bytes: int) -> bytes:
    """A 44-byte mono 16-bit WAV header declaring `rate` Hz."""
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE" + b"fmt " + fmt + b"data" + struct.pack(
        "<I", data_bytes
    )


def one_line_error(res: object, *phrases: str) -> str:
    err = res.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in err and "MemoryError" not in err, err[-2000:]
    for phrase in phrases:
        assert phrase in err, err[-2000:]
    return err


@pytest.fixture(scope="module")
def export_dir(work: Path, us8k_root: Path) -> Path:
    """A small fp32 export of a random student (64-d) with its class matrix."""
    return small_export(work / "export", us8k_root, NAME, LABELS, DIM)


@pytest.fixture
def copy(export_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(export_dir, tmp_path / "copy")
    return tmp_path / "copy"


def set_manifest(folder: Path, **changes: object) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    m.update(changes)
    (folder / "manifest.json").write_text(json.dumps(m))


def rehash(folder: Path, name: str) -> None:
    """Make the manifest vouch for the current bytes of `name` (what an attacker controlling both can do)."""
    from tinyclap._util import sha256_file

    m = json.loads((folder / "manifest.json").read_text())
    m["files"][name] = {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
    (folder / "manifest.json").write_text(json.dumps(m))


# --- audio headers --------------------------------------------------------------------------------------


def test_lying_rate_is_refused_and_the_batch_goes_on(export_dir: Path, tmp_path: Path) -> None:
    liar = tmp_path / "liar.wav"
    liar.write_bytes(wav_header(1, 88000) + bytes(88000))  # 88 KB declaring 1 Hz: ~2e9 samples at 44.1 kHz
    with pytest.raises(AudioError, match=r"liar\.wav: declares a sample rate of 1 Hz.*1\.94e\+09 samples"):
        load_audio(liar)
    with pytest.raises(AudioError, match="declares a sample rate of 1 Hz"):
        stream_windows(liar)
    good = write_wav(tmp_path / "good.wav", tone(1.0))
    res = run_capped([*RUNTIME, str(export_dir), str(liar), str(good), "--json"], timeout=60)
    assert res.returncode == 0
    one_line_error(res, f"skipped {liar}: declares a sample rate of 1 Hz")
    assert [r["file"] for r in json.loads(res.stdout)["results"]] == [str(good)]
    res = run_capped(tinyclap_argv("classify", str(liar), str(good), "--export-dir", str(export_dir)), timeout=120)
    assert res.returncode == 0 and str(good) in res.stdout
    one_line_error(res, f"skipped {liar}: declares a sample rate of 1 Hz")


def test_flac_headers_that_lie(tmp_path: Path) -> None:
    sf.write(tmp_path / "t.flac", np.full(44100, 0.1, np.float32), 44100)
    data = bytearray((tmp_path / "t.flac").read_bytes())
    (tmp_path / "hdr.flac").write_bytes(bytes(data[:42]))  # STREAMINFO, no audio frames
    with pytest.raises(AudioError, match=r"hdr\.flac: "):
        load_audio(tmp_path / "hdr.flac")
    off = 8 + 10  # STREAMINFO: rate (20 bits), channels (3), bits (5), total samples (36)
    v = int.from_bytes(data[off : off + 8], "big") | ((1 << 36) - 1)  # declares 2^36 frames
    data[off : off + 8] = v.to_bytes(8, "big")
    (tmp_path / "long.flac").write_bytes(bytes(data))
    code = ("import sys\nfrom tinyclap.audio import AudioError, load_audio\ntry:\n"
            f"    load_audio({str(tmp_path / 'long.flac')!r})\nexcept AudioError as e:\n"
            "    sys.exit(str(e))\n")
    res = run_capped(code)
    assert res.returncode == 1
    one_line_error(res, "long.flac: too long to decode whole: declares 68719476735 frames")
    with pytest.raises(AudioError, match="too long to decode whole: declares 44100 frames"):
        load_audio(tmp_path / "t.flac", max_seconds=0.5)
    v &= ~((1 << 36) - 1)  # total samples 0 ("unknown"): libsndfile cannot read such a FLAC; a clear error
    data[off : off + 8] = v.to_bytes(8, "big")
    (tmp_path / "unknown.flac").write_bytes(bytes(data))
    with pytest.raises(AudioError, match=r"unknown\.flac: cannot decode audio"):
        load_audio(tmp_path / "unknown.flac", max_seconds=0.5)


def test_names_with_control_characters_cannot_forge_lines(export_dir: Path, tmp_path: Path) -> None:
    forged = tmp_path / "a.wav\n  0.9999  siren"
    write_wav(forged, tone(1.0), fmt="WAV")
    res = run_capped([*RUNTIME, str(export_dir), str(forged)], timeout=60)
    assert res.returncode == 0
    assert "a.wav\\n  0.9999  siren" in res.stdout and len(res.stdout.splitlines()) == 1 + 3


# --- class files ----------------------------------------------------------------------------------------


def _patch_sizes(path: Path, member: str, size: int) -> None:
    """Rewrite the uncompressed size that `path`'s local and central headers declare for `member`."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    struct.pack_into("<I", data, info.header_offset + 22, size)
    central = bytes(data).find(b"PK\x01\x02")
    while central != -1:
        name_len = struct.unpack_from("<H", data, central + 28)[0]
        if data[central + 46 : central + 46 + name_len] == member.encode():
            struct.pack_into("<I", data, central + 24, size)
        central = bytes(data).find(b"PK\x01\x02", central + 4)
    path.write_bytes(bytes(data))


def _bomb(path: Path, declared: int | None) -> Path:
    """A class file whose weights member inflates to 200 MB of zeros (declared honestly, or as `declared`)."""
    ok = ZeroShotClassifier(LABELS, np.ones((3, DIM)), 1.0)
    ok.save(path.with_suffix(".ok.npz"))
    with zipfile.ZipFile(path.with_suffix(".ok.npz")) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name in ("labels.npy", "meta.npy"):
            z.writestr(name, src.read(name))
        with z.open("weights.npy", "w", force_zip64=True) as m:
            for _ in range(200):
                m.write(bytes(1 << 20))
    if declared is not None:
        _patch_sizes(path, "weights.npy", declared)
    return path


@pytest.mark.parametrize("declared", [None, 4000], ids=["declared", "lying"])
def test_decompression_bomb_refused(tmp_path: Path, declared: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    import tinyclap.zeroshot as zs

    monkeypatch.setitem(zs.NPZ_MEMBERS, "weights.npy", 100 << 20)  # 100 MB: the 200 MB bomb is past it
    bomb = _bomb(tmp_path / "bomb.npz", declared)
    assert bomb.stat().st_size < 1 << 20
    phrase = "declares 209715200 bytes" if declared is None else "weights.npy"
    with pytest.raises(ValueError, match=rf"bomb\.npz: not a usable tinyclap class-matrix file.*{phrase}"):
        ZeroShotClassifier.load(bomb)


def test_class_file_checks(tmp_path: Path, export_dir: Path) -> None:
    os.mkfifo(tmp_path / "fifo.npz")
    res = run_capped([*RUNTIME[:2], "tinyclap.cli", "classify", str(tmp_path / "x.wav"), "--export-dir",
                      str(export_dir), "--classes", str(tmp_path / "fifo.npz")], timeout=60)
    assert res.returncode == 1
    one_line_error(res, "fifo.npz: not a regular file (a FIFO/named pipe)")
    for weights, scale, phrase in [
        (np.full((3, DIM), np.nan), 1.0, "NaN/inf"),
        (np.ones((3, DIM)), float("nan"), "logit_scale"),
        (np.ones((3, DIM)), 1e6, "logit_scale"),
    ]:
        with pytest.raises(ValueError, match=phrase):
            ZeroShotClassifier(LABELS, weights, scale)
    with pytest.raises(ValueError, match="printable"):
        ZeroShotClassifier(["dog\n  0.99  siren", "b", "c"], np.ones((3, DIM)), 1.0)
    # a NaN class matrix inside a file: refused at load, naming the file
    clf = ZeroShotClassifier(LABELS, np.ones((3, DIM)), 1.0)
    clf.save(tmp_path / "c.npz")
    with zipfile.ZipFile(tmp_path / "c.npz") as z:
        members = {n: z.read(n) for n in z.namelist()}
    w = members["weights.npy"]
    members["weights.npy"] = w[: len(w) - 4] + struct.pack("<f", float("nan"))
    with zipfile.ZipFile(tmp_path / "nan.npz", "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(ValueError, match=r"nan\.npz: .*NaN/inf"):
        ZeroShotClassifier.load(tmp_path / "nan.npz")
    members["weights.npy"] = w[:-4]  # the header's shape needs 4 more bytes than follow
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(ValueError, match="data bytes follow"):
        ZeroShotClassifier.load(tmp_path / "short.npz")


# --- export folders -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "outside_link", "bigger"])
def test_export_files_checked_before_reading(copy: Path, tmp_path: Path, kind: str) -> None:
    model = copy / "model.onnx"
    model.unlink()
    if kind == "dev_zero":
        model.symlink_to("/dev/zero")
        phrase = "outside the export folder"
    elif kind == "fifo":
        os.mkfifo(model)
        phrase = "not a regular file (a FIFO/named pipe)"
    elif kind == "outside_link":
        shutil.copy(copy / "student.onnx", tmp_path / "m")
        model.symlink_to(tmp_path / "m")
        phrase = "outside the export folder"
    else:
        with open(model, "wb") as f:
            f.truncate(3 << 30)  # sparse: 3 GB that are never read
        phrase = "bytes, instead of the expected"
    good = write_wav(tmp_path / "good.wav", tone(1.0))
    res = run_capped([*RUNTIME, str(copy), str(good)], timeout=30)
    assert res.returncode == 1
    err = one_line_error(res, "model.onnx: ", phrase)
    assert len(err.strip().splitlines()) == 1 and "good.wav" not in err  # the audio is not blamed


@pytest.mark.parametrize(
    "change, phrase",
    [
        ({"clip_samples": 10**15}, "clip_samples 1000000000000000 is not an integer in 1..2646000"),
        ({"clip_samples": "220500"}, "clip_samples '220500'"),
        ({"sample_rate": 1}, "sample_rate 1 is not"),
        ({"embed_dim": None}, "embed_dim None"),
        ({"files": {"../model.onnx": {"sha256": "0" * 64, "bytes": 1}}}, "is not a plain name"),
        ({"files": {"model.onnx": {"sha256": "0" * 64}}}, "lacks a size"),
        ({"files": []}, "'files' is not an object"),
        ({"classes": {"file": "/etc/passwd"}}, "naming a plain file"),
    ],
)
def test_bad_manifests_are_one_line_errors(copy: Path, tmp_path: Path, change: dict, phrase: str) -> None:
    set_manifest(copy, **change)
    good = write_wav(tmp_path / "good.wav", tone(1.0))
    res = run_capped([*RUNTIME, str(copy), str(good)], timeout=30)
    assert res.returncode == 1
    err = one_line_error(res, "manifest.json: invalid manifest: ", phrase)
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("text", ["[" * 100000 + "]" * 100000, '{"format": "tinyclap-export/1", "x": NaN}',
                                  '{"format": "tinyclap-export/1", "sample_rate": 1e999}', "[1, 2]"])
def test_malformed_manifest_json(copy: Path, text: str) -> None:
    from tinyclap.runtime import ExportError, Runtime

    (copy / "manifest.json").write_text(text)
    with pytest.raises(ExportError, match="manifest.json: "):
        Runtime(copy)


def test_external_data_refused(copy: Path) -> None:
    import onnx

    from tinyclap.deploy.runtime import external_data_refs as refs
    from tinyclap.runtime import ExportError, Runtime

    m = onnx.load(copy / "model.onnx")
    assert refs((copy / "model.onnx").read_bytes()) == []
    big = max(m.graph.initializer, key=lambda t: len(t.raw_data))
    (copy / "weights.bin").write_bytes(big.raw_data)
    big.ClearField("raw_data")
    big.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("length", str((copy / "weights.bin").stat().st_size))):
        entry = big.external_data.add()
        entry.key, entry.value = key, value
    (copy / "model.onnx").write_bytes(m.SerializeToString())
    rehash(copy, "model.onnx")
    size = (copy / "weights.bin").stat().st_size
    expected = ["location=weights.bin", f"length={size}", "(data_location EXTERNAL)"]
    assert refs((copy / "model.onnx").read_bytes()) == expected
    with pytest.raises(ExportError, match=r"model\.onnx: refers to external tensor data \(location=weights\.bin"):
        Runtime(copy)


def test_nan_weights_in_onnx_are_an_error_naming_the_model(copy: Path, tmp_path: Path) -> None:
    import onnx

    m = onnx.load(copy / "model.onnx")
    for t in m.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT and len(t.raw_data) >= 4 * 64:
            t.raw_data = np.full(len(t.raw_data) // 4, np.nan, np.float32).tobytes()
    (copy / "model.onnx").write_bytes(m.SerializeToString())
    rehash(copy, "model.onnx")
    good = write_wav(tmp_path / "good.wav", tone(1.0))
    res = run_capped([*RUNTIME, str(copy), str(good)], timeout=60)
    assert res.returncode == 1 and res.stdout == ""
    one_line_error(res, "model.onnx: the model gave NaN/inf embeddings")


# --- command-line numbers, Ctrl-C -----------------------------------------------------------------------


def test_numbers_are_bounded_and_ctrl_c_exits_130(
    export_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tinyclap.classifier import Classifier
    from tinyclap.cli import main as cli
    from tinyclap.runtime import main

    good = str(write_wav(tmp_path / "good.wav", tone(1.0)))
    for argv in (["--top", "0"], ["--window", "1e9"], ["--hop", "-1"], ["--threads", "100000"]):
        with pytest.raises(SystemExit) as e:
            main([str(export_dir), good, *argv])
        assert e.value.code == 2 and "out of range" in capsys.readouterr().err
    for argv in (["--top", "0"], ["--batch-size", "100000"], ["--window", "inf"]):
        with pytest.raises(SystemExit):
            cli(["classify", good, "--export-dir", str(export_dir), *argv])
        assert "out of range" in capsys.readouterr().err

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Classifier, "classify_files", interrupted)
    assert main([str(export_dir), good]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


# --- a failed export keeps the previous one -------------------------------------------------------------


def test_failed_export_keeps_the_previous_one(export_dir: Path, copy: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, us8k_root: Path) -> None:
    import torch

    import tinyclap.deploy.export as ex
    from tinyclap.deploy.clips import find_audio, pick
    from tinyclap.deploy.onnx import ParityError
    from tinyclap.models.students import create_student
    from tinyclap.runtime import Runtime

    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    student = create_student(NAME, embed_dim=DIM).eval()
    clf = ZeroShotClassifier(LABELS, np.ones((3, DIM)), 1.0)
    parity = pick(find_audio(us8k_root / "audio" / "fold1"), 1)

    def fail(*a: object, **k: object) -> None:
        raise ParityError("parity failed (simulated)")

    monkeypatch.setattr(ex, "parity_report", fail)
    with torch.no_grad(), pytest.raises(ParityError):
        ex.export(student, copy, clf, parity_audio=parity)
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before  # byte for byte, nothing left over
    assert sorted(p.name for p in copy.parent.iterdir()) == ["copy"]
    Runtime(copy)

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and not a tinyclap export.*--overwrite"):
        ex.export(student, other, clf, parity_audio=parity)
    assert (other / "keep.txt").read_text() == "mine"
    monkeypatch.undo()
    ex.export(student, other, clf, parity_audio=parity, overwrite=True)
    assert not (other / "keep.txt").exists() and Runtime(other).labels == LABELS
