"""Distillation loss terms and recipes (tinyclap.train.losses, tinyclap.train.recipes) and the cache's text bank
(tinyclap.train.cache.textbank).

Each term's value and gradient are checked against an independent float64 numpy computation: the value by a
hand-written formula, the gradient by central finite differences of that formula (and, for the text KL, by
its closed form too). The text bank is built on a small synthetic Clotho layout (captions) with the tiny
random teacher and the bundled BERT tokenizer.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import distinct_sound, tiny_teacher, write_csv, write_wav

from tinyclap.train.cache import CacheError, build_cache
from tinyclap.train.cache.textbank import (
    add_text_bank,
    apply_exclusion,
    default_vocabulary,
    exclusion_names,
    read_label_file,
    read_text_bank,
)
from tinyclap.train.losses import DistillLoss, cosine_term, relational_term, text_kl_term
from tinyclap.train.recipes import RECIPES, Recipe, resolve_recipe
from tinyclap.train.targets import distill_loss

B, D, K, TAU = 5, 6, 7, 0.3


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_cosine(s: np.ndarray, t: np.ndarray) -> float:
    return -float(np.mean(np.sum(_unit(s) * _unit(t), axis=-1)))


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_text_kl(s: np.ndarray, t: np.ndarray, bank: np.ndarray, tau: float) -> float:
    log_pt = np_log_softmax(_unit(t) @ bank.T / tau)
    log_ps = np_log_softmax(_unit(s) @ bank.T / tau)
    return float(np.mean(np.sum(np.exp(log_pt) * (log_pt - log_ps), axis=-1)))


def np_relational(s: np.ndarray, t: np.ndarray) -> float:
    su, tu = _unit(s), _unit(t)
    n = s.shape[0]
    pairs = [(su[i] @ su[j] - tu[i] @ tu[j]) ** 2 for i in range(n) for j in range(n) if i != j]
    return float(np.mean(pairs))


def finite_diff(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        g[idx] = (f(xp) - f(xm)) / (2 * eps)
    return g


@pytest.fixture
def tensors() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    s = rng.normal(size=(B, D)) * 2.0  # unnormalised student output
    t = _unit(rng.normal(size=(B, D)))
    bank = _unit(rng.normal(size=(K, D)))
    return s, t, bank


def torch_value_and_grad(fn, s: np.ndarray, *args) -> tuple[float, np.ndarray]:
    st = torch.tensor(s, dtype=torch.float32, requires_grad=True)
    out = fn(st, *[torch.tensor(a, dtype=torch.float32) if isinstance(a, np.ndarray) else a for a in args])
    out.backward()
    return out.item(), st.grad.double().numpy()


# ------------------------------------------------------------------------------------------------ terms


def test_cosine_term_value_and_gradient(tensors) -> None:
    s, t, _ = tensors
    value, grad = torch_value_and_grad(cosine_term, s, t)
    assert value == pytest.approx(np_cosine(s, t), abs=1e-6)
    np.testing.assert_allclose(grad, finite_diff(lambda x: np_cosine(x, t), s), atol=1e-5)


def test_text_kl_value_and_gradient(tensors) -> None:
    s, t, bank = tensors
    value, grad = torch_value_and_grad(text_kl_term, s, t, bank, TAU)
    assert value == pytest.approx(np_text_kl(s, t, bank, TAU), abs=1e-6)
    np.testing.assert_allclose(grad, finite_diff(lambda x: np_text_kl(x, t, bank, TAU), s), atol=1e-5)
    # the closed form: dKL/dz_s = (p_s - p_t) / B for the student's logits z_s = ŝ B^T / tau, chained through
    # the normalisation ŝ = s / |s| (Jacobian (I - ŝŝ^T) / |s|)
    su, norm = _unit(s), np.linalg.norm(s, axis=-1, keepdims=True)
    p_s, p_t = np.exp(np_log_softmax(su @ bank.T / TAU)), np.exp(np_log_softmax(_unit(t) @ bank.T / TAU))
    d_su = (p_s - p_t) @ bank / TAU / B
    closed = (d_su - np.sum(d_su * su, axis=-1, keepdims=True) * su) / norm
    np.testing.assert_allclose(grad, closed, atol=1e-6)
    # zero, with zero gradient, when the student points where the teacher does
    v0, g0 = torch_value_and_grad(text_kl_term, t * 3.0, t, bank, TAU)
    assert abs(v0) < 1e-6 and np.abs(g0).max() < 1e-5


def test_relational_value_and_gradient(tensors) -> None:
    s, t, _ = tensors
    value, grad = torch_value_and_grad(relational_term, s, t)
    assert value == pytest.approx(np_relational(s, t), abs=1e-6)
    np.testing.assert_allclose(grad, finite_diff(lambda x: np_relational(x, t), s), atol=1e-5)
    one, g1 = torch_value_and_grad(relational_term, s[:1], t[:1])  # a batch of one: no pair, zero
    assert one == 0.0 and not g1.any()


def test_paper_loss_is_eq7_bit_for_bit_and_plus_is_the_weighted_sum(tensors) -> None:
    s, t, bank = (torch.tensor(a, dtype=torch.float32) for a in tensors)
    total, parts = DistillLoss(RECIPES["paper"])(s, t)
    assert torch.equal(total, distill_loss(s, t)) and list(parts) == ["cosine"]
    w = Recipe(cos_weight=0.5, kl_weight=2.0, kl_temperature=TAU, rel_weight=3.0)
    total, parts = DistillLoss(w, bank)(s, t)
    assert list(parts) == ["cosine", "text_kl", "relational"]
    expected = 0.5 * parts["cosine"] + 2.0 * parts["text_kl"] + 3.0 * parts["relational"]
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(parts["text_kl"], text_kl_term(s, t, bank, TAU))
    with pytest.raises(ValueError, match="needs a text bank"):
        DistillLoss(w)
    # a pruned student: the bank is restricted to the kept entries and renormalised, like the targets
    dims = torch.tensor([0, 2, 5])
    small = DistillLoss(w, bank).to("cpu", dims)
    torch.testing.assert_close(small.bank.norm(dim=-1), torch.ones(K))
    assert small.bank.shape == (K, 3) and small.active_terms == ("cosine", "text_kl", "relational")


def test_recipes_resolve_with_overrides_and_refuse_bad_values() -> None:
    assert resolve_recipe("paper").is_paper and not resolve_recipe("plus").is_paper
    assert not resolve_recipe("plus").needs_text_bank and resolve_recipe("plus", kl_weight=1).needs_text_bank
    w = resolve_recipe("plus", kl_temperature=0.05, rel_weight=None)
    assert (w.kl_temperature, w.rel_weight) == (0.05, RECIPES["plus"].rel_weight)
    with pytest.raises(ValueError, match="unknown recipe"):
        resolve_recipe("fancy")
    with pytest.raises(ValueError, match="kl-temperature"):
        resolve_recipe("plus", kl_temperature=0.0)
    with pytest.raises(ValueError, match="nothing to train"):
        resolve_recipe("paper", cos_weight=0.0)
    with pytest.raises(ValueError, match="rel-weight"):
        resolve_recipe("paper", rel_weight=float("nan"))


# ------------------------------------------------------------------------------------------------ text bank


def test_default_vocabulary_and_exclusion(tmp_path: Path) -> None:
    vocab = default_vocabulary()
    assert len(vocab) == 384 and len(set(vocab)) == 384
    assert (vocab[0], vocab[-1]) == ("speech", "reverberation in a hall") and "music" in vocab
    kept, dropped = apply_exclusion(vocab, exclusion_names(["us8k"]))
    assert "a car horn honking" in dropped and "a police siren" in dropped and "street music" in dropped
    assert "dog barking" in kept and "a truck horn" in kept  # whole-word phrases only ("dog bark", "car horn")
    assert apply_exclusion(["a dog_bark at night", "dogbark"], ["dog bark"]) == (["dogbark"], ["a dog_bark at night"])
    assert exclusion_names(["siren, rain", "esc10"])[:2] == ["siren", "rain"]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(CacheError, match="not a UTF-8 text file"):
        read_label_file(bad)
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    with pytest.raises(CacheError, match="no labels"):
        read_label_file(tmp_path / "empty.txt")


@pytest.fixture(scope="module")
def clotho_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 3-clip Clotho layout (two with captions that name 'siren') cached by the tiny teacher."""
    root = tmp_path_factory.mktemp("textbank")
    clotho = root / "clotho"
    (clotho / "development").mkdir(parents=True)
    for i in range(3):
        write_wav(clotho / "development" / f"clip{i}.wav", distinct_sound(i, 1.0))
    write_csv(clotho / "clotho_captions_development.csv", ["file_name"] + [f"caption_{i}" for i in range(1, 6)], [
        ["clip0.wav", "a siren wails far away", "a dog barks twice", "", "", ""],
        ["clip1.wav", "rain falls on a tin roof", "", "", "", ""],
        ["clip9.wav", "not in the cache", "", "", "", ""],
    ])  # fmt: skip
    with warnings.catch_warnings():  # clip9.wav is listed but absent on purpose: its caption must not be used
        warnings.simplefilter("ignore")
        build_cache(tiny_teacher().eval(), [f"clotho:{clotho}"], root / "cache", workers=0, progress=False)
    return root / "cache", root


def test_text_bank_is_the_teachers_text_embedding_with_captions(clotho_cache) -> None:
    from tinyclap.models.teacher import bundled_tokenizer_dir

    cache, _ = clotho_cache
    with pytest.raises(CacheError, match="--add-text-bank"):
        read_text_bank(cache)  # a cache built without one says how to add it
    teacher = tiny_teacher(tokenizer=bundled_tokenizer_dir()).eval()
    info = add_text_bank(cache, teacher, "default", exclude=["siren"])
    bank, read_info = read_text_bank(cache)
    assert read_info == json.loads((cache / "text_bank.json").read_text())
    texts = read_info["texts"]
    assert texts[0] == "this is the sound of speech" and "a dog barks twice" in texts
    assert "rain falls on a tin roof" in texts and "not in the cache" not in texts  # captions of cached audio only
    assert "a siren wails far away" in info["excluded"] and not any("siren" in t.lower() for t in texts)
    assert info["captions"] == 2 and bank.shape == (len(texts), 64) and bank.dtype == np.float32
    with torch.no_grad():
        expected = teacher.encode_text(texts[:5] + texts[-2:], normalize=True).numpy()
    np.testing.assert_allclose(np.concatenate([bank[:5], bank[-2:]]), expected, atol=1e-5)


def test_text_bank_refuses_another_teacher_and_a_damaged_bank(clotho_cache) -> None:
    from tinyclap.models.teacher import bundled_tokenizer_dir

    cache, _ = clotho_cache
    with pytest.raises(CacheError, match="not the teacher this cache was built with"):
        add_text_bank(cache, tiny_teacher(seed=1, tokenizer=bundled_tokenizer_dir()))
    with pytest.raises(CacheError, match="no tokenizer"):
        add_text_bank(cache, tiny_teacher())
    add_text_bank(cache, tiny_teacher(tokenizer=bundled_tokenizer_dir()), max_captions=0)
    npy = cache / "text_bank.npy"
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0xFF
    npy.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="does not match"):
        read_text_bank(cache)
