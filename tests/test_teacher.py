"""The CLAP teacher: parity with msclap at full size, strict/safe loading, our own format, tiny configs."""

from __future__ import annotations

import math
import pickle
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import load_msclap_modules, randomise_norms, tiny_teacher

from tinyclap.models.checkpoint import CheckpointError, save_model
from tinyclap.models.cnn14 import Cnn14
from tinyclap.models.teacher import (
    AudioEncoder,
    CLAPTeacher,
    Teacher,
    TeacherConfig,
    bundled_tokenizer_dir,
    load_teacher,
    save_teacher,
)

TOKENIZER_DIR = bundled_tokenizer_dir()
CAPTIONS = [
    "a dog barking",
    "Rain FALLING on a tin roof, café ambience",
    "this is a sound of an engine idling in the street",
]


def _load_msclap(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """msclap/models/clap.py (+ audio.py) by file path, under a throwaway package name.

    The msclap package __init__ imports CLAPWrapper (torchaudio, hub download), so it is bypassed; HTSAT
    (the 2023 audio tower) is stubbed because the 2022 model never uses it.
    """
    # clap.py does `from .audio import ...`
    return load_msclap_modules(monkeypatch, "_msclap_ref", ("audio", "clap"), {"htsat": {"HTSATWrapper": None}})["clap"]


def test_full_size_parity_with_msclap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    clap_mod = _load_msclap(monkeypatch)
    # bert-base-uncased's architecture, written here independently of tinyclap's constant
    bert = BertConfig(
        vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2,
        layer_norm_eps=1e-12, pad_token_id=0,
    )  # fmt: skip

    def from_pretrained(name: str) -> BertModel:
        assert name == "bert-base-uncased"
        return BertModel(bert)

    monkeypatch.setattr(clap_mod, "AutoModel", types.SimpleNamespace(from_pretrained=from_pretrained))
    torch.manual_seed(0)
    ref = clap_mod.CLAP(  # msclap's config_2022.yml
        audioenc_name="Cnn14", sample_rate=44100, window_size=1024, hop_size=320, mel_bins=64, fmin=50,
        fmax=14000, classes_num=527, out_emb=2048, text_model="bert-base-uncased", transformer_embed_dim=768,
        d_proj=1024,
    )  # fmt: skip
    randomise_norms(ref, torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref.logit_scale.fill_(2.5)
    ref.eval()
    state = ref.state_dict()
    assert any(k.startswith("audio_encoder.base.spectrogram_extractor.") for k in state)
    # older transformers (the official file's) saved BERT's position ids; they must be tolerated
    state["caption_encoder.base.embeddings.position_ids"] = torch.arange(512)[None]
    ckpt = tmp_path / "CLAP_weights_2022.pth"
    torch.save({"model": state}, ckpt)
    del state

    ours = load_teacher(ckpt, TOKENIZER_DIR)
    assert not ours.training
    assert ours.config == TeacherConfig.msclap2022()
    assert ours.logit_scale.item() == 2.5

    wave = torch.randn(2, 44100, generator=torch.Generator().manual_seed(2)) * 0.1  # 1 s at 44.1 kHz
    with torch.no_grad():
        ref_audio, ref_tags = ref.audio_encoder(wave)  # (2, 1024) projected, (2, 527) AudioSet tags
        ref_audio = F.normalize(ref_audio, dim=-1)
        logmel = ours.frontend(wave)  # (2, 138, 64)
        our_audio = ours.encode_audio(logmel)
        our_tags = ours.audio_encoder.base.classify(logmel)
    assert our_audio.shape == (2, 1024)
    assert (our_audio - ref_audio).abs().max() <= 1e-5
    assert (our_tags - ref_tags).abs().max() <= 1e-5

    # msclap's CLAPWrapper.preprocess_text: one caption at a time, padded to text_len=100, then stacked
    # (its tokenizer.encode_plus is gone in transformers 5; calling the tokenizer is the same thing)
    tok = ours.tokenizer
    per_caption = [
        tok(t, add_special_tokens=True, max_length=100, padding="max_length", return_tensors="pt")
        for t in CAPTIONS
    ]
    batch = {
        k: torch.stack([p[k].reshape(-1) for p in per_caption])
        for k in ("input_ids", "token_type_ids", "attention_mask")
    }
    assert batch["input_ids"].shape == (3, 100)
    with torch.no_grad():
        ref_text = F.normalize(ref.caption_encoder(batch), dim=-1)  # (3, 1024)
        our_text = ours.encode_text(CAPTIONS)  # padded to the longest caption only
    assert ours.tokenize(CAPTIONS)["input_ids"].shape[1] < 100
    assert (our_text - ref_text).abs().max() <= 1e-5


# ---------------------------------------------------------------- tiny teachers: loading, errors, format


@pytest.fixture(scope="module")
def tiny() -> CLAPTeacher:
    teacher = tiny_teacher(tokenizer=TOKENIZER_DIR)
    randomise_norms(teacher, torch.Generator().manual_seed(3))
    return teacher.eval()


@pytest.fixture(scope="module")
def logmel() -> torch.Tensor:
    return torch.randn(2, 101, 64, generator=torch.Generator().manual_seed(4)) * 10 - 40  # (B, T, 64) dB-ish


def _official_layout(teacher: CLAPTeacher) -> dict[str, torch.Tensor]:
    """The teacher's tensors plus the extras of official MS CLAP files (torchlibrosa, position ids)."""
    state = dict(teacher.state_dict())
    state["audio_encoder.base.spectrogram_extractor.stft.conv_real.weight"] = torch.zeros(513, 1, 1024)
    state["audio_encoder.base.spectrogram_extractor.stft.conv_imag.weight"] = torch.zeros(513, 1, 1024)
    state["audio_encoder.base.logmel_extractor.melW"] = torch.zeros(513, 64)
    state["caption_encoder.base.embeddings.position_ids"] = torch.arange(512)[None]
    return state


def test_official_layout_known_extras_are_tolerated(
    tiny: CLAPTeacher, logmel: torch.Tensor, tmp_path: Path
) -> None:
    path = tmp_path / "clap.pth"
    torch.save({"model": _official_layout(tiny)}, path)
    loaded = load_teacher(path, config=TeacherConfig.tiny())
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded.encode_audio(logmel), tiny.encode_audio(logmel))


def _drop(state: dict, key: str) -> None:
    del state[key]


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda s: s.__setitem__("audio_encoder.base.conv_block7.conv1.weight", torch.zeros(1)),
         ["unexpected keys (1)", "audio_encoder.base.conv_block7.conv1.weight"]),
        # a look-alike of a known extra is not a known extra
        (lambda s: s.__setitem__("audio_encoder.spectrogram_extractor.stft.conv_real.weight", torch.zeros(1)),
         ["unexpected keys (1)", "audio_encoder.spectrogram_extractor.stft.conv_real.weight"]),
        (lambda s: _drop(s, "caption_encoder.projection.layer_norm.bias"),
         ["missing keys (1)", "caption_encoder.projection.layer_norm.bias"]),
        (lambda s: s.__setitem__("audio_encoder.projection.linear2.weight", torch.zeros(3, 3)),
         ["wrong shapes (1)", "audio_encoder.projection.linear2.weight: checkpoint (3, 3) vs model (64, 64)"]
         ),
    ],
    ids=["unexpected", "lookalike-extra", "missing", "wrong-shape"],
)  # fmt: skip
def test_official_layout_mismatch_is_named(tiny: CLAPTeacher, tmp_path: Path, mutate, words) -> None:
    state = _official_layout(tiny)
    mutate(state)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as err:
        load_teacher(path, config=TeacherConfig.tiny())
    msg = str(err.value)
    assert str(path) in msg
    for w in words:
        assert w in msg


def test_official_layout_infers_audio_sizes_and_names_text_mismatch(
    tiny: CLAPTeacher, tmp_path: Path
) -> None:
    """Without config= the audio sizes come from the shapes; the (tiny) BERT is then reported, not guessed."""
    path = tmp_path / "tiny.pth"
    torch.save({"model": _official_layout(tiny)}, path)
    with pytest.raises(CheckpointError) as err:
        load_teacher(path)
    msg = str(err.value)
    word = "caption_encoder.base.embeddings.word_embeddings.weight"
    assert f"{word}: checkpoint (30522, 32) vs model (30522, 768)" in msg
    assert "audio_encoder.base" not in msg  # Cnn14 (8..64) and d_proj 64 were inferred correctly
    assert "Cnn14 (8, 16, 32, 64, 64, 64), d_proj 64" in msg and "pass config=" in msg


class _Hostile:
    """Unpickling this runs open(target, 'w'), i.e. creates a file."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_hostile_pickle_is_refused_without_running(tmp_path: Path) -> None:
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Hostile(str(control))))  # the payload really does run code when unpickled
    assert control.exists()

    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"audio_encoder.base.bn0.weight": torch.ones(64), "x": _Hostile(str(target))}}, path)
    with pytest.raises(CheckpointError, match="refused or unreadable"):
        load_teacher(path)
    assert not target.exists()


def test_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.pth"
    torch.save({"model": {"a": 1}}, path)
    with pytest.raises(CheckpointError, match="not tensors"):
        load_teacher(path)


def test_own_format_round_trip(tiny: CLAPTeacher, logmel: torch.Tensor, tmp_path: Path) -> None:
    st = save_teacher(tiny, tmp_path)  # a folder gets teacher.safetensors + teacher.json
    assert st == tmp_path / "teacher.safetensors" and (tmp_path / "teacher.json").is_file()
    for spec in (st, tmp_path / "teacher.json", tmp_path):
        loaded = load_teacher(spec, TOKENIZER_DIR)
        assert not loaded.training and loaded.config == tiny.config
        ours, theirs = loaded.state_dict(), tiny.state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with torch.no_grad():
        assert torch.equal(loaded.encode_audio(logmel), tiny.encode_audio(logmel))
        assert torch.equal(loaded.encode_text(CAPTIONS), tiny.encode_text(CAPTIONS))


def test_own_format_of_another_kind_is_refused(tmp_path: Path) -> None:
    save_model(torch.nn.Linear(2, 2), tmp_path / "student", {"kind": "student"})
    with pytest.raises(CheckpointError, match="not a teacher"):
        load_teacher(tmp_path / "student.safetensors")


def test_audio_only_without_tokenizer(tiny: CLAPTeacher, logmel: torch.Tensor, tmp_path: Path) -> None:
    loaded = load_teacher(save_teacher(tiny, tmp_path / "t"))
    assert loaded.encode_audio(logmel).shape == (2, 64)
    with pytest.raises(RuntimeError, match="tokenizer_dir"):
        loaded.encode_text(["a dog"])


def test_bad_tokenizer_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        CLAPTeacher(TeacherConfig.tiny(), tmp_path)


def test_text_padding_and_truncation(tiny: CLAPTeacher) -> None:
    long = "a very long caption about a dog " * 40
    ids = tiny.tokenize([long, "dog"])["input_ids"]
    assert ids.shape == (2, 100)  # truncated at max_length, [CLS] ... [SEP] kept
    assert ids[0, 0] == 101 and ids[0, -1] == 102
    with torch.no_grad():
        together = tiny.encode_text(CAPTIONS)
        alone = torch.cat([tiny.encode_text([c]) for c in CAPTIONS])
    assert (together - alone).abs().max() <= 1e-6  # padding never changes the [CLS] output
    assert torch.allclose(together.norm(dim=-1), torch.ones(3))
    with pytest.raises(TypeError):
        tiny.encode_text("a dog")


def test_encode_uses_eval_semantics_and_restores_mode(tiny: CLAPTeacher, logmel: torch.Tensor) -> None:
    with torch.no_grad():
        ref = tiny.encode_audio(logmel)
        tiny.train()
        try:
            again = tiny.encode_audio(logmel)
            text = tiny.encode_text(CAPTIONS[:1])
            assert tiny.training and tiny.audio_encoder.base.training  # flags restored
        finally:
            tiny.eval()
    assert torch.equal(again, ref)
    assert torch.equal(text, tiny.encode_text(CAPTIONS[:1]))
    assert tiny.audio_encoder.base.bn0.num_batches_tracked.item() == 0  # BN statistics untouched


def test_teacher_protocol_and_attributes(tiny: CLAPTeacher) -> None:
    assert isinstance(tiny, Teacher)
    assert tiny.sample_rate == 44100 and tiny.embed_dim == 64
    assert math.isclose(TeacherConfig.tiny().logit_scale_init, math.log(1 / 0.07))
    wave = torch.randn(2, 22050, generator=torch.Generator().manual_seed(5))
    emb = tiny.embed_waveform(wave)
    assert emb.shape == (2, 64) and not emb.requires_grad
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2))
    assert not any(k.startswith("frontend.") for k in tiny.state_dict())


def test_tiny_d_proj_is_configurable() -> None:
    teacher = CLAPTeacher(TeacherConfig.tiny(d_proj=16)).eval()
    assert teacher.encode_audio(torch.zeros(1, 64, 64)).shape == (1, 16)
    assert teacher.caption_encoder.projection.linear1.weight.shape == (16, 32)


def test_config_json_round_trip_and_literal_bert_base() -> None:
    cfg = TeacherConfig.msclap2022()
    assert TeacherConfig.from_dict(cfg.to_dict()) == cfg
    t = cfg.text
    assert (t["vocab_size"], t["hidden_size"]) == (30522, 768)
    assert (t["num_hidden_layers"], t["num_attention_heads"]) == (12, 12)
    assert (t["intermediate_size"], t["max_position_embeddings"], t["type_vocab_size"]) == (3072, 512, 2)
    assert (cfg.d_proj, cfg.max_length, cfg.audio_embed_dim, cfg.classes) == (1024, 100, 2048, 527)
    assert cfg.frontend["sample_rate"] == 44100 and cfg.frontend["n_mels"] == 64
    with pytest.raises(ValueError, match="unknown TeacherConfig keys"):
        TeacherConfig.from_dict({**cfg.to_dict(), "dproj": 3})


def test_full_audio_tower_parameter_count() -> None:
    tower = AudioEncoder()  # Cnn14 (fc_audioset included) + Projection 2048 -> 1024
    assert sum(p.numel() for p in tower.parameters()) == 83_901_391


def test_cnn14_input_checks() -> None:
    net = Cnn14((8, 16, 32, 64, 64, 64)).eval()
    assert net(torch.zeros(2, 40, 64)).shape == (2, 64)
    with pytest.raises(ValueError, match="32 log-mel frames"):
        net(torch.zeros(1, 20, 64))
    with pytest.raises(ValueError, match=r"\(B, T, 64\)"):
        net(torch.zeros(1, 40, 128))


def test_normalize_is_explicit(tiny: CLAPTeacher, logmel: torch.Tensor) -> None:
    """Every encoder takes normalize= (open_clip style); the default (True) is what callers always got."""
    with torch.no_grad():
        raw = tiny.encode_audio(logmel, normalize=False)
        assert torch.equal(tiny.encode_audio(logmel), F.normalize(raw, dim=-1))
        assert not torch.allclose(raw.norm(dim=-1), torch.ones(2))
        text = tiny.encode_text(CAPTIONS, normalize=False)
        assert torch.equal(tiny.encode_text(CAPTIONS), F.normalize(text, dim=-1))
    wave = torch.randn(2, 22050, generator=torch.Generator().manual_seed(6))
    raw_wave = tiny.embed_waveform(wave, normalize=False)
    torch.testing.assert_close(tiny.embed_waveform(wave), F.normalize(raw_wave, dim=-1))


def test_config_checked_against_tensors_before_building(tiny: CLAPTeacher, tmp_path: Path) -> None:
    """Our format: a config that does not describe the tensors is refused (meta-device check) and an absurd
    size is refused from the config alone, the file named either way."""
    import json

    from safetensors.torch import load_file, save_file

    st = save_teacher(tiny, tmp_path / "t")
    meta = json.loads(st.with_suffix(".json").read_text())
    for change, words in (({"d_proj": 32}, "wrong shapes"), ({"d_proj": 10**9}, "sizes out of range"),
                          ({"text": {**meta["teacher"]["text"], "num_hidden_layers": 10**6}}, "sizes out of range")):
        bad = tmp_path / "bad.safetensors"
        cfg = {**meta, "teacher": {**meta["teacher"], **change}}
        save_file(load_file(str(st)), str(bad), metadata={"tinyclap": json.dumps(cfg)})
        with pytest.raises(CheckpointError, match=words) as e:
            load_teacher(bad)
        assert str(bad) in str(e.value)


def test_load_teacher_names_the_loader_for_a_student(tmp_path: Path) -> None:
    save_model(torch.nn.Linear(2, 2), tmp_path / "student", {"kind": "student"})
    with pytest.raises(CheckpointError, match="load_student"):
        load_teacher(tmp_path)
