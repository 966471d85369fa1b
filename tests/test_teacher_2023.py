"""The MS CLAP 2023 teacher: parity with msclap's own 2023 classes, kind read from tensors, our own format."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import load_msclap_modules, randomise_norms, write_bpe_tokenizer

from tinyclap.models.checkpoint import CheckpointError
from tinyclap.models.msclap2023 import CLAP2023Teacher, Teacher2023Config, save_teacher_2023
from tinyclap.models.teacher import load_teacher

CAPTIONS = ["a dog barking", "Café! a dog", "bark bark bark of a big dog in the rain"]


def make_gpt2_tokenizer(folder: Path) -> Path:
    """A GPT-2 byte-level BPE tokenizer with a small vocabulary: the 256 byte symbols in GPT-2's order (so
    "!" is id 0, as in GPT-2), a few merges and <|endoftext|>."""
    return write_bpe_tokenizer(folder, last=["<|endoftext|>"])


def _load_msclap(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """msclap/models/clap.py with its real HTSAT (htsat.py, config.py, pytorch_utils.py) by file path, under a
    throwaway package name (the msclap package __init__ imports torchaudio and the hub)."""
    return load_msclap_modules(monkeypatch, "_msclap23", ("config", "pytorch_utils", "htsat", "audio", "clap"))["clap"]


@pytest.fixture(scope="module")
def msclap_2023(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, Path]:
    """msclap's CLAP with its full-size HTS-AT and a small GPT-2 (msclap takes any `text_model`), random
    weights, saved as an official `{"model": state_dict}` file; plus a small GPT-2 tokenizer folder."""
    from transformers import GPT2Config, GPT2Model

    mp = pytest.MonkeyPatch()
    clap_mod = _load_msclap(mp)
    tok_dir = make_gpt2_tokenizer(tmp_path_factory.mktemp("gpt2tok"))
    vocab = len(json.loads((tok_dir / "vocab.json").read_text()))
    gpt2 = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=128, n_layer=2, n_head=2)
    mp.setattr(clap_mod, "AutoModel", types.SimpleNamespace(from_pretrained=lambda name: GPT2Model(gpt2)))
    torch.manual_seed(0)
    ref = clap_mod.CLAP(  # msclap's config_2023.yml, text tower shrunk
        audioenc_name="HTSAT", sample_rate=44100, window_size=1024, hop_size=320, mel_bins=64, fmin=50,
        fmax=8000, classes_num=527, out_emb=768, text_model="gpt2", transformer_embed_dim=128, d_proj=1024,
    )  # fmt: skip
    mp.undo()
    randomise_norms(ref, torch.Generator().manual_seed(1), mean_std=5, var_range=(10, 60))
    with torch.no_grad():
        ref.logit_scale.fill_(3.0)
    ref.eval()
    ckpt = tmp_path_factory.mktemp("w") / "CLAP_weights_2023.pth"
    torch.save({"model": ref.state_dict()}, ckpt)
    return ref, ckpt, tok_dir


def test_parity_with_msclap_2023(msclap_2023: tuple[torch.nn.Module, Path, Path]) -> None:
    ref, ckpt, tok_dir = msclap_2023
    state = torch.load(ckpt, weights_only=True)["model"]
    assert any(k.endswith(".relative_position_index") for k in state)  # derived tensors: known extras
    ours = load_teacher(ckpt, tok_dir)
    assert isinstance(ours, CLAP2023Teacher) and not ours.training
    assert ours.config.text["n_embd"] == 128 and ours.config.text["n_layer"] == 2 and ours.logit_scale.item() == 3.0
    assert (ours.sample_rate, ours.clip_seconds, ours.embed_dim) == (44100, 7.0, 1024)

    gen = torch.Generator().manual_seed(2)
    for seconds in (7, 10):  # one image; and msclap's crop-and-average path for more than 1024 frames
        wave = torch.randn(3 - seconds // 7, 44100 * seconds, generator=gen) * 0.1
        with torch.no_grad():
            ref_audio = F.normalize(ref.audio_encoder(wave)[0], dim=-1)
            our_audio = ours.embed_waveform(wave)
        assert (our_audio - ref_audio).abs().max() <= 1e-4, seconds

    # msclap's CLAPWrapper.preprocess_text: caption + " <|endoftext|>", one at a time, padded to 77
    tok = ours.tokenizer
    per = [tok(t + " <|endoftext|>", max_length=77, padding="max_length", return_tensors="pt") for t in CAPTIONS]
    batch = {k: torch.stack([p[k].reshape(-1) for p in per]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        ref_text = F.normalize(ref.caption_encoder(batch), dim=-1)
        our_text = ours.encode_text(CAPTIONS)
    assert ours.tokenize(CAPTIONS)["input_ids"].shape[1] < 77
    assert (our_text - ref_text).abs().max() <= 1e-5


def test_short_clip_is_repeated_to_the_window() -> None:
    torch.manual_seed(0)
    teacher = CLAP2023Teacher(Teacher2023Config.tiny()).eval()
    wave = torch.randn(1, 44100 * 3) * 0.1
    n = 7 * 44100
    tiled = wave.repeat(1, 3)[:, :n]
    assert torch.allclose(teacher.embed_waveform(wave), teacher.embed_waveform(tiled))


def test_our_format_round_trip_and_kinds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tinyclap.models import load_model

    torch.manual_seed(0)
    teacher = CLAP2023Teacher(Teacher2023Config.tiny()).eval()
    saved = save_teacher_2023(teacher, tmp_path / "t23")
    assert json.loads(saved.with_suffix(".json").read_text())["kind"] == "teacher-2023"
    back = load_model(saved)
    wave = torch.randn(2, 44100 * 2) * 0.1
    assert torch.equal(back.embed_waveform(wave), teacher.embed_waveform(wave))

    # an official-layout file holding 2023 tensors but named 2022: recognised by its tensors, said in one line
    official = tmp_path / "CLAP_weights_2022.pth"
    torch.save({"model": teacher.state_dict()}, official)
    loaded = load_teacher(official, config=Teacher2023Config.tiny())  # tiny head counts are in no shape
    assert isinstance(loaded, CLAP2023Teacher)
    assert "named as msclap-2022 but holds msclap-2023 tensors" in capsys.readouterr().err
    # neither layout: one message naming what was expected
    torch.save({"model": {"x.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not an MS CLAP checkpoint: expected"):
        load_teacher(tmp_path / "other.pth")


def test_2022_file_named_2023_is_recognised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import tiny_teacher

    from tinyclap.models.teacher import CLAPTeacher

    path = tmp_path / "CLAP_weights_2023.pth"
    torch.save({"model": tiny_teacher().state_dict()}, path)
    from tinyclap.models.teacher import TeacherConfig

    assert isinstance(load_teacher(path, config=TeacherConfig.tiny()), CLAPTeacher)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tinyclap: {path}: named as msclap-2023 but holds msclap-2022 tensors; loading it as msclap-2022"]


def test_gpt2_tokenizer_refusals(tmp_path: Path) -> None:
    from tinyclap.models.msclap2023 import load_gpt2_tokenizer

    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_gpt2_tokenizer(tmp_path)
    folder = make_gpt2_tokenizer(tmp_path / "tok")
    with pytest.raises(ValueError, match="not GPT-2's vocabulary"):
        load_gpt2_tokenizer(folder, vocab_size=10)


@pytest.fixture(scope="module")
def tiny_2023(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_teacher_2023(CLAP2023Teacher(Teacher2023Config.tiny()), tmp_path_factory.mktemp("t23") / "t")


@pytest.mark.parametrize("change", [
    lambda c: c["text"].update(n_embd=10**9), lambda c: c["text"].update(n_inner=10**9),
    lambda c: c["text"].update(attn_implementation="x"), lambda c: c.update(text=[1]),
    lambda c: c["htsat"].update(dim=10**9), lambda c: c["htsat"].update(depths=["x"]),
    lambda c: c["htsat"].update(spec_size=65), lambda c: c.update(clip_seconds=1e9),
], ids=["width", "inner", "unknown-key", "text-list", "htsat-width", "depth-str", "spec", "window"])
def test_hostile_2023_configs_are_refused_before_building(tiny_2023: Path, tmp_path: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    meta = json.loads(tiny_2023.with_suffix(".json").read_text())
    change(meta["teacher"])
    saved = tmp_path / "t.safetensors"
    save_file(load_file(tiny_2023), saved, metadata={"tinyclap": json.dumps(meta)})
    saved.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="invalid MS CLAP 2023 teacher config"):
        load_teacher(saved)
