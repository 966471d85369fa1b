"""A transformers ClapModel (LAION-CLAP) as the teacher: parity with get_*_features, folders, the Hub cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import write_bpe_tokenizer

from tinyclap.models.checkpoint import CheckpointError
from tinyclap.models.hfclap import HFClapTeacher
from tinyclap.models.teacher import load_teacher

CAPTIONS = ["a dog barking", "rain on a roof", "bark"]


def make_roberta_tokenizer(folder: Path) -> Path:
    """A RoBERTa byte-level BPE tokenizer (CLAP's text side) with a small vocabulary."""
    return write_bpe_tokenizer(folder, first=["<s>", "<pad>", "</s>", "<unk>"], last=["<mask>"])


def save_tiny_clap(folder: Path, fusion: bool = False, seed: int = 0) -> Path:
    """A tiny random ClapModel + its processor, written with save_pretrained (1 s windows at 48 kHz)."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    tok = RobertaTokenizer.from_pretrained(str(make_roberta_tokenizer(folder / "_tok")), local_files_only=True)
    text = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=37, max_position_embeddings=80, projection_dim=16)
    audio = dict(spec_size=64, num_mel_bins=16, window_size=4, patch_size=2, patch_stride=(2, 2),
                 hidden_size=32, patch_embeds_hidden_size=16, depths=[2, 2], num_attention_heads=[2, 2],
                 projection_dim=16, enable_fusion=fusion)
    torch.manual_seed(seed)
    model = ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=16)).eval()
    extractor = ClapFeatureExtractor(feature_size=16, max_length_s=1, truncation="fusion" if fusion else "rand_trunc")
    model.save_pretrained(folder)
    ClapProcessor(feature_extractor=extractor, tokenizer=tok).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("fusion", [False, True], ids=["unfused", "fused"])
def test_parity_with_get_features(tmp_path: Path, fusion: bool) -> None:
    from transformers import ClapModel, ClapProcessor

    folder = save_tiny_clap(tmp_path / "clap", fusion=fusion)
    ours = load_teacher(folder)
    assert isinstance(ours, HFClapTeacher) and ours.fusion is fusion
    assert (ours.sample_rate, ours.clip_seconds, ours.embed_dim) == (48000, 1.0, 16)
    ref = ClapModel.from_pretrained(folder).eval()
    proc = ClapProcessor.from_pretrained(folder)
    waves = torch.randn(3, 30000, generator=torch.Generator().manual_seed(1)) * 0.1  # shorter than the window
    inputs = proc.feature_extractor(list(waves.double().numpy()), sampling_rate=48000, return_tensors="pt")
    if fusion:  # the extractor marks a random clip as longer when none is; none of these is
        inputs["is_longer"] = torch.zeros_like(inputs["is_longer"])
    with torch.no_grad():
        ref_audio = ref.get_audio_features(**inputs)
        ref_text = ref.get_text_features(**proc.tokenizer(CAPTIONS, padding=True, return_tensors="pt"))
    # transformers 5 returns an output whose pooler_output is the normalised embedding; 4.x the tensor
    ref_audio, ref_text = (getattr(x, "pooler_output", x) for x in (ref_audio, ref_text))
    assert (ours.embed_waveform(waves) - ref_audio).abs().max() <= 1e-5
    with torch.no_grad():
        assert (ours.encode_text(CAPTIONS) - ref_text).abs().max() <= 1e-5


def test_long_input_is_cut_to_the_first_window(tmp_path: Path) -> None:
    ours = load_teacher(save_tiny_clap(tmp_path / "clap"))
    wave = torch.randn(1, 48000 * 3) * 0.1
    assert torch.allclose(ours.embed_waveform(wave), ours.embed_waveform(wave[:, :48000]))


def test_folder_that_is_not_a_clap(tmp_path: Path) -> None:
    from transformers import BertConfig

    folder = tmp_path / "bert"
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(folder)
    with pytest.raises(CheckpointError, match=r"not a CLAP \(model_type 'bert'\); expected a transformers ClapModel"):
        load_teacher(folder)
    huge = save_tiny_clap(tmp_path / "huge")
    cfg = json.loads((huge / "config.json").read_text())
    cfg["text_config"]["hidden_size"] = 10**9
    (huge / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="sizes out of range"):
        load_teacher(huge)


def _fill_hub_cache(cache: Path, repo: str, folder: Path, revision: str) -> None:
    """The Hub cache layout huggingface_hub reads (models--OWNER--NAME/{refs,snapshots}), filled from `folder`."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / revision
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        if f.is_file():
            (snap / f.name).write_bytes(f.read_bytes())
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)


def test_hub_spec_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hc

    cache = tmp_path / "hub"
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    rev = "0123456789abcdef0123456789abcdef01234567"
    _fill_hub_cache(cache, "someone/tiny-clap", save_tiny_clap(tmp_path / "clap"), rev)
    for spec in ("hf:someone/tiny-clap", f"hf:someone/tiny-clap@{rev}"):
        assert isinstance(load_teacher(spec), HFClapTeacher)
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache .* expected a cached snapshot of a "
                                              "transformers ClapModel"):
        load_teacher("hf:someone/tiny-clap@" + "f" * 40)
    with pytest.raises(CheckpointError, match="expected hf:OWNER/NAME"):
        load_teacher("hf:nonsense")
