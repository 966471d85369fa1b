"""`run_eval`: zero-shot evaluation of a teacher or a student with the tinyCLAP paper's protocol, and the
text side every command shares (class prompts -> class matrix).

Protocol: every clip of the dataset (or of the selected folds) is embedded deterministically (a long clip is
the renormalised mean of its 5 s window embeddings, or its centre crop; never a random crop), each class is
the text embedding of "this is the sound of {class}" with underscores turned into spaces, and the prediction
is the class of highest cosine similarity. Accuracy is reported overall, per fold (mean ± std over folds)
and per class, with a confusion matrix.

Reference protocol (fpaissan/tinyCLAP, `tinyclap.py` + `clap_datasets.py`): "this is the sound of " +
class name, argmax of softmax(clamp(exp(logit_scale) * cos, max=100)), random 5 s crops of longer clips
(TUT17) and underscores kept for UrbanSound8K. We differ on purpose in the last two (deterministic, and
underscores -> spaces everywhere) and take the plain argmax of the cosine (the clamp could only add ties).
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinyclap._util import atomic_write_text, resolve_device
from tinyclap.data.spec import load_eval_dataset
from tinyclap.evaluation.agreement import Agreement, compare_to_teacher
from tinyclap.evaluation.embedding import Embedded, default_cache_dir, embed_dataset
from tinyclap.evaluation.metrics import EvalReport, evaluate, save_confusion_png, write_json
from tinyclap.models.embedder import with_pool_window
from tinyclap.models.fingerprint import describe_model, load_model_for_eval, recorded_dims, recorded_teacher
from tinyclap.zeroshot import DEFAULT_TEMPLATE, ZeroShotClassifier, read_templates

__all__ = [
    "align_classifier",
    "build_classifier",
    "protocol_block",
    "read_templates",
    "resolve_text_model",
    "run_eval",
]


# --------------------------------------------------------------------------------------------- text side


def _same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return os.path.abspath(os.fspath(a)) == os.path.abspath(os.fspath(b))


def resolve_text_model(
    model: Any,
    spec: str | os.PathLike | None = None,
    *,
    teacher: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
) -> tuple[Any, str, str | None]:
    """(text model, where it came from, its checkpoint path or None when it is `model` itself).

    The text model's `encode_text` gives the class embeddings.

    Order: `teacher` when given, else the evaluated model's own text tower (teachers), else the teacher
    recorded in a student run's config. Raises ValueError saying what to pass when there is none.
    """
    from tinyclap.models import load_model

    path: str | None
    if hasattr(model, "encode_text") and teacher is None:
        text_model, source, path = model, "the evaluated model's own text tower", None
    elif teacher is not None:
        path = os.fspath(teacher)
        same = spec is not None and hasattr(model, "encode_text") and _same_path(teacher, spec)
        text_model = model if same else load_model(teacher, tokenizer_dir=tokenizer)  # no second copy
        source = f"teacher {path}"
    else:
        path, rec_tok = _recorded_teacher_or_raise(spec)
        text_model = load_model(path, tokenizer_dir=tokenizer or rec_tok)
        source = f"teacher {path} (recorded in the student's config)"
    if not hasattr(text_model, "encode_text"):
        kind = getattr(text_model, "kind", None) or type(text_model).__name__
        raise ValueError(
            f"{path}: a {kind!r} model (no text tower), but a teacher is expected here (an MS CLAP .pth, "
            "or a teacher or proxy-teacher checkpoint/run folder)"
        )
    if getattr(text_model, "tokenizer", "n/a") is None:
        raise ValueError(
            f"{source} has no tokenizer, so it cannot encode the class prompts: pass --tokenizer DIR "
            "(a folder with BERT's uncased vocab.txt) or --classes FILE.npz"
        )
    return text_model, source, path


def _recorded_teacher_or_raise(spec: str | os.PathLike | None) -> tuple[str, str | None]:
    """(teacher path, tokenizer) recorded in a student's config; a ValueError saying what to pass if none."""
    from tinyclap.models.pretrained import is_pretrained, pretrained_teacher

    if is_pretrained(spec):  # a released student: MS CLAP 2022, where `tinyclap download` puts it
        return pretrained_teacher(str(spec))
    rec = recorded_teacher(spec) if spec is not None else None
    if rec is None:
        raise ValueError(
            f"{spec}: no text encoder for the class prompts: this model has no text tower and its "
            "config records no teacher. Pass --teacher CKPT (the teacher it was distilled from; an MS CLAP "
            "teacher also needs --tokenizer DIR, a folder with BERT's uncased vocab.txt), --classes FILE.npz "
            "(a class matrix saved by tinyclap), or use an export made with `tinyclap export --text`"
        )
    if not Path(rec[0]).exists():
        raise ValueError(
            f"{spec}: the recorded teacher {rec[0]} does not exist; pass --teacher CKPT --tokenizer DIR "
            "or --classes FILE.npz"
        )
    return rec


def align_classifier(
    clf: ZeroShotClassifier, class_names: Sequence[str], source: str = "class matrix"
) -> ZeroShotClassifier:
    """Reorder a saved class matrix to the dataset's classes (labels match with or without underscores)."""

    def key(s: str) -> str:
        return " ".join(s.replace("_", " ").lower().split())

    rows = {key(lb): i for i, lb in enumerate(clf.labels)}
    absent = [c for c in class_names if key(c) not in rows]
    if absent:
        raise ValueError(
            f"{source}: no row for class(es) {', '.join(map(repr, absent))} (it has: {', '.join(clf.labels)})"
        )
    idx = [rows[key(c)] for c in class_names]
    return clf.subset(idx, list(class_names))


def build_classifier(
    class_names: Sequence[str] | None,
    *,
    classes_file: str | os.PathLike | None = None,
    text_model: Any = None,
    templates: Sequence[str] | None = None,
    model: Any = None,
    model_spec: str | os.PathLike | None = None,
    teacher: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
) -> ZeroShotClassifier:
    """The one way every command gets its (C, D) class matrix.

    - `classes_file` (a matrix saved by tinyclap): loaded, and reordered to `class_names` when given
      (labels match with or without underscores); as saved when `class_names` is None.
    - else the class names are encoded with prompt `templates` (templates or files of them, see
      `read_templates`; default: the text model's `template`, else "this is the sound of {}") by
      `text_model` when given, else by the text model `resolve_text_model(model, model_spec, teacher=,
      tokenizer=)` finds: `teacher`, else the model's own text tower, else the teacher recorded in the run.
    """
    if classes_file is not None:
        clf = ZeroShotClassifier.load(classes_file)
        return clf if class_names is None else align_classifier(clf, class_names, os.fspath(classes_file))
    if not class_names:
        raise ValueError("give the class names (with a text model) or a class-matrix file (.npz)")
    if text_model is None:
        if model is None and teacher is None and model_spec is None:
            raise ValueError("need a text model or a class-matrix file for the class prompts")
        text_model = resolve_text_model(model, model_spec, teacher=teacher, tokenizer=tokenizer)[0]
    # labels stay the dataset's names; class_prompt turns underscores into spaces for the prompt
    tpls = read_templates(templates, getattr(text_model, "template", DEFAULT_TEMPLATE))  # the teacher's style
    return ZeroShotClassifier.from_teacher(text_model, list(class_names), tpls)


# --------------------------------------------------------------------------------------------- run_eval


def protocol_block(
    dataset: Any, templates: Sequence[str], mode: str, clip_seconds: float, sample_rate: int, **extra: Any
) -> dict[str, Any]:
    """What exactly was measured, for the JSON report."""
    block = {
        "prompt_templates": list(templates),
        "class_names": "underscores replaced by spaces for every dataset",
        "prediction": "argmax of cosine(audio, class text embedding)",
        "clips": "every clip of the selected folds, deterministic (no random crops)",
        "long_clip": mode,
        "long_clip_meaning": {
            "windows": "renormalised mean of the embeddings of all 5 s windows",
            "centre": "centre 5 s crop",
        }[mode],
        "clip_seconds": clip_seconds,
        "short_clips": "zero-padded to the clip length",
        "sample_rate": sample_rate,
        "fold_std": "population std over folds (ddof=0)",
        "differences_from_reference": [
            "the reference tinyCLAP code took a random 5 s crop of longer clips (e.g. TUT17's 10 s); "
            "we embed them deterministically (see long_clip)",
            "the reference took the argmax of softmax(clamp(scaled cosine, max=100)); the clamp can only "
            "create ties, we take the argmax of the cosine",
        ],
        **extra,
    }
    if dataset.name.startswith("us8k"):
        block["note"] = (
            "UrbanSound8K prompts use spaces (e.g. 'air conditioner'); the reference tinyCLAP code kept the "
            "underscores ('this is the sound of air_conditioner'), so its US8K numbers may differ slightly"
        )
    return block


def embed_cache_dir(embed_cache: str | os.PathLike | None, no_cache: bool) -> Path | None:
    """The embedding-cache folder of a run: None with `no_cache`, else `embed_cache` or the default."""
    if no_cache:
        return None
    return Path(embed_cache) if embed_cache is not None else default_cache_dir()


def _eval_classifier(
    model: Any,
    model_spec: str,
    class_names: Sequence[str],
    *,
    teacher: str | None,
    tokenizer: str | None,
    classes_file: str | None,
    templates: Sequence[str] | None,
) -> tuple[ZeroShotClassifier, str]:
    """(class matrix matching the model's space, where its text came from)."""
    if classes_file is not None:
        clf = build_classifier(class_names, classes_file=classes_file)
        text_source = f"class matrix {classes_file}"
    else:
        text_model, text_source, _ = resolve_text_model(model, model_spec, teacher=teacher, tokenizer=tokenizer)
        clf = build_classifier(class_names, text_model=text_model, templates=templates)
    dims = recorded_dims(model_spec)
    if clf.embed_dim != model.embed_dim and dims is not None and len(dims) == model.embed_dim:
        # a student pruned by `tinyclap prune`: its k entries are these entries of the teacher's space
        clf = clf.select(dims)
        text_source += f", sliced to the {len(dims)} entries the pruned student keeps"
    if clf.embed_dim != model.embed_dim:
        raise ValueError(
            f"the class matrix ({text_source}) has {clf.embed_dim} dims but {model_spec} gives {model.embed_dim}"
        )
    return clf, text_source


@dataclass
class _EvalOutcome:
    """What `run_eval` measured, gathered for its report."""

    dataset: Any
    emb: Embedded
    report: EvalReport
    clf: ZeroShotClassifier
    text_source: str
    info: dict[str, Any]
    agreement: Agreement | None = None


def _report_dict(o: _EvalOutcome, out: Path, png: Path, opts: dict[str, Any], t0: float) -> dict[str, Any]:
    """The JSON report of one evaluation (`opts`: folds, limit, long_clip, esc10, seed)."""
    import tinyclap

    ds, emb = o.dataset, o.emb
    return {
        "tinyclap_version": tinyclap.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": o.info,
        "text": {"source": o.text_source, "templates": list(o.clf.templates), "logit_scale": o.clf.logit_scale},
        "dataset": {
            "name": ds.name,
            "root": os.fspath(ds.root),
            "folds": list(opts["folds"]) if opts["folds"] else ds.folds,
            "limit": opts["limit"],
            "n_listed": len(ds.items),
            "n_clips": o.report.n,
            "n_skipped": len(emb.failed),
            "skipped": [{"file": p, "error": e} for p, e in emb.failed],
            "n_missing": len(ds.missing),
            "missing": [os.fspath(p) for p in ds.missing],
            "classes": list(ds.classes),
        },
        "protocol": protocol_block(
            ds, o.clf.templates, opts["long_clip"], 5.0, int(o.info["sample_rate"]), esc10=opts["esc10"],
            seed=opts["seed"], pool_window=opts["pool_window"],
        ),
        "results": o.report.to_dict(),
        "embed_cache": {"file": None if emb.cache_file is None else os.fspath(emb.cache_file), "reused": emb.cache_hit},
        "files": {"confusion_png": os.fspath(png), "predictions_csv": os.fspath(out / "predictions.csv")},
        "against_teacher": None if o.agreement is None else o.agreement.to_dict(),
        "elapsed_s": round(time.time() - t0, 3),
    }


def _print_summary(o: _EvalOutcome, out: Path, png: Path) -> None:
    params = o.info["audio_params"]
    size = f", {params / 1e6:.2f} M params" if params else ""
    print(f"{o.info['name']} ({o.info['kind']}{size}) on {o.dataset.name} ({o.dataset.root})")
    print(
        f"clips: {o.report.n} evaluated, {len(o.emb.failed)} skipped (unreadable), "
        f"{len(o.dataset.missing)} missing" + (" [embeddings from cache]" if o.emb.cache_hit else "")
    )
    print(o.report.summary())
    if o.agreement is not None:
        print(o.agreement.summary())
    print(f"report: {out / 'report.json'}  confusion: {png}")


def run_eval(
    model_spec: str,
    dataset_name: str,
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    teacher: str | None = None,
    tokenizer: str | None = None,
    classes_file: str | None = None,
    templates: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    esc10: bool = False,
    subset: str | None = None,
    limit: int | None = None,
    long_clip: str = "windows",
    embed_cache: str | os.PathLike | None = None,
    no_cache: bool = False,
    seed: int = 0,
    device: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    verbose: bool = True,
    against_teacher: bool = False,
    pool_window: float | None = None,
) -> dict[str, Any]:
    """Evaluate a model on a dataset and write `report.json`, `confusion.png`, `predictions.csv` to out_dir.

    Returns the JSON report (dict); prints a short summary when `verbose`. The output folder is created
    only once the dataset, the model and the class matrix have loaded. `against_teacher`: also score the
    student's teacher (`teacher`, else the one recorded in its run) on the same clips and report retention,
    top-1 agreement and mean cosine (`tinyclap.evaluation.agreement`) under "against_teacher".
    `pool_window` (seconds, students only): each 5 s window is embedded as a device does it, from the
    student's backbone features averaged over windows of that length (`tinyclap.models.embedder`).
    """
    t0 = time.time()
    dataset = load_eval_dataset(dataset_name, root, folds=folds, esc10=esc10, subset=subset, limit=limit)
    dev = resolve_device(device)
    model, fingerprint = load_model_for_eval(model_spec, tokenizer, seed)
    with_pool_window(model, pool_window)
    if isinstance(model, torch.nn.Module):
        model.to(dev)
    clf, text_source = _eval_classifier(
        model, model_spec, dataset.classes, teacher=teacher, tokenizer=tokenizer, classes_file=classes_file,
        templates=templates,
    )
    cache_dir = embed_cache_dir(embed_cache, no_cache)
    show = progress and len(dataset.items) > 20
    emb = embed_dataset(
        model, dataset, long_clip, cache_dir, progress=show, model_id=fingerprint, batch_size=batch_size, device=dev
    )
    if not emb.kept:
        raise ValueError(f"{dataset.root}: none of the {len(dataset.items)} clips could be read")
    items = [dataset.items[i] for i in emb.kept]
    report = evaluate(emb.embeddings, [it.label for it in items], clf, [it.fold for it in items], list(dataset.classes))
    o = _EvalOutcome(dataset, emb, report, clf, text_source, describe_model(model, model_spec, fingerprint))
    if against_teacher:
        run = {"tokenizer": tokenizer, "classes_file": classes_file, "templates": templates, "long_clip": long_clip,
               "cache_dir": cache_dir, "seed": seed, "device": dev, "batch_size": batch_size, "progress": show}
        o.agreement = _teacher_agreement(model_spec, teacher, dataset, emb, clf, run)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{o.info['name']} on {dataset.name}: {100 * report.accuracy:.1f} %"
    png = save_confusion_png(report, None, out / "confusion.png", title=title)
    _write_predictions(out / "predictions.csv", items, report)
    opts = {"folds": folds, "limit": limit, "long_clip": long_clip, "esc10": esc10, "seed": seed,
            "pool_window": pool_window}
    result = _report_dict(o, out, png, opts, t0)
    write_json(out / "report.json", result)
    if verbose:
        _print_summary(o, out, png)
    return result


def _teacher_agreement(
    model_spec: str, teacher: str | None, dataset: Any, emb: Embedded, clf: ZeroShotClassifier, run: dict[str, Any]
) -> Agreement:
    """Score the student's teacher on the same clips (its own text tower, or the same --classes file)."""
    if teacher is not None:
        spec, tok = teacher, run["tokenizer"]
    else:
        spec, rec_tok = _recorded_teacher_or_raise(model_spec)
        tok = run["tokenizer"] or rec_tok
    t_model, t_fingerprint = load_model_for_eval(spec, tok, run["seed"])
    if isinstance(t_model, torch.nn.Module):
        t_model.to(run["device"])
    t_clf, _ = _eval_classifier(t_model, spec, dataset.classes, teacher=None, tokenizer=tok,
                                classes_file=run["classes_file"], templates=run["templates"])
    t_emb = embed_dataset(t_model, dataset, run["long_clip"], run["cache_dir"], progress=run["progress"],
                          model_id=t_fingerprint, batch_size=run["batch_size"], device=run["device"])
    labels = [it.label for it in dataset.items]
    return compare_to_teacher((emb.embeddings, emb.kept, clf), (t_emb.embeddings, t_emb.kept, t_clf), labels,
                              list(dataset.classes), teacher_name=os.fspath(spec), dims=recorded_dims(model_spec))


def _write_predictions(path: Path, items: Sequence[Any], report: EvalReport) -> None:
    """One CSV row per evaluated clip: path, fold, true and predicted class, correct (0/1)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "fold", "label", "predicted", "correct"])
    names = report.class_names
    for it, y, p in zip(items, report.labels, report.predictions):
        w.writerow([os.fspath(it.path), "" if it.fold is None else it.fold, names[y], names[p], int(y == p)])
    atomic_write_text(path, buf.getvalue())
