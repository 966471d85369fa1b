"""Exact top-k search over an index's memory-mapped rows, and the merging of adjacent windows.

Why not a plain fp16 matrix product: numpy has no fp16 BLAS, and casting 1 M x 1024 fp16 rows to fp32
takes seconds on one thread. So the search streams the **int8 copy** (half the bytes) through ONNX
Runtime's integer matrix product (`MatMulInteger`: MLAS's u8 x s8 kernels, exact int32 accumulation), for
a whole block of queries at once (each chunk of rows is read once per block: batching is what makes it
fast), and then re-scores in fp16. The result is **exact**, not approximate: each row's int8 entries are
within scale_r / 2 of its stored fp16 entries and the query's rounding error e is known exactly, so the
approximate score is within a bound b_r(q) of the exact one (`bound_coefficients`). If L is the M-th largest
lower bound `approx_r - b_r`, every row of the exact top M has `approx_r + b_r >= L`; exactly those rows
are re-scored from fp16 and the best M kept. For unit vectors b is ~0.02, so the re-scored set is small.

Single queries: `MatMulInteger` takes the streamed rows as its *A* operand, which MLAS re-packs (interleaves
and sums) on every call, so one query costs about as much as 16 (measured): ~3 GB/s, ~250 ms of CPU for 1 M x
1024 rows. `Index.load_resident()` instead packs the int8 rows once into ONNX Runtime's memory as the
*constant* B operand of a com.microsoft `QGemm` (transB, one session per `RESIDENT_CHUNK_ROWS` rows; MLAS
prepacks constant weights at session creation), so each query reads the packed rows at memory speed, like an
LLM's int8 weights (~90 ms of CPU for 1 M x 1024, about one read of 1 GiB), at the price of a one-off packing
pass and about twice the int8 matrix in RAM. The integer products are the same exact int32 sums (|sum| < 2^24,
so the float output holds them exactly), hence the same scores, the same bound and the same results.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyclap._util import l2_normalize

if TYPE_CHECKING:
    from tinyclap.index.store import Hit, Index

__all__ = ["exact_top", "merge_adjacent", "search_index"]

CHUNK_ROWS = 16384  # int8 rows per ONNX Runtime call (16 MB at 1024-d)
QUERY_BLOCK = 32  # queries scored together (one pass over the matrix per block; 3 x 128 MB at 1 M rows)
ROUNDING_MARGIN = 1e-4  # fp32 accumulation error of a 1024-term dot product of unit vectors is < 1e-4


RESIDENT_CHUNK_ROWS = 65536  # rows per packed session (64 MB at 1024-d)


@functools.lru_cache(maxsize=1)
def int8_sums_may_saturate() -> bool:
    """True on an x86-64 CPU without VNNI: there MLAS's u8 x s8 kernels use VPMADDUBSW, whose pairwise int16
    sums saturate above 32767 (ONNX Runtime's quantisation docs), which would break the exactness argument.
    The streamed path then quantises queries to |q8| <= 64 (2 x 255 x 64 < 32768: no saturation possible) and
    `Index.load_resident` declines (its query operand is the unsigned one). VNNI (VPDPBUSD) and ARM's dot
    products accumulate in int32 and are exact."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return True  # unknown: assume the worst
    return not ({"avx512_vnni", "avx_vnni"} & set(flags.split()))


def query_levels() -> int:
    """The largest |int8| a query entry is quantised to (see `int8_sums_may_saturate`)."""
    return 64 if int8_sums_may_saturate() else 127


def _session_options() -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


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
    return ort.InferenceSession(model.SerializeToString(), _session_options(), providers=["CPUExecutionProvider"])


def _packed_product(rows_u8: np.ndarray) -> Any:
    """A 1-thread session computing (A - 128) @ q.T for uint8 queries A (Q, dim) (q8 + 128) and the int8 rows q
    of `rows_u8` (stored + 128), which ONNX Runtime receives as a constant and MLAS prepacks once."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    b = np.bitwise_xor(rows_u8, np.uint8(0x80)).view(np.int8)  # stored q + 128 -> q
    n, dim = b.shape
    weights = TensorProto(name="B", data_type=TensorProto.INT8, dims=[n, dim], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "in-memory"), ("offset", "0"), ("length", str(b.nbytes))):
        weights.external_data.add(key=key, value=value)  # replaced by the OrtValue below, never read from a file
    consts = [weights, numpy_helper.from_array(np.array(1.0, np.float32), "one"),
              numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
              numpy_helper.from_array(np.array(0, np.int8), "b_zero")]
    node = helper.make_node("QGemm", ["A", "one", "a_zero", "B", "one", "b_zero"], ["Y"], domain="com.microsoft",
                            transB=1)
    graph = helper.make_graph([node], "packed_int8_scores",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, ["queries", dim])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["queries", n])], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    so = _session_options()
    so.add_external_initializers(["B"], [ort.OrtValue.ortvalue_from_numpy(b)])
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


class ResidentRows:
    """The first `rows` int8 rows of an index packed into ONNX Runtime sessions (see `Index.load_resident`)."""

    def __init__(self, u8: np.ndarray, *, chunk_rows: int = 0, show_progress: bool = False) -> None:
        from tinyclap._util import progress

        chunk = chunk_rows or RESIDENT_CHUNK_ROWS
        self.rows = int(u8.shape[0])
        self.sessions: list[tuple[int, int, Any]] = []
        for a in progress(range(0, self.rows, chunk), desc="packing the int8 rows", unit="chunk",
                          enabled=show_progress):
            e = min(a + chunk, self.rows)
            self.sessions.append((a, e, _packed_product(np.asarray(u8[a:e]))))


def approximate_scores(u8: np.ndarray, scales: np.ndarray, queries: np.ndarray,
                       resident: ResidentRows | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(Q, rows) float32 approximate scores of the int8 rows (stored + 128 as uint8) against (Q, D) unit
    queries, and the L2 norms (Q,) of the queries' own rounding errors (they are quantised to int8 too; the
    bound accounts for it). Rows packed in `resident` are scored from there (the same exact integer sums),
    the rest streamed."""
    n, d = u8.shape
    levels = query_levels()
    q_scale = (np.abs(queries).max(axis=1) / float(levels)).astype(np.float32)  # (Q,)
    q8 = np.clip(np.rint(queries / q_scale[:, None]), -levels, levels).astype(np.int8)
    q_err = np.linalg.norm(queries.astype(np.float64) - q_scale[:, None].astype(np.float64) * q8, axis=1)
    out = np.empty((queries.shape[0], n), dtype=np.float32)
    done = 0
    if resident is not None and resident.rows <= n:
        a8 = np.bitwise_xor(q8.view(np.uint8), np.uint8(0x80))  # q8 + 128
        for a, e, packed in resident.sessions:
            y = packed.run(None, {"A": a8})[0]  # (Q, rows) float32 holding the exact int32 sums (< 2^24)
            np.multiply(y, scales[a:e], out=y)
            np.multiply(y, q_scale[:, None], out=out[:, a:e])  # rounded as the streamed path rounds
        done = resident.rows
    b = np.ascontiguousarray(q8.T)  # (D, Q)
    session = _int8_product(d)
    for a in range(done, n, CHUNK_ROWS):
        e = min(a + CHUNK_ROWS, n)
        y = session.run(None, {"A": np.asarray(u8[a:e]), "B": b})[0]  # (rows, Q) int32, exact (graph: - 128)
        np.multiply(y.T, scales[a:e], out=out[:, a:e], casting="unsafe")
        out[:, a:e] *= q_scale[:, None]
    return out, q_err


def bound_coefficients(queries: np.ndarray, q_err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta), each (Q,) float32: row r's bound on |approximate - exact| score is alpha * scale_r + beta.

    With the row x = scale_r x8 + d (|d_i| <= scale_r / 2) and the query q = scale_q q8 + e, the error is
    q . d + e . (scale_r x8): at most ||q||_1 scale_r / 2, plus (Cauchy-Schwarz) ||e||_2 ||scale_r x8||_2 <=
    ||e||_2 (1.001 + sqrt(D) scale_r / 2) for rows of norm <= 1.001; plus fp32 rounding (the margin, which also
    covers rounding alpha * scale_r + beta in fp32). ||e||_2 <= sqrt(D) scale_q / 2, typically ~0.6 of that."""
    d = queries.shape[1]
    alpha = 0.5 * np.abs(queries).astype(np.float64).sum(axis=1) + 0.5 * np.sqrt(d) * q_err
    beta = 1.001 * q_err + ROUNDING_MARGIN
    return alpha.astype(np.float32), beta.astype(np.float32)


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
    bound, edge = np.empty(n, np.float32), np.empty(n, np.float32)  # reused per query: no (Q, rows) temporaries
    for a in range(0, queries.shape[0], QUERY_BLOCK):
        block = queries[a : a + QUERY_BLOCK]
        scores, q_err = approximate_scores(u8, scales, block, index.resident)  # (Q, rows)
        alpha, beta = bound_coefficients(block, q_err)
        if dead is not None:
            scores[:, dead] = -np.inf  # so both of a dead row's bounds are -inf
        for j, q in enumerate(block):
            np.multiply(scales, alpha[j], out=bound)
            bound += beta[j]
            np.subtract(scores[j], bound, out=edge)  # lower bounds
            edge.partition(n - m)
            level = edge[n - m]  # the m-th largest lower bound
            np.add(scores[j], bound, out=edge)  # upper bounds
            cand = np.flatnonzero(edge >= level)
            exact = np.asarray(f16[cand], dtype=np.float32) @ q.astype(np.float32)
            _check_rescored(index, exact, scores[j][cand], bound[cand])
            top = np.argsort(-exact, kind="stable")[:m]
            results.append((cand[top], exact[top]))
    return results


def _check_rescored(index: Index, exact: np.ndarray, approx: np.ndarray, bound: np.ndarray) -> None:
    """The re-scored rows' fp16 scores must be finite and within the proven bound of their int8 scores:
    anything else means the matrix files were changed after they were written (IndexDamaged)."""
    if not (np.isfinite(exact).all() and (np.abs(exact - approx) <= bound).all()):
        from tinyclap.index.store import damaged

        raise damaged(index.folder, "a row's fp16 and int8 copies disagree beyond rounding")


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
                 dedupe: bool = True, approximate: bool = False, exclude: Iterable[str] = ()) -> list[list[Hit]]:
    """Top-`k` hits for each of (Q, D) queries (normalised here), none from the files `exclude` names;
    see `Index.search`."""
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
    left_out = index.file_ids(exclude)
    if left_out:
        live = live.copy()
        live[index.window_table()[0][np.isin(fids, left_out)]] = False
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
    ids = {fid for hits in found.values() for fid, *_ in hits}
    paths, labels = index.paths(ids), index.labels(ids)
    for qi in range(q.shape[0]):
        out.append([Hit(fid, paths[fid], st, en, sc, labels.get(fid)) for fid, st, en, sc in found[qi]])
    return out
