"""Exact search latency of `tinyclap.index` on synthetic rows, 1 CPU thread.

    python bench/search_latency.py --rows 1000000 --dim 1024 --out /tmp/index-1m

Builds (once; reused when --out already holds it) an index of `--rows` clustered random unit vectors in
files of 1-6 windows, then times `Index.search` for single queries and `Index.search_batch` for batches
(the matrix is streamed once per batch), then the same after `Index.load_resident()` (the int8 rows packed
once into ONNX Runtime's memory: its time and the memory it added), and checks a sample of results against
a brute-force numpy product over the fp16 matrix and the resident results against the streamed ones.
Times are wall-clock medians, with the process's CPU time next to them (what one thread costs when other
jobs share the cores). `--bandwidth` also times one-thread reads of a 1 GiB array (numpy's memory-speed
bound for one pass over the int8 rows). Prints the numbers; asserts nothing about time.
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


def timed(fn, repeat: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of `repeat` calls."""
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def anon_mib() -> float:
    """The process's resident anonymous memory (Linux; NaN elsewhere)."""
    try:
        fields = Path("/proc/self/statm").read_text().split()
        return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def bandwidth_ms() -> float:
    """One thread reading 1 GiB once (a float32 dot product with itself: BLAS, vectorised), median of 3."""
    a = np.ones(1 << 28, np.float32)
    return 1e3 * timed(lambda: a @ a, 3)[0]


def same(a: list, b: list) -> bool:
    return [[(h.path, h.start, h.score) for h in x] for x in a] == [[(h.path, h.start, h.score) for h in x] for x in b]


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
    single = timed(lambda: ix.search(queries[0], k=10, approximate=True), 5)[0]
    return {"ann_build_s": build_s, "ann_recall10": float(recall), "ann_single_ms": 1e3 * single}


def latencies(ix: Index, queries: np.ndarray, repeat: int, tag: str) -> dict:
    ix.search(queries[0], k=10)  # warm: page cache, window table
    single = timed(lambda: ix.search(queries[0], k=10), repeat)
    batch = timed(lambda: ix.search_batch(queries, k=10), max(2, repeat // 2))
    return {f"{tag}_single_ms": 1e3 * single[0], f"{tag}_single_cpu_ms": 1e3 * single[1],
            f"{tag}_batch_ms": 1e3 * batch[0], f"{tag}_batch_cpu_ms": 1e3 * batch[1],
            f"{tag}_batched_ms_per_query": 1e3 * batch[0] / len(queries)}


def matches_bruteforce(ix: Index, queries: np.ndarray) -> bool:
    """Top 10 of 2 queries against brute force over the whole fp16 matrix (in chunks)."""
    f16, ok = ix.matrices()["f16"], True
    for q, hits in zip(queries[:2], ix.search_batch(queries[:2], k=10, dedupe=False)):
        qn = (q / np.linalg.norm(q)).astype(np.float32)
        scores = np.concatenate([np.asarray(f16[a : a + 65536], np.float32) @ qn for a in range(0, ix.rows, 65536)])
        ok &= bool(np.allclose(np.sort(scores)[::-1][:10], [h.score for h in hits], atol=1e-5))
    return ok


def report(res: dict) -> None:
    print(f"exact search, {res['rows']:,} rows x {res['dim']}, 1 thread (wall ms, CPU ms in brackets); "
          f"top-10 equal to brute force: {res['matches_bruteforce']}")
    print(f"  streamed (default):     single query {res['streamed_single_ms']:.0f} "
          f"({res['streamed_single_cpu_ms']:.0f}); batch of {res['batch']}: {res['streamed_batch_ms']:.0f} "
          f"({res['streamed_batch_cpu_ms']:.0f}) = {res['streamed_batched_ms_per_query']:.1f} per query")
    print(f"  resident (load_resident: {res['pack_s']:.1f} s, +{res['pack_mib']:.0f} MiB RAM; results identical: "
          f"{res['resident_identical']}): single query {res['resident_single_ms']:.0f} "
          f"({res['resident_single_cpu_ms']:.0f}); batch of {res['batch']}: {res['resident_batch_ms']:.0f} "
          f"({res['resident_batch_cpu_ms']:.0f}) = {res['resident_batched_ms_per_query']:.1f} per query")
    if "bandwidth_ms" in res:
        print(f"  memory bound: one thread reads 1 GiB in {res['bandwidth_ms']:.0f} ms "
              f"(the int8 rows are {res['rows'] * res['dim'] / 2**30:.2f} GiB)")
    if "ann_recall10" in res:
        print(f"FAISS HNSW (M=32, efConstruction=80, built in {res['ann_build_s']:.0f} s): "
              f"{res['ann_single_ms']:.1f} ms per single query, recall@10 against exact {res['ann_recall10']:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--out", default="/tmp/tinyclap-index-bench")
    p.add_argument("--batch", type=int, default=32, help="queries per batch")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--ann", action="store_true", help="also build the FAISS HNSW graph; recall@10 and latency")
    p.add_argument("--bandwidth", action="store_true", help="also time one-thread reads of 1 GiB")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    ix = build(Path(args.out), args.rows, args.dim)
    f16 = ix.matrices()["f16"]
    rng = np.random.default_rng(1)
    # queries near real rows (a stored vector plus noise), as a text or --like query is near some clips
    picks = rng.integers(0, ix.rows, args.batch)
    queries = np.asarray(f16[picks], np.float32) + 0.05 * rng.standard_normal((args.batch, args.dim))
    res = {"rows": ix.rows, "dim": args.dim, "threads": 1, "batch": args.batch}
    res.update(latencies(ix, queries, args.repeat, "streamed"))
    res["matches_bruteforce"] = matches_bruteforce(ix, queries)
    streamed = ix.search_batch(queries, k=10)
    before, t0 = anon_mib(), time.perf_counter()
    ix.load_resident()
    res.update(pack_s=time.perf_counter() - t0, pack_mib=anon_mib() - before)
    res.update(latencies(ix, queries, args.repeat, "resident"))
    res["resident_identical"] = same(streamed, ix.search_batch(queries, k=10))
    if args.bandwidth:
        res["bandwidth_ms"] = bandwidth_ms()
    if args.ann:
        res.update(ann_numbers(ix, queries, exact=ix.search_batch(queries, k=10, dedupe=False)))
    print(json.dumps(res, indent=2)) if args.json else report(res)


if __name__ == "__main__":
    main()
