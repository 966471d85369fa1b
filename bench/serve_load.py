"""Load test of `tinyclap serve` on the loopback interface only: N requests from C concurrent clients, each
uploading the same 5 s clip to POST /api/classify; prints throughput, latency percentiles, failures and
the server's memory (RSS at start, peak, end). Bounded in count and in time (--deadline); stops by itself.

    python bench/serve_load.py                                   # builds a random-weight int8 1.50-alpha export
    python bench/serve_load.py --export-dir runs/export --int8 --requests 200 --clients 20 --json

Without --export-dir it exports a random-weight phinet_alpha_1.50_beta_0.75_t0_6_N_7 with int8 (calibrated on
../shared/data UrbanSound8K fold 1) into --work; latency does not depend on the weights.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
STUDENT = "phinet_alpha_1.50_beta_0.75_t0_6_N_7"


def build_export(work: Path) -> Path:
    """A random-weight int8 export of STUDENT with 10 random classes (reused when already there)."""
    out = work / "export"
    if (out / "manifest.json").is_file():
        return out
    from tinyclap.cli import main
    from tinyclap.zeroshot import ZeroShotClassifier

    rng = np.random.default_rng(0)
    labels = [f"class_{i}" for i in range(10)]
    ZeroShotClassifier(labels, rng.standard_normal((10, 1024)), float(np.log(100))).save(work / "classes.npz")
    fold1 = SHARED / "UrbanSound8K" / "audio" / "fold1"
    rc = main(["export", "--model", STUDENT, "--classes", str(work / "classes.npz"), "--quantize", "int8",
               "--calibration", str(fold1), "--parity-audio", str(fold1), "--out", str(out)])
    if rc != 0:
        raise SystemExit("export failed")
    return out


def clip_bytes(seconds: float = 5.0) -> bytes:
    import soundfile as sf

    rng = np.random.default_rng(1)
    wave = (0.1 * rng.standard_normal(int(seconds * 44100))).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, wave, 44100, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def multipart(data: bytes) -> tuple[bytes, str]:
    b = "tinyclapbench"
    body = (f'--{b}\r\nContent-Disposition: form-data; name="audio"; filename="clip.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MB (Linux /proc)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return {"rss": out.get("VmRSS", 0.0), "peak": out.get("VmHWM", 0.0)}


def start_server(export_dir: Path, int8: bool, port: int, workers: int, queue: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tinyclap.cli", "serve", "--model", str(export_dir), "--port", str(port),
           "--jobs", str(workers), "--queue", str(queue), "--log-level", "warning"] + (["--int8"] if int8 else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not start within 120 s")


def load(port: int, n: int, clients: int, deadline_s: float, pid: int) -> dict[str, Any]:
    body, ctype = multipart(clip_bytes())
    lat: list[float] = []
    fails: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n))
    stop_at = time.monotonic() + deadline_s
    peak = [0.0]

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop_at:
            with lock:
                if next(counter, None) is None:
                    break
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/api/classify", body=body, headers={"Content-Type": ctype})
                r = conn.getresponse()
                text = r.read()
                ok = r.status == 200 and json.loads(text)["results"][0]["labels"]
                err = None if ok else f"HTTP {r.status}: {text[:120]!r}"
            except (OSError, http.client.HTTPException, ValueError) as e:
                err = f"{type(e).__name__}: {e}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                (fails.append(err) if err else lat.append((time.perf_counter() - t0) * 1000))
        conn.close()

    def sample() -> None:
        while any(t.is_alive() for t in threads):
            peak[0] = max(peak[0], rss_mb(pid)["rss"])
            time.sleep(0.2)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    sampler = threading.Thread(target=sample)
    sampler.start()
    for t in threads:
        t.join()
    sampler.join()
    wall = time.perf_counter() - t0
    q = np.percentile(lat, [50, 95, 99]) if lat else [float("nan")] * 3
    return {"requests": len(lat) + len(fails), "ok": len(lat), "failed": len(fails), "errors": fails[:5],
            "clients": clients, "wall_s": round(wall, 2), "throughput_rps": round(len(lat) / wall, 2),
            "p50_ms": round(float(q[0]), 1), "p95_ms": round(float(q[1]), 1), "p99_ms": round(float(q[2]), 1),
            "mean_ms": round(statistics.fmean(lat), 1) if lat else None, "rss_peak_during_mb": round(peak[0], 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export-dir", type=Path, help="export to serve (default: build one in --work)")
    p.add_argument("--int8", action="store_true", help="serve model.int8.onnx (default when building)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "serve_load")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--queue", type=int, default=32, help="server queue (>= clients: nobody is refused)")
    p.add_argument("--deadline", type=float, default=300.0, help="stop sending after this many seconds")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    export_dir, int8 = (a.export_dir, a.int8) if a.export_dir else (build_export(a.work), True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_server(export_dir, int8, port, a.workers, a.queue)
    try:
        load(port, a.warmup, 1, 60, proc.pid)
        before = rss_mb(proc.pid)
        res = load(port, a.requests, a.clients, a.deadline, proc.pid)
        after = rss_mb(proc.pid)
    finally:
        proc.terminate()
        code = proc.wait(30)
    res.update(export=str(export_dir), int8=int8, rss_before_mb=round(before["rss"], 1),
               rss_after_mb=round(after["rss"], 1), rss_peak_mb=round(after["peak"], 1), server_exit=code,
               cpus=os.cpu_count())
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"{res['ok']}/{res['requests']} ok from {a.clients} clients in {res['wall_s']} s: "
              f"{res['throughput_rps']} req/s, p50 {res['p50_ms']} ms, p95 {res['p95_ms']} ms, p99 {res['p99_ms']} ms; "
              f"server RSS {res['rss_before_mb']} -> {res['rss_after_mb']} MB (peak {res['rss_peak_mb']} MB), "
              f"{res['failed']} failed")
    return 1 if res["failed"] or code != 0 else 0


if __name__ == "__main__":
    raise SystemExit(main())
