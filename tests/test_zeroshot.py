"""Zero-shot classifier: normalised class matrix, prompt ensembling, save/load without torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinyclap.zeroshot import DEFAULT_TEMPLATE, ZeroShotClassifier, class_prompt


class FakeTextTower:
    """encode_text maps each prompt to a fixed random unit vector, remembering what it was asked."""

    logit_scale = torch.tensor(np.log(1 / 0.07))

    def __init__(self, dim: int = 16) -> None:
        self.dim, self.seen = dim, []

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        self.seen += texts
        out = []
        for t in texts:
            g = torch.Generator().manual_seed(abs(hash(t)) % 2**31)
            out.append(torch.nn.functional.normalize(torch.randn(self.dim, generator=g), dim=0))
        return torch.stack(out)


def test_prompt_replaces_underscores() -> None:
    assert class_prompt("dog_bark") == "this is the sound of dog bark"
    assert class_prompt("car_horn", "a {} sound") == "a car horn sound"
    assert DEFAULT_TEMPLATE == "this is the sound of {}"


def test_from_teacher_normalised_and_ensembled() -> None:
    tower = FakeTextTower()
    clf = ZeroShotClassifier.from_teacher(tower, ["dog_bark", "siren"], ["this is the sound of {}", "a {}"])
    assert tower.seen == ["this is the sound of dog bark", "this is the sound of siren", "a dog bark", "a siren"]
    np.testing.assert_allclose(np.linalg.norm(clf.weights, axis=1), 1.0, atol=1e-6)
    single = [tower.encode_text([p])[0].numpy() for p in ("this is the sound of dog bark", "a dog bark")]
    expect = sum(single) / np.linalg.norm(sum(single))
    np.testing.assert_allclose(clf.weights[0], expect, atol=1e-6)
    assert clf.logit_scale == pytest.approx(np.log(1 / 0.07))


def test_logits_numpy_and_torch_agree() -> None:
    rng = np.random.default_rng(0)
    clf = ZeroShotClassifier(["a", "b", "c"], rng.normal(size=(3, 8)), logit_scale=2.0)
    audio = rng.normal(size=(5, 8)).astype(np.float32)
    z_np = clf.logits(audio)
    z_t = clf.logits(torch.from_numpy(audio)).numpy()
    np.testing.assert_allclose(z_np, z_t, atol=1e-5)
    a = audio / np.linalg.norm(audio, axis=1, keepdims=True)
    np.testing.assert_allclose(z_np, np.exp(2.0) * a @ clf.weights.T, atol=1e-5)
    p = clf.predict_proba(audio)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    ranked = clf.rank(audio, top=2)
    assert len(ranked) == 5 and all(len(r) == 2 for r in ranked)
    assert ranked[0][0][0] == clf.labels[int(np.argmax(z_np[0]))]


def test_select_slices_and_renormalises() -> None:
    rng = np.random.default_rng(1)
    clf = ZeroShotClassifier(["a", "b"], rng.normal(size=(2, 10)), logit_scale=0.0)
    sub = clf.select([0, 3, 7])
    assert sub.embed_dim == 3
    expect = clf.weights[:, [0, 3, 7]]
    np.testing.assert_allclose(sub.weights, expect / np.linalg.norm(expect, axis=1, keepdims=True), atol=1e-6)


def test_save_load_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(2)
    clf = ZeroShotClassifier(["dog", "rain", "siren"], rng.normal(size=(3, 6)), 3.0, ["a {}", "b {}"])
    path = clf.save(tmp_path / "classes")
    assert path.name == "classes.npz"
    back = ZeroShotClassifier.load(path)
    assert back.labels == clf.labels and back.templates == clf.templates and back.logit_scale == 3.0
    np.testing.assert_array_equal(back.weights, clf.weights)
    # plain arrays only: loadable without pickle
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == {"weights", "labels", "meta"}


def test_bad_inputs(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not match"):
        ZeroShotClassifier(["a"], np.ones((2, 3)), 0.0)
    with pytest.raises(ValueError, match="unique"):
        ZeroShotClassifier(["a", "a"], np.ones((2, 3)), 0.0)
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="x.npz"):
        ZeroShotClassifier.load(bad)


def _with_affinity(seed: int = 3) -> ZeroShotClassifier:
    from tinyclap.zeroshot import ExampleAffinity

    rng = np.random.default_rng(seed)
    keys = rng.normal(size=(5, 8))
    aff = ExampleAffinity(keys, np.array([0, 0, 2, 1, 2]), np.array([0.5, 0.25, 1.0, 0.0, 0.3]), 6.0)
    return ZeroShotClassifier(["a", "b", "c"], rng.normal(size=(3, 8)), 1.5, ["{}"], aff)


def test_example_affinities_score_as_defined() -> None:
    """scores = cos(x, class) + sum over the class's examples of weight * exp(-sharpness * (1 - cos(x, key)));
    numpy and torch agree; select and subset carry the examples along."""
    clf = _with_affinity()
    rng = np.random.default_rng(4)
    audio = rng.normal(size=(4, 8)).astype(np.float32)
    a = audio / np.linalg.norm(audio, axis=1, keepdims=True)
    aff = clf.affinity
    k = aff.keys
    expect = a @ clf.weights.T
    for i, c in enumerate(aff.classes):
        expect[:, c] += aff.weights[i] * np.exp(-6.0 * (1 - a @ k[i]))
    np.testing.assert_allclose(clf.scores(audio), expect, atol=1e-5)
    np.testing.assert_allclose(clf.logits(torch.from_numpy(audio)).numpy(), np.exp(1.5) * expect, atol=1e-4)
    sub = clf.select([0, 2, 5])
    kk = k[:, [0, 2, 5]] / np.linalg.norm(k[:, [0, 2, 5]], axis=1, keepdims=True)
    np.testing.assert_allclose(sub.affinity.keys, kk, atol=1e-6)
    two = clf.subset([2, 0], ["c", "a"])  # class 1's example is dropped, the others renumbered
    assert two.affinity.classes.tolist() == [1, 1, 0, 0] and two.labels == ["c", "a"]
    np.testing.assert_allclose(two.scores(audio), expect[:, [2, 0]], atol=1e-5)


def test_example_affinities_round_trip_and_hostile_files(tmp_path) -> None:
    import zipfile

    clf = _with_affinity()
    path = clf.save(tmp_path / "adapted.npz")
    back = ZeroShotClassifier.load(path)
    np.testing.assert_array_equal(back.affinity.keys, clf.affinity.keys)
    assert back.affinity.classes.tolist() == clf.affinity.classes.tolist() and back.affinity.sharpness == 6.0
    np.testing.assert_array_equal(back.scores(np.eye(8)[:2]), clf.scores(np.eye(8)[:2]))
    # a class index out of range, a missing member, a NaN sharpness: one ValueError naming the file
    for name, change in (("classes", lambda z: {**z, "affinity_classes": np.array([0, 0, 2, 1, 7])}),
                         ("member", lambda z: {k: v for k, v in z.items() if k != "affinity_weights"}),
                         ("sharpness", lambda z: {**z, "meta": np.asarray(str(z["meta"]).replace("6.0", "NaN"))})):
        with np.load(path) as z:
            arrays = change(dict(z))
        bad = tmp_path / f"bad-{name}.npz"
        np.savez(bad, **arrays)
        with pytest.raises(ValueError, match=f"bad-{name}.npz"):
            ZeroShotClassifier.load(bad)
    assert zipfile.is_zipfile(path)
