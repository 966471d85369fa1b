"""Exact top-k search over an index's memory-mapped rows, and the merging of adjacent windows.

Why not a plain fp16 matrix product: numpy has no fp16 BLAS, and casting 1 M x 1024 fp16 rows to fp32
takes seconds on one thread. So the search streams the **int8 copy** (half the bytes) through ONNX
Runtime's integer matrix product (`MatMulInteger`: MLAS's u8 x s8 kernels, exact int32 accumulation), for
a whole block of queries at once (each chunk of rows is read once per block: batching is what makes it
fast), and then re-scores in fp16. The result is **exact**, not approximate: each row's int8 entries are
within scale_r / 2 of its stored fp16 entries and each query's within scale_q / 2 of the query, so the
approximate score is within a bound b_r(q) of the exact one (`error_bound`). If L is the M-th largest
lower bound `approx_r - b_r`, every row of the exact top M has `approx_r + b_r >= L`; exactly those rows
are re-scored from fp16 and the best M kept. For unit vectors b is ~0.03, so the re-scored set is small.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyclap._util import l2_normalize

if TYPE_CHECKING:
    from tinyclap.index.store import Hit, Index

__all__ = ["exact_top", "merge_adjacent", "search_index"]

CHUNK_ROWS = 16384  # int8 rows per ONNX Runtime call (16 MB at 1024-d)
QUERY_BLOCK = 32  # queries scored together (one pass over the matrix per block; 3 x 128 MB at 1 M rows)
ROUNDING_MARGIN = 1e-4  # fp32 accumulation error of a 1024-term dot product of unit vectors is < 1e-4


@functools.lru_cache(maxsize=4)
def _int8_product(dim: int) -> Any:
    """An ONNX Runtime session computing (A - 128) @ B for uint8 A (rows, dim) and int8 B (dim, Q), 1 thread:
    MLAS's u8 x s8 kernels (VNNI/AVX2) are what make the first pass fast; int32 accumulation is exact."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B", "zero"], ["Y"])], "int8_scores",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, ["rows", dim]),
         helper.make_tensor_value_info("B", TensorProto.INT8, [dim, "queries"])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, ["rows", "queries"])],
        [numpy_helper.from_array(np.array(128, np.uint8), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def approximate_scores(u8: np.ndarray, scales: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Q, rows) float32 approximate scores of the int8 rows (stored + 128 as uint8) against (Q, D) unit
    queries, and the queries' own int8 scales (Q,) (the queries are quantised too; the bound accounts for it)."""
    n, d = u8.shape
    q_scale = (np.abs(queries).max(axis=1) / 127.0).astype(np.float32)  # (Q,)
    q8 = np.clip(np.rint(queries / q_scale[:, None]), -127, 127).astype(np.int8)
    b = np.ascontiguousarray(q8.T)  # (D, Q)
    out = np.empty((queries.shape[0], n), dtype=np.float32)
    session = _int8_product(d)
    for a in range(0, n, CHUNK_ROWS):
        e = min(a + CHUNK_ROWS, n)
        y = session.run(None, {"A": np.asarray(u8[a:e]), "B": b})[0]  # (rows, Q) int32, exact (graph: - 128)
        np.multiply(y.T, scales[a:e], out=out[:, a:e], casting="unsafe")
    out *= q_scale[:, None]
    return out, q_scale


def error_bound(queries: np.ndarray, q_scale: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(Q, rows) bound on |approximate - exact| score (see module doc): the rows' rounding (scale_r / 2 per
    entry, times ||q||_1) plus the query's (scale_q / 2 per entry, times ||scale_r q8_r||_1 <= sqrt(D) *
    (1.001 + sqrt(D) scale_r / 2) for rows of norm <= 1.001) plus fp32 rounding."""
    root_d = float(np.sqrt(queries.shape[1]))
    rows_term = np.multiply.outer(0.5 * np.abs(queries).sum(axis=1), scales)
    query_term = np.multiply.outer(0.5 * q_scale * root_d, 1.001 + 0.5 * root_d * scales)
    return (rows_term + query_term + ROUNDING_MARGIN).astype(np.float32)


def exact_top(index: Index, queries: np.ndarray, m: int, live: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each query: (rows, exact fp16 scores) of the `m` best live rows, best first (see module doc)."""
    mats = index.matrices()
    f16, u8, scales = mats["f16"], mats["u8"], mats["scales"]
    results: list[tuple[np.ndarray, np.ndarray]] = []
    n = live.size
    m = min(m, int(live.sum()))
    if m == 0:
        return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in queries]
    dead = None if live.all() else ~live
    for a in range(0, queries.shape[0], QUERY_BLOCK):
        block = queries[a : a + QUERY_BLOCK]
        scores, q_scale = approximate_scores(u8, scales, block)  # (Q, rows): made lower, then upper bounds
        bound = error_bound(block, q_scale, scales)
        scores -= bound  # lower bounds
        if dead is not None:
            scores[:, dead] = -np.inf
        level = np.partition(scores, n - m, axis=1)[:, n - m]  # the m-th largest lower bound, per query
        scores += 2 * bound  # upper bounds (dead rows stay -inf)
        del bound
        for j, q in enumerate(block):
            cand = np.flatnonzero(scores[j] >= level[j])
            exact = np.asarray(f16[cand], dtype=np.float32) @ q.astype(np.float32)
            top = np.argsort(-exact, kind="stable")[:m]
            results.append((cand[top], exact[top]))
    return results


def merge_adjacent(hits: list[tuple[int, float, float, float]], gap: float) -> list[tuple[int, float, float, float]]:
    """(file_id, start, end, score) hits, best first -> one hit per run of overlapping or adjacent windows
    of a file (windows at most `gap` seconds apart join): the best score, the run's start and end."""
    kept: list[list[float]] = []
    by_file: dict[int, list[int]] = {}
    for fid, start, end, score in hits:
        for k in by_file.get(fid, []):
            h = kept[k]
            if start <= h[2] + gap and end >= h[1] - gap:
                h[1], h[2] = min(h[1], start), max(h[2], end)
                break
        else:
            by_file.setdefault(fid, []).append(len(kept))
            kept.append([fid, start, end, score])
    return [(int(h[0]), h[1], h[2], h[3]) for h in kept]


def search_index(index: Index, queries: np.ndarray, k: int = 10, *, min_score: float | None = None,
                 dedupe: bool = True, approximate: bool = False) -> list[list[Hit]]:
    """Top-`k` hits for each of (Q, D) queries (normalised here); see `Index.search`."""
    from tinyclap.index.store import Hit

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != index.embed_dim:
        raise ValueError(f"queries must have shape (Q, {index.embed_dim}), got {q.shape}")
    if not np.isfinite(q).all() or not (np.linalg.norm(q, axis=1) > 0).all():
        raise ValueError("a query is zero or not finite")
    q = l2_normalize(q).astype(np.float32)
    _, fids, starts, ends = index.window_table()
    live, where = index.row_lookup()
    hop, window = float(index.manifest.get("hop") or 0), float(index.manifest.get("window") or 0)
    gap = max(0.0, hop - window) + 1e-6
    out: list[list[Hit]] = []
    m = k if not dedupe else 4 * k
    todo = list(range(q.shape[0]))
    found: dict[int, list[tuple[int, float, float, float]]] = {}
    while todo:
        if approximate:
            from tinyclap.index.ann import ann_top

            tops = ann_top(index, q[todo], min(m, int(live.sum())), live)
        else:
            tops = exact_top(index, q[todo], m, live)
        again = []
        for qi, (r, s) in zip(todo, tops):
            keep = s >= min_score if min_score is not None else np.ones(s.size, bool)
            w = where[r[keep]]
            hits = [(int(fids[i]), float(starts[i]), float(ends[i]), float(sc)) for i, sc in zip(w, s[keep])]
            if dedupe:
                hits = merge_adjacent(hits, gap)
            exhausted = r.size < m or not keep.all()  # every live row seen, or the score floor reached
            if len(hits) < k and not exhausted:
                again.append(qi)
            found[qi] = hits[:k]
        todo, m = again, m * 4
    paths = index.paths(fid for hits in found.values() for fid, *_ in hits)
    for qi in range(q.shape[0]):
        out.append([Hit(fid, paths[fid], st, en, sc) for fid, st, en, sc in found[qi]])
    return out
