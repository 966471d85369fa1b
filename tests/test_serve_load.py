"""A short run of bench/serve_load.py against a live loopback server: no failed request, bounded server
memory, a clean exit on SIGTERM. Timings are printed by the benchmark, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NAME = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"


def test_short_load_no_failures_bounded_memory(work: Path, us8k_root: Path) -> None:
    import torch

    from tinyclap.deploy.clips import find_audio, pick
    from tinyclap.deploy.export import export
    from tinyclap.models.students import create_student
    from tinyclap.zeroshot import ZeroShotClassifier

    torch.manual_seed(0)
    clf = ZeroShotClassifier(["a", "b", "c"], np.random.default_rng(0).standard_normal((3, 64)), 4.0)
    export(create_student(NAME, embed_dim=64).eval(), work / "export", clf,
           parity_audio=pick(find_audio(us8k_root / "audio" / "fold1"), 1))
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "serve_load.py"), "--export-dir", str(work / "export"),
                          "--requests", "60", "--clients", "8", "--warmup", "3", "--deadline", "120", "--json",
                          "--work", str(work)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout[out.stdout.index("{"):])
    assert res["requests"] == 60 and res["failed"] == 0, res["errors"]
    assert res["server_exit"] == 0
    assert res["rss_after_mb"] - res["rss_before_mb"] < 150, res  # no growth with the number of requests
