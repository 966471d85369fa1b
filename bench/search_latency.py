"""Exact search latency of `tinyclap.index` on synthetic rows, 1 CPU thread.

    python bench/search_latency.py --rows 1000000 --dim 1024 --out /tmp/index-1m

Builds (once; reused when --out already holds it) an index of `--rows` clustered random unit vectors in
files of 1-6 windows, then times `Index.search` for single queries and `Index.search_batch` for batches
(the matrix is streamed once per batch), and checks a sample of results against a brute-force numpy
product over the fp16 matrix. Prints the numbers; asserts nothing about time.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # 1 CPU thread, set before numpy loads its BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from tinyclap.index import Index  # noqa: E402
from tinyclap.index.store import MANIFEST  # noqa: E402


def build(out: Path, rows: int, dim: int, seed: int = 0) -> Index:
    if (out / MANIFEST).exists():
        ix = Index.open(out)
        if ix.rows == rows and ix.embed_dim == dim:
            return ix
        raise SystemExit(f"{out} holds another index; remove it first")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, dim)).astype(np.float32)
    ix = Index.create(out, {"kind": "audio", "model": {"fingerprint": "synthetic"}, "window": 5.0, "hop": 5.0,
                            "embed_dim": dim})
    done, fid, t0 = 0, 0, time.perf_counter()
    while done < rows:
        records, n = [], 0
        while n < min(50_000, rows - done):
            k = int(min(rng.integers(1, 7), rows - done - n))
            spans = [(5.0 * j, 5.0 * j + 5.0) for j in range(k)]
            records.append(({"path": f"/synthetic/{fid:07d}.wav", "size": 1, "mtime_ns": 1, "sha256": None,
                             "duration": 5.0 * k, "status": "ok", "error": None}, spans))
            fid, n = fid + 1, n + k
        e = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, dim), dtype=np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        ix.append(records, e)
        done += n
        print(f"  built {done}/{rows} rows ({time.perf_counter() - t0:.0f} s)", flush=True)
    ix.close()
    return Index.open(out)


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def ann_numbers(ix: Index, queries: np.ndarray, exact: list) -> dict:
    """Build the approximate index, then its single-query latency and recall@10 against exact search."""
    import faiss

    from tinyclap.index.ann import build_ann

    faiss.omp_set_num_threads(1)
    t0 = time.perf_counter()
    build_ann(ix)
    build_s = time.perf_counter() - t0
    approx = ix.search_batch(queries, k=10, dedupe=False, approximate=True)
    recall = np.mean([len({(h.path, h.start) for h in a} & {(h.path, h.start) for h in e}) / 10
                      for a, e in zip(approx, exact)])
    single = timed(lambda: ix.search(queries[0], k=10, approximate=True), 5)
    return {"ann_build_s": build_s, "ann_recall10": float(recall), "ann_single_ms": 1e3 * float(np.median(single))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--out", default="/tmp/tinyclap-index-bench")
    p.add_argument("--batch", type=int, default=32, help="queries per batch")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--ann", action="store_true", help="also build the FAISS HNSW graph; recall@10 and latency")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    ix = build(Path(args.out), args.rows, args.dim)
    f16 = ix.matrices()["f16"]
    rng = np.random.default_rng(1)
    # queries near real rows (a stored vector plus noise), as a text or --like query is near some clips
    picks = rng.integers(0, ix.rows, args.batch)
    queries = np.asarray(f16[picks], np.float32) + 0.05 * rng.standard_normal((args.batch, args.dim))
    ix.search(queries[0], k=10)  # warm: page cache, window table
    single = timed(lambda: ix.search(queries[0], k=10), args.repeat)
    batch = timed(lambda: ix.search_batch(queries, k=10), max(2, args.repeat // 2))
    # correctness on 2 queries: brute force over the whole fp16 matrix in chunks
    ok = True
    for q, hits in zip(queries[:2], ix.search_batch(queries[:2], k=10, dedupe=False)):
        qn = (q / np.linalg.norm(q)).astype(np.float32)
        scores = np.concatenate([np.asarray(f16[a : a + 65536], np.float32) @ qn
                                 for a in range(0, ix.rows, 65536)])
        best = np.sort(scores)[::-1][:10]
        ok &= bool(np.allclose(best, [h.score for h in hits], atol=1e-5))
    res = {
        "rows": ix.rows, "dim": args.dim, "threads": 1,
        "single_query_ms_median": 1e3 * float(np.median(single)),
        "batch": args.batch, "batch_ms_median": 1e3 * float(np.median(batch)),
        "batched_ms_per_query": 1e3 * float(np.median(batch)) / args.batch,
        "matches_bruteforce": ok,
    }
    if args.ann:
        res.update(ann_numbers(ix, queries, exact=ix.search_batch(queries, k=10, dedupe=False)))
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"exact search, {res['rows']:,} rows x {args.dim}, 1 thread: single query "
              f"{res['single_query_ms_median']:.0f} ms; batch of {args.batch}: {res['batch_ms_median']:.0f} ms "
              f"= {res['batched_ms_per_query']:.1f} ms per query; top-10 equal to brute force: {ok}")
        if args.ann:
            print(f"FAISS HNSW (M=32, efConstruction=80, built in {res['ann_build_s']:.0f} s): "
                  f"{res['ann_single_ms']:.1f} ms per single query, recall@10 against exact {res['ann_recall10']:.3f}")


if __name__ == "__main__":
    main()
