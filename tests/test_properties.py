"""Property-based tests (hypothesis): clip fitting and evaluation windows, resampled lengths, student-name
parsing, and the CSV readers under arbitrary CSV dialects and arbitrary bytes.

They complement, not repeat, the example-based and property tests of tests/test_audio.py (output lengths,
contiguity of random crops, window counts) and tests/test_datasets.py (plain CSV/manifest round trips):
here the exact content of crops and windows, coverage, determinism, lengths after real file decoding at
random rates, and CSV quoting/BOM/CRLF/column order/blank lines, plus fuzzing for "only our error types".
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyclap.audio import AudioError, audio_info, eval_windows, fit_clip, load_audio, stream_windows
from tinyclap.data import AUDIO_EXTENSIONS, DatasetError, load_csv_dataset, manifest_files
from tinyclap.evaluation.embedding import clip_windows, embed_clip
from tinyclap.models.students import PHINET_FORM, StudentSpec, parse_student_name

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextmanager
def tmpdir() -> Iterator[Path]:
    # hypothesis runs many examples per test: a fresh folder each (tmp_path is one per test)
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


# --- clip fitting and evaluation windows ----------------------------------------------------------------


@FAST
@given(n=st.integers(1, 4000), length=st.integers(1, 900), seed=st.integers(0, 2**32 - 1))
def test_fit_clip_content(n: int, length: int, seed: int) -> None:
    """Eval = the exact centre crop; train = a crop inside the clip; short clips keep every sample."""
    wave = np.arange(1, n + 1, dtype=np.float32)  # sample value = 1 + index
    ev = fit_clip(wave, length, policy="eval")
    tr = fit_clip(wave, length, policy="train", rng=np.random.default_rng(seed))
    if n >= length:
        start = (n - length) // 2
        np.testing.assert_array_equal(ev, wave[start : start + length])
        s = int(tr[0]) - 1
        assert 0 <= s <= n - length
        np.testing.assert_array_equal(tr, wave[s : s + length])
    else:
        for out in (ev, tr):  # both policies pad the same way
            np.testing.assert_array_equal(out[:n], wave)
            assert not out[n:].any()
        rep = fit_clip(wave, length, pad="repeat")
        np.testing.assert_array_equal(rep, wave[np.arange(length) % n])


@FAST
@given(n=st.integers(1, 4000), length=st.integers(1, 900), seed=st.integers(0, 2**32 - 1))
def test_eval_is_deterministic(n: int, length: int, seed: int) -> None:
    """Evaluation outputs never depend on a generator: not on `rng=`, not on numpy's global state."""
    wave = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    ref = fit_clip(wave, length)
    np.random.seed(seed % 2**32)
    np.testing.assert_array_equal(fit_clip(wave, length, "eval", np.random.default_rng(seed + 1)), ref)
    np.testing.assert_array_equal(eval_windows(wave, length), eval_windows(wave.copy(), length))
    # a train crop is reproducible from its seed
    a = fit_clip(wave, length, "train", np.random.default_rng(seed))
    np.testing.assert_array_equal(a, fit_clip(wave, length, "train", np.random.default_rng(seed)))


@FAST
@given(n=st.integers(1, 5000), length=st.integers(2, 700))
def test_eval_windows_are_slices_covering_the_clip(n: int, length: int) -> None:
    wave = np.arange(1, n + 1, dtype=np.float32)
    w = eval_windows(wave, length)
    if n <= length:
        np.testing.assert_array_equal(w[0], fit_clip(wave, length))
        return
    starts = [int(row[0]) - 1 for row in w]
    for s, row in zip(starts, w):  # every window is real audio, inside the clip
        assert 0 <= s <= n - length
        np.testing.assert_array_equal(row, wave[s : s + length])
    assert starts == sorted(starts)
    covered = np.zeros(n, bool)
    for s in starts:
        covered[s : s + length] = True
    assert 2 * int((~covered).sum()) < length  # less than half a window of the clip is left out
    # back to back, except that the last one may overlap its neighbour (when aligned to the clip's end)
    gaps = np.diff(starts)
    assert (gaps[:-1] == length).all() and (len(gaps) == 0 or 0 < gaps[-1] <= length)


@FAST
@given(
    n=st.integers(1, 3000), rate=st.sampled_from([100, 160, 441]), seconds=st.sampled_from([1.0, 2.5, 5.0])
)
def test_clip_windows_modes(n: int, rate: int, seconds: float) -> None:
    wave = np.arange(1, n + 1, dtype=np.float32)
    length = int(round(seconds * rate))
    np.testing.assert_array_equal(clip_windows(wave, rate, seconds, "windows"), eval_windows(wave, length))
    np.testing.assert_array_equal(clip_windows(wave, rate, seconds, "centre"), fit_clip(wave, length)[None])


class _FeatureModel:
    """A tiny deterministic stand-in for an audio model: a fixed random projection of the waveform."""

    sample_rate = 100
    embed_dim = 8

    def __init__(self) -> None:
        self.proj = torch.from_numpy(np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32))

    def embed_waveform(self, wave: torch.Tensor) -> torch.Tensor:  # (B, 500) -> (B, 8)
        return torch.nn.functional.normalize(wave @ self.proj, dim=-1)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3000), seed=st.integers(0, 2**16), mode=st.sampled_from(["windows", "centre"]))
def test_embed_clip_is_deterministic(n: int, seed: int, mode: str) -> None:
    wave = np.random.default_rng(seed).standard_normal(n).astype(np.float32) + 0.1
    model = _FeatureModel()
    torch.manual_seed(seed)
    a = embed_clip(model, wave, mode=mode)  # type: ignore[arg-type]
    torch.manual_seed(seed + 1)
    np.random.seed(seed)
    b = embed_clip(model, wave, mode=mode)  # type: ignore[arg-type]
    assert torch.equal(a, b) and a.shape == (8,)
    assert abs(float(a.norm()) - 1) < 1e-5


# --- resampling lengths ---------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.integers(1000, 192000),
    n=st.integers(1, 3000),
    target=st.sampled_from([44100, 16000, 22050, 48000, 32000]),
    channels=st.integers(1, 3),
    subtype=st.sampled_from(["PCM_16", "FLOAT"]),
)
def test_resampled_length(rate: int, n: int, target: int, channels: int, subtype: str) -> None:
    """Decoding a file at any rate gives round(n * target / rate) samples, to within half a sample; a file
    too short for even one output sample is an AudioError, never an empty array."""
    data = (0.1 * np.random.default_rng(n).standard_normal((n, channels))).astype(np.float32)
    expected = n * target / rate
    with tmpdir() as d:
        path = d / "x.wav"
        sf.write(path, data, rate, subtype=subtype)
        info = audio_info(path)
        assert (info.frames, info.sample_rate, info.channels) == (n, rate, channels)
        try:
            wave = load_audio(path, sample_rate=target)
        except AudioError as e:
            assert "too short" in e.problem and expected < 1
            return
        assert wave.dtype == np.float32 and wave.ndim == 1 and wave.shape[0] >= 1
        if rate == target:
            assert wave.shape[0] == n
        assert abs(wave.shape[0] - expected) <= 0.5 + 1e-9
        assert np.isfinite(wave).all()
        # the streaming reader produces the same amount of audio (to within a sample)
        win = max(1, wave.shape[0] // 3) / target
        windows = list(stream_windows(path, window=win, hop=win, sample_rate=target, block_seconds=0.01))
        win_n = int(round(win * target))
        assert abs(len(windows) - math.ceil(wave.shape[0] / win_n)) <= 1


# --- student names --------------------------------------------------------------------------------------

_hundredths = st.integers(1, 1000).map(lambda k: k / 100)
_specs = st.builds(
    StudentSpec, alpha=_hundredths, beta=_hundredths, t0=st.integers(1, 40), N=st.integers(3, 40)
)


@settings(max_examples=100, deadline=None)
@given(spec=_specs)
def test_student_name_round_trip(spec: StudentSpec) -> None:
    name = spec.name
    assert name == PHINET_FORM.format(alpha=spec.alpha, beta=spec.beta, t0=spec.t0, N=spec.N)
    parsed = parse_student_name(name)
    assert parsed == spec and parsed.name == name


def _parse_or_value_error(obj: object) -> None:
    try:
        spec = parse_student_name(obj)  # type: ignore[arg-type]
    except ValueError as e:
        assert "invalid student name" in str(e)
        return
    assert isinstance(obj, str) and spec.name == obj  # only canonical names are accepted


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_random_strings_only_raise_value_error(text: str) -> None:
    _parse_or_value_error(text)


@settings(max_examples=200, deadline=None)
@given(spec=_specs, data=st.data())
def test_mutated_names_only_raise_value_error(spec: StudentSpec, data: st.DataObject) -> None:
    """Near misses of valid names: one character inserted, deleted or replaced."""
    name = spec.name
    i = data.draw(st.integers(0, len(name)))
    ch = data.draw(st.characters(codec="utf-8"))
    op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
    mutated = {
        "insert": name[:i] + ch + name[i:],
        "delete": name[:i] + name[i + 1 :],
        "replace": name[:i] + ch + name[i + 1 :],
    }[op]
    _parse_or_value_error(mutated)


@settings(max_examples=50, deadline=None)
@given(
    obj=st.one_of(
        st.none(), st.integers(), st.floats(), st.binary(max_size=20), st.lists(st.text(max_size=5))
    )
)
def test_non_strings_raise_value_error(obj: object) -> None:
    with pytest.raises(ValueError, match="not a string"):
        parse_student_name(obj)  # type: ignore[arg-type]


# --- CSV readers: dialects the plain round trips do not exercise ----------------------------------------

_label = (
    # no control characters (NUL is not CSV); newlines inside quoted fields are in the extra column
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)
    .map(str.strip)
    .filter(bool)
)
_stem = st.text(alphabet="abcXYZ019 _-,'\"é()", min_size=1, max_size=10).map(str.strip).filter(bool)
# extra-column values with quotes, commas and line breaks (no lone CR: csv.writer with lineterminator="\n"
# does not quote it, and the file it writes is then malformed: a writer quirk, not a reader bug)
_junk = st.lists(st.sampled_from(["a", ",", '"', "'", " ", "\n", "\r\n", "\t", ";"]), max_size=6).map("".join)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(_stem, st.sampled_from(AUDIO_EXTENSIONS), _label, st.none() | st.integers(0, 99), _junk),
        min_size=1,
        max_size=8,
        unique_by=lambda r: r[0],
    ),
    order=st.permutations(["path", "label", "fold", "note"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    eol=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
    pad=st.booleans(),
    blank_every=st.integers(0, 3),
    absolute=st.booleans(),
)
def test_csv_dataset_dialects(rows, order, quoting, eol, bom, pad, blank_every, absolute) -> None:  # noqa: ANN001
    """Quoting styles, CRLF, a BOM, padded fields, any column order, extra columns holding quotes and
    newlines, blank lines, absolute paths: all read back to the same items."""
    with tmpdir() as base:
        (base / "clips").mkdir()
        rels = [f"clips/{stem}{ext}" for stem, ext, *_ in rows]
        for r in rels:
            (base / r).write_bytes(b"")
        buf = io.StringIO()
        writer = csv.writer(buf, quoting=quoting, lineterminator=eol)
        writer.writerow(order)
        for k, (rel, (_, _, label, fold, junk)) in enumerate(zip(rels, rows)):
            path = str(base / rel) if absolute else f"../{rel}"  # relative to the CSV's folder
            fields = {
                "path": path,
                "label": f"  {label} " if pad else label,
                "fold": "" if fold is None else fold,
                "note": junk,
            }
            writer.writerow([fields[c] for c in order])
            if blank_every and k % blank_every == 0:
                buf.write(eol)
        csv_path = base / "meta" / "labels.csv"
        csv_path.parent.mkdir()
        csv_path.write_bytes(("\ufeff" if bom else "").encode() + buf.getvalue().encode("utf-8"))

        ds = load_csv_dataset(csv_path)
        labels = [label for _, _, label, _, _ in rows]
        assert ds.classes == sorted(set(labels))
        assert [(it.path, ds.classes[it.label], it.fold) for it in ds.items] == [
            (base / rel, label, fold) for rel, (_, _, label, fold, _) in zip(rels, rows)
        ]
        # a given class order is kept, and indices follow it
        given_order = sorted(set(labels), reverse=True)
        ds2 = load_csv_dataset(csv_path, classes=given_order)
        assert [given_order[it.label] for it in ds2.items] == labels
        # the same CSV as a distillation manifest: its `path` column, sorted and de-duplicated
        manifest = base / "meta" / "m.csv"
        manifest.write_bytes(csv_path.read_bytes())
        assert manifest_files(manifest) == sorted(base / r for r in rels)


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing-file warnings are expected for random content
        yield


_content = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.lists(
        st.sampled_from(["path", "label", "fold", ",", '"', "\n", "\r\n", "a.wav", "1", "x", "\x00", " "])
    )
    .map("".join)
    .map(str.encode),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=_content, header=st.booleans(), suffix=st.sampled_from([".csv", ".tsv", ".txt"]))
def test_csv_readers_fail_only_with_dataset_error(content: bytes, header: bool, suffix: str) -> None:
    """Arbitrary bytes as a dataset CSV or a manifest: a result or a DatasetError, nothing else."""
    with tmpdir() as base:
        (base / "a.wav").write_bytes(b"")
        path = base / f"m{suffix}"
        path.write_bytes((b"path,label,fold\n" if header else b"") + content)
        readers = [manifest_files] + ([load_csv_dataset] if suffix == ".csv" else [])
        for read in readers:
            with _quiet():
                try:
                    read(path)
                except DatasetError as e:
                    assert str(path) in str(e)


def test_csv_overlong_path_is_reported_missing(tmp_path: Path) -> None:
    """A path longer than PATH_MAX cannot exist: its row is reported missing like any absent file, no OSError."""
    path = tmp_path / "m.csv"
    (tmp_path / "y.wav").write_bytes(b"")
    path.write_text("path,label\n" + "a/" * 3000 + "x.wav,dog\ny.wav,cat\n")
    with _quiet():
        ds = load_csv_dataset(path)
    assert [it.path.name for it in ds.items] == ["y.wav"]
    assert len(ds.missing) == 1
