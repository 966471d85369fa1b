"""`tinyclap export`: a student + its class matrix -> ONNX (fp32, optionally int8) with a manifest, or
(`--target tflm`) an MCU student -> int8 TensorFlow Lite Micro graphs, C sources and a manifest."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tinyclap.cli._common import (
    COUNT,
    add_command,
    add_json_arg,
    add_model_arg,
    add_pool_window_arg,
    add_templates_arg,
    classifier_from_args,
    float_in,
    int_in,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "export",
        "export a student to ONNX (+ int8) for the torch-free runtime",
        description="Writes model.onnx (waveform -> embedding), student.onnx (log-mel -> embedding), "
        "classes.npz and manifest.json; checks ONNX Runtime against PyTorch on real recordings. With --target "
        "tflm: backbone.tflite + head.tflite (full int8), the int8 class matrix, front-end constants, C sources "
        "and manifest.json, checked with TFLM's own kernels on real recordings (needs the mcu extra).",
    )
    p.add_argument("--target", choices=("onnx", "tflm"), default="onnx",
                   help="onnx: the desktop/server runtime; tflm: TensorFlow Lite Micro (microcontrollers)")
    p.add_argument("--dims", type=int_in(1, 1 << 16),
                   help="tflm: latent entries kept (pruned on the calibration clips); default: the preset's k")
    add_model_arg(p, "student checkpoint, run folder or student name", required=True)
    c = p.add_argument_group("classes (one of)")
    c.add_argument("--labels", help='comma-separated class names, e.g. "dog,rain,siren" (needs --teacher)')
    c.add_argument("--classes", help="class-matrix file (.npz) saved by tinyclap")
    p.add_argument("--teacher", help="teacher checkpoint whose text tower encodes --labels (and --text)")
    p.add_argument("--tokenizer", help="folder with the BERT uncased vocab.txt (with --labels)")
    add_templates_arg(p)
    p.add_argument("--out", required=True, help="output folder (built beside it and swapped in when complete: a "
                   "failed export leaves an earlier one intact)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it is a non-empty folder that is not an earlier export")
    p.add_argument("--opset", type=int_in(17, 30), default=17, help="ONNX opset (>= 17)")
    p.add_argument(
        "--frontend",
        choices=("factorised", "conv"),
        default="factorised",
        help="front end in ONNX: factorised DFT (fast, default) or LogMel's conv1d STFT",
    )
    p.add_argument("--quantize", choices=("int8",), help="also write int8 models (static QDQ quantisation)")
    p.add_argument("--calibration", metavar="AUDIO",
                   help="real recordings for int8 calibration: an audio file, a folder, @LIST (a file listing audio "
                   "files) or a KIND:PATH#.. spec")
    p.add_argument("--calibration-size", type=COUNT, default=32, help="calibration files drawn")
    p.add_argument(
        "--calibration-method",
        choices=("minmax", "entropy", "percentile"),
        default="percentile",
        help="int8 activation ranges (minmax is ~3x faster)",
    )
    p.add_argument(
        "--parity-audio",
        metavar="AUDIO",
        help="real recordings (an audio file, a folder, @LIST or a KIND:PATH#.. spec) for the parity check and the "
        "held-out "
        "int8 evaluation (none given: --calibration files not drawn for calibration)",
    )
    p.add_argument("--parity-size", type=COUNT, default=8, help="files for the fp32 parity check")
    p.add_argument(
        "--eval-size", type=COUNT, default=48, help="held-out files for int8 evaluation"
    )
    p.add_argument(
        "--int8-fp32-blocks",
        default="auto",
        help="leading student blocks (PhiNet stem, block 1, ...) kept fp32: a number, or 'auto' ("
        "the fewest reaching --int8-search-target mean cosine on the calibration clips)",
    )
    p.add_argument("--int8-search-target", type=float_in(0, 1), default=0.995,
                   help="mean cosine to the fp32 model that the 'auto' --int8-fp32-blocks search aims for")
    p.add_argument(
        "--no-frontend-int8-check", action="store_true", help="skip measuring a quantised front end"
    )
    # tflm: the device's window is the pool window (default there: the preset's window, else 1 s)
    add_pool_window_arg(p, window_alias=True)

    p.add_argument("--text", action="store_true",
                   help="also export the teacher's text tower (text.onnx, text.int8.onnx, tokenizer.json): the "
                   "export then takes any --labels / free text without torch (teacher: --teacher, else the one "
                   "the model's run records)")
    add_json_arg(p, "the manifest")
    p.set_defaults(func=run)


def _audio_sets(args: argparse.Namespace) -> tuple[list, list, list]:
    """(parity files, calibration files, held-out files) as described in --help."""
    from tinyclap.deploy.clips import find_audio, pick

    cal_pool = find_audio(args.calibration) if args.calibration else []
    calibration = pick(cal_pool, args.calibration_size, seed=0) if args.quantize else []
    chosen = set(calibration)
    if args.parity_audio:
        pool = find_audio(args.parity_audio)
    else:
        pool = [p for p in cal_pool if p not in chosen]
    if not pool and not args.calibration:
        raise ValueError(
            "the parity check needs real recordings: pass --parity-audio AUDIO or --calibration AUDIO"
        )
    heldout = [p for p in pick(pool, args.eval_size + len(chosen), seed=1) if p not in chosen][
        : args.eval_size
    ]
    if not pool:  # calibration folder fully used: check parity on calibration files (fp32 parity only)
        pool = cal_pool
    parity = pick(pool, args.parity_size, seed=2)
    return parity, calibration, heldout


def _fp32_blocks(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        k = int(value)
    except ValueError:
        k = -1
    if k < 0:
        raise ValueError(f"--int8-fp32-blocks must be 'auto' or an integer >= 0, got {value!r}")
    return k


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tinyclap.deploy.export import check_out_dir, export
    from tinyclap.deploy.quantize import Int8Options
    from tinyclap.models import load_model
    from tinyclap.models.embedder import with_pool_window

    if bool(args.labels) == bool(args.classes):
        raise ValueError(
            'give the classes: --labels "a,b,c" (with --teacher and --tokenizer) or --classes FILE'
        )
    if args.target == "tflm":
        return _run_tflm(args)
    if args.dims is not None:
        raise ValueError("--dims belongs to --target tflm (the ONNX export keeps the model's dims: tinyclap prune)")
    if args.quantize and not args.calibration:
        raise ValueError("--quantize int8 needs --calibration AUDIO (real recordings)")
    check_out_dir(Path(args.out), args.overwrite)
    parity, calibration, heldout = _audio_sets(args)
    model = with_pool_window(load_model(args.model), args.pool_window)
    clf = classifier_from_args(args, model, args.model)
    text = None
    if args.text:
        from tinyclap.evaluation.run import resolve_text_model

        text = resolve_text_model(model, args.model, teacher=args.teacher, tokenizer=args.tokenizer)[0]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    manifest = export(
        model,
        args.out,
        clf,
        parity_audio=parity,
        opset=args.opset,
        frontend=args.frontend,
        quantize=args.quantize,
        calibration_audio=calibration,
        heldout_audio=heldout,
        int8=Int8Options(
            method=args.calibration_method,
            fp32_blocks=_fp32_blocks(args.int8_fp32_blocks),
            search_target=args.int8_search_target,
            measure_frontend=not args.no_frontend_int8_check,
        ),
        source=str(args.model),
        log=log,
        overwrite=args.overwrite,
        text=text,
    )
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        _print_summary(manifest, args.out)
    return 0


def _print_summary(manifest: dict[str, Any], out: str) -> None:
    """The human-readable report: parity, int8 agreement, files."""
    par = manifest["parity"]
    print(f"exported {manifest['student']['name']} -> {out}")
    for name in ("model.onnx", "student.onnx"):
        print(f"  parity {name:18s} min cosine {par[name]['min_cosine']:.7f} over {par[name]['clips']} clips")
    q = manifest["quantization"]
    if q:
        print(f"  int8: {q['fp32_blocks']} leading student block(s) kept fp32")
        for name in ("model.int8.onnx", "student.int8.onnx"):
            r = q[name]
            print(
                f"  int8   {name:18s} mean cosine {r['mean_cosine']:.4f} (min {r['min_cosine']:.4f}, "
                f"centred {r['centred_cosine']:.4f}), "
                f"top-1 agreement {100 * r.get('top1_agreement', float('nan')):.1f} % "
                f"on {r['clips']} held-out clips"
            )
        if "frontend_int8" in q:
            r = q["frontend_int8"]
            print(
                f"  (front end quantised too: mean cosine {r['mean_cosine']:.4f}, "
                f"top-1 agreement {100 * r.get('top1_agreement', float('nan')):.1f} %; kept fp32)"
            )
    t = manifest.get("text")
    if t:
        for name in ("text.onnx", "text.int8.onnx"):
            r = t["parity"][name]
            agree = r.get("zero_shot_top1_agreement")
            print(f"  text   {name:18s} mean cosine {r['mean_cosine']:.4f} (min {r['min_cosine']:.4f}) on "
                  f"{t['parity']['texts']} texts, {r['latency_ms_per_text']:.1f} ms/text"
                  + ("" if agree is None else f", zero-shot top-1 agreement {100 * agree:.1f} %"))
    for name, f in manifest["files"].items():
        print(f"  {name:18s} {f['bytes'] / 1e6:8.2f} MB  sha256 {f['sha256'][:16]}...")


def _run_tflm(args: argparse.Namespace) -> int:
    """`export --target tflm`: calibration and held-out parity files from --calibration (--parity-audio)."""
    from pathlib import Path

    from tinyclap.deploy.clips import find_audio, pick
    from tinyclap.deploy.mcu.export import check_tflm_out, export_tflm
    from tinyclap.deploy.mcu.tflm import require_mcu
    from tinyclap.models import load_model
    from tinyclap.models.mcu import PRESETS, preset_of

    require_mcu()
    if not args.calibration:
        raise ValueError("--target tflm needs --calibration AUDIO (real recordings for the int8 ranges)")
    if args.dims is not None and args.dims < 1:
        raise ValueError(f"--dims must be >= 1, got {args.dims}")
    check_tflm_out(Path(args.out), args.overwrite)
    cal_pool = find_audio(args.calibration)
    calibration = pick(cal_pool, args.calibration_size, seed=0)
    pool = find_audio(args.parity_audio) if args.parity_audio else [p for p in cal_pool if p not in set(calibration)]
    parity = pick(pool or calibration, args.eval_size, seed=1)
    model = load_model(args.model)
    preset = preset_of(getattr(model, "name", ""))
    given = args.pool_window
    window = given if given is not None else (PRESETS[preset].window if preset else 1.0)
    clf = classifier_from_args(args, model, args.model)
    manifest = export_tflm(model, args.out, clf, window=window, dims=args.dims, calibration_audio=calibration,
                           parity_audio=parity, source=str(args.model), overwrite=args.overwrite,
                           log=lambda msg: print(msg, file=sys.stderr))
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    par, arena, flash = manifest["parity"], manifest["arena_bytes"], manifest["flash_bytes"]
    print(f"exported {manifest['student']['name']} for TFLM -> {args.out} (window {window} s, "
          f"{manifest['window']['frames']} frames, {manifest['classes']['num_classes']} classes)")
    print(f"  arena (measured, TFLM) {arena['total'] / 1024:.1f} KiB; flash {flash['total'] / 1024:.1f} KiB")
    print(f"  TFLM int8 vs torch fp32 on {par['clips']} clips: mean cosine {par['mean_cosine']:.4f} "
          f"(min {par['min_cosine']:.4f}), top-1 agreement {100 * par['top1_agreement']:.1f} % "
          f"(int8 class matrix {100 * par['top1_agreement_int8_classes']:.1f} %)")
    if manifest["float_ops"]["ops"]:
        print(f"  float ops: {', '.join(manifest['float_ops']['ops'])} ({manifest['float_ops']['why']})")
    return 0
