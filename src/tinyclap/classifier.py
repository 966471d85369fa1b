"""`tinyclap.Classifier`: one object for classifying, embedding and timelining audio, with any model.

    clf = tinyclap.Classifier.from_model("runs/student", ["dog_bark", "siren"])   # PyTorch (any load_model spec)
    clf = tinyclap.Classifier.from_export("runs/export", int8=True)                # ONNX Runtime, no torch
    clf.classify_files(["a.wav", "b.mp3"], top=3)     # [FileResult(path, ranked=[(label, p), ...], error)]
    clf.classify_arrays([wave], sample_rate=16000)    # [[(label, p), ...]]
    clf.embed_files(paths)                            # BatchResult: normalised (n, D) embeddings, failures
    clf.timeline("long.wav", window=5, hop=1)         # Timeline: rows of class scores, .segments(...)

`tinyclap classify` is a thin layer over this class (one code path for the CLI, the Python API and
`tinyclap serve`). A file is one clip: the renormalised mean of the embeddings of its 5 s windows
(`tinyclap.audio.eval_windows`, as `tinyclap eval` does); a file that cannot be read is reported in its
result, never fatal for the batch. Timelines run the log-mel front end once per recording when the model
allows it (a student, MS CLAP's teacher, or an export through its `student.onnx`), see `tinyclap.timeline`.
With a pool window (`pool_window=`, students and exports made with one) each 5 s clip is embedded from its
shorter windows: backbone per window, features averaged, head once (`tinyclap.models.embedder`).

This module imports torch only for PyTorch models: `from_export` works where torch is not installed.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinyclap._util import display_path, l2_normalize, mean_embedding
from tinyclap.audio import (
    RESAMPLE_QUALITY,
    AudioError,
    audio_info,
    eval_windows,
    fit_clip,
    iter_eval_windows,
    load_audio,
    stream_audio,
)
from tinyclap.audio.io import MAX_TIMELINE_WINDOW_S, UNKNOWN_FRAMES, WHOLE_DECODE_SECONDS
from tinyclap.timeline import Timeline, TimelineRow, array_chunks, collect_rows, iter_windows
from tinyclap.zeroshot import TextSide, ZeroShotClassifier, export_text_side

__all__ = ["BatchResult", "Classifier", "FileResult", "export_pool_window", "format_failed", "format_ranked",
           "ranked_json"]

CLIP_SECONDS = 5.0
MAX_TIMELINE_WINDOWS = 100_000  # a day of audio at a 1 s hop is 86,400
TIMELINE_BATCH_BYTES = 64 << 20  # waveform windows held for one model call (a 10-minute window: one at a time)


@dataclass
class FileResult:
    """One file's ranked (label, probability) list, or why it could not be read."""

    path: str
    ranked: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class BatchResult:
    """Normalised embeddings of the files that worked (`embeddings[j]` is `paths[j]`, input index `kept[j]`)
    and (path, reason) for those that did not."""

    paths: list[str] = field(default_factory=list)
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    failed: list[tuple[str, str]] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)


def ranked_json(results: Sequence[FileResult]) -> dict[str, Any]:
    """Ranked results as `tinyclap classify --json` and `python -m tinyclap.runtime --json` print them (the
    `tinyclap.classify` document, `tinyclap.schemas.ranked_document`)."""
    from tinyclap.schemas import ranked_document

    return ranked_document(results)


def format_ranked(results: Sequence[FileResult]) -> Iterator[str]:
    """The text view of ranked results: each readable file's name (control characters escaped, so a name
    cannot forge lines), then one `  score  label` line per label."""
    for r in results:
        if r.ok:
            yield display_path(r.path)
            yield from (f"  {s:7.4f}  {lb}" for lb, s in r.ranked)


def format_failed(failed: Sequence[tuple[str, str]], total: int) -> Iterator[str]:
    """The stderr lines for files that could not be read: one `skipped FILE: why` each, then a count."""
    for path, why in failed:
        yield f"skipped {display_path(path)}: {why}"
    if failed:
        yield f"{len(failed)} of {total} files could not be read"


# ------------------------------------------------------------------------------------------------ engines


class _TorchFrames:
    """`tinyclap.audio.frontend.LogMel` behind the numpy interface `tinyclap.timeline.iter_windows` uses."""

    def __init__(self, logmel: Any, device: Any) -> None:
        self.logmel, self.device = logmel, device
        self.hop_length, self.n_fft = int(logmel.hop_length), int(logmel.n_fft)

    def frames(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.logmel.frames(torch.from_numpy(np.ascontiguousarray(x))[None].to(self.device))[0].cpu().numpy()

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.logmel(torch.from_numpy(np.ascontiguousarray(wave))[None].to(self.device))[0].cpu().numpy()


class _TorchEngine:
    """A PyTorch model (`tinyclap.models.load_model`): waveforms, and log-mels when it has a CLAP front end."""

    def __init__(self, model: Any, device: Any = None) -> None:
        import torch

        from tinyclap.audio.frontend import LogMel

        self.model = model
        if isinstance(model, torch.nn.Module):
            model.eval()
            p = next(model.parameters(), None)
            self.device = torch.device(device) if device is not None else (p.device if p is not None else "cpu")
            model.to(self.device)
        else:
            self.device = torch.device("cpu")
        self.sample_rate, self.embed_dim = int(model.sample_rate), int(model.embed_dim)
        self.clip_samples = int(getattr(model, "clip_samples", round(CLIP_SECONDS * self.sample_rate)))
        fe = getattr(model, "frontend", None)
        self.pool_window = getattr(model, "pool_window", None)
        # pooled windows run the front end on each window's own samples, as the device does: no slicing
        sliceable = isinstance(fe, LogMel) and hasattr(model, "encode_audio") and self.pool_window is None
        self.frontend = _TorchFrames(fe, self.device) if sliceable else None

    def embed_waves(self, waves: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)).to(self.device)
            return self.model.embed_waveform(x).float().cpu().numpy()

    def embed_logmels(self, logmels: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(logmels, dtype=np.float32)).to(self.device)
            return self.model.encode_audio(x, normalize=True).float().cpu().numpy()


class _ExportEngine:
    """An export folder on ONNX Runtime (`tinyclap.deploy.runtime.Runtime`); `student.onnx` (log-mel in, loaded
    on first use, hash-checked like every exported file) with `NumpyLogMel` for timelines."""

    def __init__(self, runtime: Any, int8: bool, threads: int | None) -> None:
        from tinyclap.audio.mel import NumpyLogMel

        self.rt, self.int8, self.threads = runtime, int8, threads
        self.sample_rate, self.embed_dim = runtime.sample_rate, runtime.embed_dim
        self.clip_samples = runtime.clip_samples
        self._student: Any = None
        self.student_batch = 1
        # an export made with a pool window pools inside model.onnx; student.onnx is one window's graph
        self.pool_window = runtime.manifest.get("pool_window")
        try:
            self.frontend: Any = NumpyLogMel(runtime.manifest.get("frontend") or {})
        except (TypeError, ValueError):
            self.frontend = None  # an odd manifest: timelines fall back to whole windows through model.onnx
        if self.frontend is not None and (self.frontend.sample_rate != self.sample_rate or self.pool_window):
            self.frontend = None

    def embed_waves(self, waves: np.ndarray) -> np.ndarray:
        return self.rt.embed(waves)

    def embed_logmels(self, logmels: np.ndarray) -> np.ndarray:
        from tinyclap.deploy.runtime import (
            STUDENT_FILE,
            STUDENT_INT8_FILE,
            ExportError,
            ort_session,
            read_verified,
        )

        if self._student is None:
            name = STUDENT_INT8_FILE if self.int8 else STUDENT_FILE
            data = read_verified(self.rt.export_dir, name, self.rt.manifest)
            try:
                self._student = ort_session(data, self.threads)
            except Exception as e:  # onnxruntime's own exception types
                raise ExportError(f"{self.rt.export_dir / name}: ONNX Runtime cannot load it ({e})") from e
        sess, name = self._student, self._student.get_inputs()[0].name
        x = np.ascontiguousarray(logmels, dtype=np.float32)
        # one window per run: on one CPU thread the student is ~25 % faster per window at batch 1 than at 16
        # (its activations stay in cache; `python bench/timeline_speed.py`)
        out = [sess.run(None, {name: x[i : i + self.student_batch]})[0] for i in range(0, len(x), self.student_batch)]
        return l2_normalize(np.concatenate(out).astype(np.float32))


# ------------------------------------------------------------------------------------------------ the class


class Classifier:
    """A model (PyTorch or an export) + a class matrix; see the module docstring. Build it with `from_model`
    or `from_export`."""

    def __init__(self, engine: Any, classes: ZeroShotClassifier | None = None, *, text: Any = None,
                 model_info: dict[str, Any] | None = None, batch_size: int = 16, workers: int | None = None
                 ) -> None:
        self.engine = engine
        self.sample_rate: int = int(engine.sample_rate)
        self.clip_seconds: float = engine.clip_samples / self.sample_rate
        self.embed_dim: int = int(engine.embed_dim)
        self.model_info: dict[str, Any] = dict(model_info or {})
        self.batch_size = int(batch_size)
        self.pool_window: float | None = engine.pool_window
        self.model_info["pool_window"] = self.pool_window
        self.workers = workers if workers is not None else min(2, os.cpu_count() or 1)
        self._text = text  # (resolve() -> text model, templates) or None
        self.classes: ZeroShotClassifier | None = None
        if classes is not None:
            self.set_classes(classes)

    # -- construction --
    @classmethod
    def from_model(cls, model: Any, classes: Any = None, *, teacher: Any = None, tokenizer: Any = None,
                   templates: Sequence[str] | None = None, device: Any = None, pool_window: float | None = None,
                   **kw: Any) -> Classifier:
        """`model`: a `tinyclap.models.load_model` spec (student name, run folder, checkpoint, MS CLAP .pth,
        export folder) or a loaded model; `classes`: a class-matrix .npz, a list of labels (encoded with the
        text side: `teacher`, else the model's own text tower, else the teacher recorded in its run), a
        `ZeroShotClassifier`, or None (labels later with `set_labels`; an export's own classes.npz).
        `pool_window` (seconds, students only): clips embedded from pooled windows (`tinyclap.models.embedder`)."""
        from tinyclap.models import load_model
        from tinyclap.models.embedder import with_pool_window
        from tinyclap.models.exported import ExportedModel

        spec = model if isinstance(model, (str, os.PathLike)) else None
        loaded = load_model(spec, tokenizer_dir=tokenizer) if spec is not None else model
        with_pool_window(loaded, pool_window)
        info = {"spec": os.fspath(spec) if spec is not None else None, "kind": getattr(loaded, "kind", None),
                "name": getattr(loaded, "name", type(loaded).__name__)}
        if isinstance(loaded, ExportedModel):
            int8 = loaded.runtime.model_file.endswith("int8.onnx")
            clf = cls(_ExportEngine(loaded.runtime, int8, None), loaded.classifier,
                      model_info={**info, "export": True}, **kw)
        else:
            clf = cls(_TorchEngine(loaded, device), model_info=info, **kw)
        clf._text = TextSide(loaded, spec, teacher, tokenizer, templates)
        if isinstance(loaded, ExportedModel) and teacher is None:
            clf._text = export_text_side(loaded.runtime, int8, None, templates)
        if isinstance(classes, (list, tuple)):
            clf.set_labels(list(classes))
        elif classes is not None:
            clf.set_classes(classes)
        return clf

    @classmethod
    def from_export(cls, export_dir: str | os.PathLike, *, int8: bool = False, classes: Any = None,
                    threads: int | None = None, pool_window: float | None = None,
                    templates: Sequence[str] | None = None, **kw: Any) -> Classifier:
        """An export folder through ONNX Runtime (no torch); `classes` (a .npz, a `ZeroShotClassifier` or a
        list of labels) replaces the export's own classes.npz. Labels need an export with a text tower
        (`tinyclap export --text`), run by ONNX Runtime + tokenizers and loaded on first use; `templates`
        default to those of the export's classes. An export made with a pool window uses it (the graph
        pools); `pool_window`, when given, must be that window."""
        from tinyclap.deploy.mcu.runtime import TflmEngine, is_tflm_export
        from tinyclap.deploy.runtime import Runtime
        from tinyclap.deploy.text import has_text

        if is_tflm_export(export_dir):  # a microcontroller export: TFLM's kernels (tinyclap.deploy.mcu.runtime)
            if isinstance(classes, (list, tuple)):
                raise ValueError(f"{os.fspath(export_dir)}: a TFLM export has no text tower: give a class matrix")
            eng = TflmEngine(export_dir)
            export_pool_window({"pool_window": eng.pool_window}, pool_window, export_dir)
            return cls(eng, classes if classes is not None else eng.classifier,
                       model_info={"export_dir": os.fspath(export_dir), "kind": "tflm-export"}, **kw)
        rt = Runtime(export_dir, int8=int8, threads=threads, batch_size=kw.get("batch_size", 16))
        export_pool_window(rt.manifest, pool_window, export_dir)
        info = {"export_dir": os.fspath(export_dir), "kind": "export", "int8": bool(int8),
                "name": rt.manifest.get("student", {}).get("name") if isinstance(rt.manifest.get("student"), dict)
                else rt.manifest.get("student")}
        labels = list(classes) if isinstance(classes, (list, tuple)) else None
        matrix = classes if classes is not None and labels is None else rt.classifier
        clf = cls(_ExportEngine(rt, int8, threads), matrix, model_info={**info, "text": has_text(rt.manifest)}, **kw)
        clf._text = export_text_side(rt, int8, threads, templates)
        if labels:
            clf.set_labels(labels)
        return clf

    # -- classes --
    @property
    def labels(self) -> list[str]:
        return list(self.classes.labels) if self.classes is not None else []

    @property
    def can_encode_text(self) -> bool:
        """Whether `set_labels` can encode new class names (a text side was found)."""
        return self._text is not None and self._text.available()

    def set_classes(self, classes: ZeroShotClassifier | str | os.PathLike) -> None:
        """Use a class matrix (a `ZeroShotClassifier` or a .npz saved by tinyclap)."""
        clf = classes if isinstance(classes, ZeroShotClassifier) else ZeroShotClassifier.load(classes)
        if clf.embed_dim != self.embed_dim:
            where = "" if isinstance(classes, ZeroShotClassifier) else f"{os.fspath(classes)}: "
            raise ValueError(f"{where}class matrix has {clf.embed_dim} dims but the audio model gives {self.embed_dim}")
        self.classes = clf

    def set_labels(self, labels: Sequence[str], templates: Sequence[str] | None = None) -> None:
        """Encode `labels` (with `templates`, default: the classifier's) with the text side; ValueError when
        there is none (use `set_classes`)."""
        if self._text is None:
            raise ValueError("this classifier has no text side: give a class matrix (.npz) instead")
        self.set_classes(self._text.encode(list(labels), templates))

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), D) normalised text embeddings of free text (no template), for text queries."""
        if self._text is None:
            raise ValueError("this classifier has no text side")
        return self._text.embed(list(texts))

    def __call__(self, audio: Any, candidate_labels: Sequence[str] | None = None, *,
                 hypothesis_template: str | None = None, sample_rate: int | None = None, top_k: int | None = None
                 ) -> list[dict[str, Any]]:
        """Hugging Face `zero-shot-audio-classification` style: `audio` (a path, a 1-D waveform with its
        `sample_rate`, default the model's, or a `{"array"|"raw", "sampling_rate"}` dict) -> `[{"score",
        "label"}, ...]`, best first. `candidate_labels` (encoded with `hypothesis_template`, e.g. "This is a
        sound of {}.") replace the current classes; an audio list gives a list of such lists."""
        if isinstance(audio, dict):
            wave = audio.get("array", audio.get("raw"))
            return self(wave, candidate_labels, hypothesis_template=hypothesis_template,
                        sample_rate=audio.get("sampling_rate", sample_rate), top_k=top_k)
        if isinstance(audio, (list, tuple)):
            return [self(a, candidate_labels, hypothesis_template=hypothesis_template, sample_rate=sample_rate,
                         top_k=top_k) for a in audio]  # type: ignore[misc]
        if candidate_labels is not None:
            self.set_labels(list(candidate_labels), [hypothesis_template] if hypothesis_template else None)
        if isinstance(audio, (str, os.PathLike)):
            res = self.classify_files([audio], top_k)[0]
            if not res.ok:
                raise AudioError(os.fspath(audio), res.error or "unreadable")
            ranked = res.ranked
        else:
            ranked = self.classify_arrays([np.asarray(audio)], sample_rate or self.sample_rate, top_k)[0]
        return [{"score": float(p), "label": lb} for lb, p in ranked]

    def _need_classes(self) -> ZeroShotClassifier:
        if self.classes is None:
            raise ValueError("no classes yet: give labels (set_labels) or a class matrix (set_classes)")
        return self.classes

    # -- embedding --
    def _windows(self, path: str | os.PathLike, long_clip: str) -> np.ndarray | Iterator[np.ndarray]:
        """A file's (K, clip) windows; for a file longer than WHOLE_DECODE_SECONDS, the same windows as a
        stream (`iter_eval_windows`: an hour is never decoded whole), embedded as they come."""
        centre = long_clip == "centre"
        if audio_info(path).duration > WHOLE_DECODE_SECONDS:
            return iter_eval_windows(path, self.engine.clip_samples, self.sample_rate, centre=centre)
        wave = load_audio(path, self.sample_rate)
        if centre:
            return fit_clip(wave, self.engine.clip_samples, policy="eval")[None]
        return eval_windows(wave, self.engine.clip_samples)

    def embed_files(self, paths: Sequence[str | os.PathLike], progress: bool = False, *,
                    long_clip: str = "windows") -> BatchResult:
        """Normalised (n_ok, D) embeddings (a long file: the renormalised mean of its 5 s windows, or with
        `long_clip="centre"` its centre crop); unreadable files are listed in `failed`. Decoding runs in
        `workers` threads ahead of the model; windows of several files share a batch."""
        from tinyclap._util import progress as progress_bar

        if long_clip not in ("windows", "centre"):
            raise ValueError(f"long_clip must be 'windows' or 'centre', got {long_clip!r}")

        res = BatchResult(embeddings=np.zeros((0, self.embed_dim), np.float32))
        queue: list[tuple[int, np.ndarray]] = []
        parts: dict[int, np.ndarray] = {}

        def flush() -> None:
            if queue:
                emb = self._embed_batched(np.concatenate([w for _, w in queue]))
                at = 0
                for i, w in queue:
                    parts[i] = l2_normalize(l2_normalize(emb[at : at + len(w)]).mean(0))
                    at += len(w)
                queue.clear()

        with progress_bar(total=len(paths), desc="embed", unit="file", enabled=progress) as bar:
            decode = functools.partial(self._windows, long_clip=long_clip)
            for i, (wins, problem) in enumerate(_decode_ahead(decode, paths, self.workers)):
                bar.update(1)
                if wins is not None and not isinstance(wins, np.ndarray):  # a long file's stream
                    try:
                        parts[i] = mean_embedding(wins, self.engine.embed_waves, self.batch_size)
                    except AudioError as e:
                        wins, problem = None, e.problem
                if wins is None:
                    res.failed.append((os.fsdecode(paths[i]), str(problem)))
                    continue
                res.kept.append(i)
                if i in parts:
                    continue
                queue.append((i, wins))
                if sum(len(w) for _, w in queue) >= self.batch_size:
                    flush()
            flush()
        res.paths = [os.fsdecode(paths[i]) for i in res.kept]
        if res.kept:
            res.embeddings = np.stack([parts[i] for i in res.kept]).astype(np.float32)
        return res

    def _embed_batched(self, waves: np.ndarray) -> np.ndarray:
        bs = self.batch_size
        return np.concatenate([self.engine.embed_waves(waves[i : i + bs]) for i in range(0, len(waves), bs)])

    def embed_arrays(self, waves: Sequence[np.ndarray] | np.ndarray, sample_rate: int) -> np.ndarray:
        """(n, D) normalised embeddings of 1-D waveforms at `sample_rate` (resampled with soxr when needed)."""
        out = []
        for w in _as_waves(waves):
            w = self._resample(w, sample_rate)
            emb = self._embed_batched(eval_windows(w, self.engine.clip_samples))
            out.append(l2_normalize(l2_normalize(emb).mean(0)))
        return np.stack(out).astype(np.float32) if out else np.zeros((0, self.embed_dim), np.float32)

    def _resample(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        import soxr

        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        if not np.isfinite(wave).all():
            raise ValueError("waveform has non-finite (NaN/inf) samples")
        if sample_rate == self.sample_rate:
            return wave
        out = soxr.resample(wave, int(sample_rate), self.sample_rate, quality=RESAMPLE_QUALITY)
        if out.shape[0] == 0:
            raise ValueError(f"waveform too short: {wave.shape[0]} samples at {sample_rate} Hz")
        return out.astype(np.float32, copy=False)

    # -- classification --
    def classify_files(self, paths: Sequence[str | os.PathLike], top: int | None = 5, *,
                       long_clip: str = "windows", progress: bool = False) -> list[FileResult]:
        """One `FileResult` per path, in order: ranked (label, probability) or the reason it failed."""
        clf = self._need_classes()
        res = self.embed_files(paths, progress=progress, long_clip=long_clip)
        ranked = clf.rank(res.embeddings, top) if res.kept else []
        out = [FileResult(os.fsdecode(p)) for p in paths]
        for i, r in zip(res.kept, ranked):
            out[i].ranked = r
        for i, (_, why) in zip(sorted(set(range(len(paths))) - set(res.kept)), res.failed):
            out[i].error = why
        return out

    def classify_arrays(self, waves: Sequence[np.ndarray] | np.ndarray, sample_rate: int,
                        top: int | None = 5) -> list[list[tuple[str, float]]]:
        """Ranked (label, probability) lists for 1-D waveforms at `sample_rate`."""
        clf = self._need_classes()
        emb = self.embed_arrays(waves, sample_rate)
        return clf.rank(emb, top) if len(emb) else []

    # -- timelines --
    def iter_timeline(self, source: Any, window: float = 5.0, hop: float = 1.0, sample_rate: int | None = None,
                      *, block_seconds: float = 10.0) -> Iterator[TimelineRow]:
        """Rows of `timeline`, streamed (bounded memory: one block of audio and one batch of windows)."""
        clf = self._need_classes()
        if not (0 < window <= MAX_TIMELINE_WINDOW_S and 0 < hop <= MAX_TIMELINE_WINDOW_S):
            raise ValueError(f"window and hop must be > 0 and at most {MAX_TIMELINE_WINDOW_S:g} s, "
                             f"got {window} and {hop}")
        sr = self.sample_rate
        win_n, hop_n = int(round(window * sr)), int(round(hop * sr))
        if win_n < 1 or hop_n < 1:
            raise ValueError(f"window and hop must be at least one sample at {sr} Hz")
        if isinstance(source, (str, bytes, os.PathLike)):
            chunks = stream_audio(source, sr, block_seconds)
            info = audio_info(source)
            known = info.frames != UNKNOWN_FRAMES  # a header without a length: checked as it streams
            problem = known and _timeline_problem(int(round(info.duration * sr)), win_n, hop_n, sr,
                                                  self.engine.clip_samples)
            if problem:
                raise AudioError(source, problem)
        else:
            if sample_rate is None:
                raise ValueError("a waveform source needs its sample_rate")
            wave = np.asarray(source, dtype=np.float32)
            if wave.ndim != 1 or wave.shape[0] == 0:
                raise ValueError(f"a waveform source must be non-empty and 1-D (mono), got shape {wave.shape}")
            wave = self._resample(wave, sample_rate)
            problem = _timeline_problem(wave.shape[0], win_n, hop_n, sr, self.engine.clip_samples)
            if problem:
                raise ValueError(problem)
            chunks = array_chunks(wave, max(1, int(block_seconds * sr)))
        frontend = self.engine.frontend if win_n == self.engine.clip_samples else None
        if frontend is not None:
            embed = self.engine.embed_logmels
        elif win_n == self.engine.clip_samples:
            embed = self.engine.embed_waves
        else:  # windows of another length are embedded like clips (padded, or the mean of their 5 s windows)
            def embed(waves: np.ndarray) -> np.ndarray:
                return np.stack([l2_normalize(l2_normalize(self._embed_batched(
                    eval_windows(w, self.engine.clip_samples))).mean(0)) for w in waves])

        def score(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            emb = l2_normalize(np.asarray(emb, dtype=np.float32))
            return clf.predict_proba(emb), emb @ clf.weights.T

        items = iter_windows(chunks, win_n, hop_n, frontend)
        batch = max(1, min(self.batch_size, TIMELINE_BATCH_BYTES // (4 * win_n)))  # long windows: fewer at once
        return collect_rows(items, embed, score, sr, batch)

    def timeline(self, source: Any, window: float = 5.0, hop: float = 1.0, sample_rate: int | None = None
                 ) -> Timeline:
        """Per-window class scores over a recording of any length (a path, or a 1-D waveform with its
        `sample_rate`); `.segments(threshold, min_similarity=...)` merges them. Raises AudioError for a file
        that cannot be read."""
        rows = list(self.iter_timeline(source, window, hop, sample_rate))
        return Timeline(self.labels, rows, float(window), float(hop))


# ------------------------------------------------------------------------------------------------ helpers


def export_pool_window(manifest: dict[str, Any], asked: float | None, where: Any = "the export") -> float | None:
    """The pool window an export's graph was made with (None: whole clips); ValueError when `asked` differs
    (the window is part of the exported graph)."""
    recorded = manifest.get("pool_window")
    if asked is not None and (recorded is None or abs(float(asked) - float(recorded)) > 1e-9):
        made = f"pooled windows of {recorded:g} s" if recorded else "whole 5 s clips"
        raise ValueError(f"{os.fspath(where)}: exported for {made}; a pool window of {asked:g} s needs "
                         f"`tinyclap export --pool-window {asked:g}`")
    return recorded


def _as_waves(waves: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    if isinstance(waves, np.ndarray) and waves.ndim == 2:
        waves = list(waves)
    out = []
    for w in waves if not (isinstance(waves, np.ndarray) and waves.ndim == 1) else [waves]:
        a = np.asarray(w, dtype=np.float32)
        if a.ndim != 1 or a.shape[0] == 0:
            raise ValueError(f"expected non-empty 1-D waveforms, got shape {a.shape}")
        out.append(a)
    return out


def _timeline_problem(n: int, win_n: int, hop_n: int, sr: int, clip_n: int) -> str | None:
    """Why a timeline of audio of n samples with these windows is refused (None: it is not): more than
    MAX_TIMELINE_WINDOWS windows (a tiny --hop: hours of work), or a window longer than both the audio and a
    clip (mostly zero padding, at the memory cost of the whole window)."""
    windows = 1 + max(0, n - win_n) // hop_n
    if windows > MAX_TIMELINE_WINDOWS:
        return (f"{windows} windows of {win_n / sr:g} s every {hop_n / sr:g} s, more than the "
                f"{MAX_TIMELINE_WINDOWS} a timeline may have: use a hop of at least "
                f"{(n - win_n) / (MAX_TIMELINE_WINDOWS - 1) / sr:.3g} s")
    if win_n > max(n, clip_n):
        return (f"the window ({win_n / sr:g} s) is longer than the audio ({n / sr:.3g} s): use a window of at most "
                f"{max(n, clip_n) / sr:.3g} s, or classify the file whole (no window)")
    return None


def _decode_ahead(fn: Any, items: Sequence[Any], workers: int) -> Iterator[tuple[Any, str | None]]:
    """(fn(item), None) or (None, problem) for each item in order, `workers` threads decoding ahead
    (libsndfile and soxr release the GIL)."""

    def safe(x: Any) -> tuple[Any, str | None]:
        try:
            return fn(x), None
        except AudioError as e:
            return None, e.problem

    if workers <= 1:
        yield from map(safe, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures: list[Any] = []
        it = iter(items)
        for x in it:
            futures.append(pool.submit(safe, x))
            if len(futures) > 2 * workers:
                yield futures.pop(0).result()
        for f in futures:
            yield f.result()
