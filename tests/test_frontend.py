"""tinyclap.audio.frontend.LogMel: parity with librosa's mel filters and msclap's torchlibrosa front end, ONNX."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_python, us8k_clips

from tinyclap.audio import fit_clip, load_audio
from tinyclap.audio.frontend import CONFIG_KEYS, LogMel, mel_filterbank, n_frames

TOL_DB = 1e-3


def _torchlibrosa_stft():
    """torchlibrosa.stft (the reference msclap's Cnn14 uses); by file path if the package import fails."""
    try:
        return importlib.import_module("torchlibrosa.stft")
    except ImportError:
        path = importlib.metadata.distribution("torchlibrosa").locate_file("torchlibrosa/stft.py")
        spec = importlib.util.spec_from_file_location("_ref_torchlibrosa_stft", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    """msclap Cnn14's spectrogram_extractor + logmel_extractor, built with exactly its arguments."""
    stft = _torchlibrosa_stft()
    spec = stft.Spectrogram(n_fft=1024, hop_length=320, win_length=1024, window="hann", center=True,
                            pad_mode="reflect", freeze_parameters=True)
    logmel = stft.LogmelFilterBank(sr=44100, n_fft=1024, n_mels=64, fmin=50, fmax=14000, ref=1.0, amin=1e-10,
                                   top_db=None, freeze_parameters=True)
    return torch.nn.Sequential(spec, logmel).eval()


@pytest.fixture(scope="module")
def logmel() -> LogMel:
    return LogMel().eval()


def _ref(reference: torch.nn.Module, wave: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return reference(wave)[:, 0]  # (B, 1, T, 64) -> (B, T, 64)


def test_msclap_builds_the_front_end_this_way() -> None:
    """Guard the settings above against the installed msclap source (Cnn14's front-end arguments)."""
    src = Path(importlib.metadata.distribution("msclap").locate_file("msclap/models/audio.py")).read_text()
    cnn14 = src[src.index("class Cnn14(") :]
    cnn14 = cnn14[: cnn14.index("def forward")]
    for setting in ("window = 'hann'", "center = True", "pad_mode = 'reflect'", "ref = 1.0", "amin = 1e-10",
                    "top_db = None"):
        assert setting in cnn14


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sr=44100, n_fft=1024, n_mels=64, fmin=50, fmax=14000),  # msclap 2022
        dict(sr=32000, n_fft=1024, n_mels=64, fmin=50, fmax=14000),
        dict(sr=16000, n_fft=512, n_mels=40, fmin=0, fmax=None),
        dict(sr=22050, n_fft=2048, n_mels=128, fmin=20, fmax=8000),
    ],
)
def test_mel_filterbank_matches_librosa(kwargs: dict) -> None:
    librosa = importlib.import_module("librosa")  # a test-only dependency, never a runtime one
    ref = librosa.filters.mel(**kwargs)  # float32, htk=False, norm='slaney'
    ours = mel_filterbank(kwargs["sr"], kwargs["n_fft"], kwargs["n_mels"], kwargs["fmin"], kwargs["fmax"])
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)


def test_stft_power_matches_numpy_fft(logmel: LogMel) -> None:
    """Independent of torchlibrosa: the conv DFT equals numpy's rfft of reflect-padded Hann frames."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5000)
    padded = np.pad(x, 512, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, 1024)[::320]  # (T, 1024)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (T, 513)
    expected = 10 * np.log10(np.maximum(power @ mel_filterbank().T, 1e-10))
    with torch.no_grad():
        got = logmel(torch.from_numpy(x).float())[0].numpy()
    assert got.shape == expected.shape == (n_frames(5000), 64)
    assert np.abs(got - expected).max() <= TOL_DB


def test_parity_with_torchlibrosa_noise(logmel: LogMel, reference: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(3, 220500, generator=g) * torch.tensor([[1.0], [0.05], [1e-3]])  # loud to quiet
    with torch.no_grad():
        ours = logmel(wave)
    ref = _ref(reference, wave)
    assert ours.shape == ref.shape == (3, 690, 64)
    assert (ours - ref).abs().max().item() <= TOL_DB


def test_parity_with_torchlibrosa_real_recordings(
    logmel: LogMel, reference: torch.nn.Module, us8k_root: Path, animals_dir: Path
) -> None:
    us8k = us8k_clips(us8k_root, 2)
    files = us8k + [animals_dir / "cat.mp3", animals_dir / "duck.mp3", animals_dir / "sheep.mp3"]
    batch = torch.from_numpy(np.stack([fit_clip(load_audio(f)) for f in files]))  # (5, 220500)
    with torch.no_grad():
        ours = logmel(batch)
    ref = _ref(reference, batch)
    assert ours.shape == (len(files), 690, 64)
    diff = (ours - ref).abs().amax(dim=(1, 2))
    assert diff.max().item() <= TOL_DB, dict(zip([f.name for f in files], diff.tolist()))
    assert ours.min() >= -100.0 and torch.isfinite(ours).all()


def test_shapes_and_frames(logmel: LogMel) -> None:
    assert n_frames(220500) == 690 and logmel.n_frames(220500) == 690
    with torch.no_grad():
        assert logmel(torch.zeros(220500)).shape == (1, 690, 64)  # silence -> the floor, no NaN
        assert (logmel(torch.zeros(220500)) == -100.0).all()
        for n in (513, 1000, 44100, 100_001):
            assert logmel(torch.randn(2, n)).shape == (2, n // 320 + 1, 64) == (2, n_frames(n), 64)
        assert logmel(torch.randn(1, 2000, dtype=torch.float64)).dtype == torch.float32
    with pytest.raises(ValueError, match="too short"):
        logmel(torch.zeros(1, 512))
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        logmel(torch.zeros(1, 1, 2000))


def test_config_and_state(logmel: LogMel) -> None:
    config = logmel.config()
    assert tuple(config) == CONFIG_KEYS
    assert config == {"sample_rate": 44100, "n_fft": 1024, "hop_length": 320, "win_length": 1024, "n_mels": 64,
                      "f_min": 50.0, "f_max": 14000.0, "amin": 1e-10, "ref": 1.0}
    clone = LogMel.from_config(config)
    assert torch.equal(clone.dft, logmel.dft) and torch.equal(clone.mel, logmel.mel)
    other = LogMel.from_config({**config, "n_mels": 32, "sample_rate": 32000})
    assert other(torch.randn(32000)).shape == (1, 101, 32)
    with pytest.raises(ValueError, match="unknown LogMel config keys"):
        LogMel.from_config({**config, "nmels": 64})
    # constants, not weights: nothing in the state dict, nothing to train
    assert logmel.state_dict() == {} and list(logmel.parameters()) == []
    assert logmel.dft.dtype == torch.float32 and logmel.dft.shape == (1026, 1, 1024)
    logmel.to(torch.float64)  # buffers follow .to(); forward casts its input to them
    try:
        assert logmel(torch.randn(1, 2000, dtype=torch.float64)).dtype == torch.float64
    finally:
        logmel.to(torch.float32)


def test_ref_other_than_one() -> None:
    wave = torch.randn(1, 4000)
    with torch.no_grad():
        a, b = LogMel()(wave), LogMel(ref=10.0)(wave)
    torch.testing.assert_close(b, a - 10.0)


def test_frontend_does_not_import_librosa() -> None:
    code = "import sys, tinyclap.audio.frontend; sys.exit('librosa' in sys.modules)"
    assert run_python(code).returncode == 0


def test_onnx_export_dynamic_batch(logmel: LogMel, tmp_path: Path) -> None:
    ort = importlib.import_module("onnxruntime")
    path = tmp_path / "logmel.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation / constant-folding notes
        # dynamo=False: the torch.export-based exporter needs onnxscript, which is not a dependency
        torch.onnx.export(logmel, (torch.randn(1, 220500),), str(path), input_names=["wave"],
                          output_names=["logmel"], dynamic_axes={"wave": {0: "batch"}, "logmel": {0: "batch"}},
                          opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        wave = torch.randn(batch, 220500, generator=g) * 0.1
        (got,) = session.run(None, {"wave": wave.numpy()})
        with torch.no_grad():
            expected = logmel(wave).numpy()
        assert got.shape == (batch, 690, 64)
        assert np.abs(got - expected).max() <= TOL_DB
