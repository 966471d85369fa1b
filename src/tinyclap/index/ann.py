"""An optional approximate index (FAISS HNSW) over an index's rows, for collections where exact search is
too slow: `tinyclap embed --ann` builds it, `tinyclap search --approximate` uses it.

Why FAISS: the most widely used and actively maintained vector-search library (faiss-cpu wheels for every
platform on PyPI), with HNSW for inner products; it is an optional extra (`pip install tinyclap[ann]`),
never a run-time dependency. The HNSW graph gives candidate rows; they are re-scored exactly from the fp16
matrix, so scores are exact and only recall can be lower (measured in `bench/search_latency.py --ann`).
The graph covers the rows committed when it was built (`ann.json`); after a rerun of `embed` changes the
index, it is stale and search refuses it until `embed --ann` rebuilds it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyclap._util import atomic_write_text, read_json

if TYPE_CHECKING:
    from tinyclap.index.store import Index

__all__ = ["ANN_FILE", "ann_top", "build_ann"]

ANN_FILE = "ann.faiss"
ANN_META = "ann.json"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise ValueError("the approximate index needs FAISS: pip install faiss-cpu (or tinyclap[ann])") from e
    return faiss


def build_ann(index: Index, *, m: int = 32, ef_construction: int = 80, chunk: int = 65536) -> Path:
    """Build the HNSW graph over the index's live rows (fp16 -> fp32 in chunks) and save it atomically."""
    faiss = _faiss()
    live, _ = index.row_lookup()
    rows = np.flatnonzero(live)
    graph = faiss.IndexHNSWFlat(index.embed_dim, m, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = ef_construction
    ann = faiss.IndexIDMap2(graph)
    f16 = index.matrices()["f16"]
    for a in range(0, rows.size, chunk):
        r = rows[a : a + chunk]
        ann.add_with_ids(np.ascontiguousarray(f16[r], dtype=np.float32), r.astype(np.int64))
    path = index.folder / ANN_FILE
    tmp = index.folder / f".{ANN_FILE}.{os.getpid()}.tmp"
    faiss.write_index(ann, str(tmp))
    os.replace(tmp, path)
    meta = {"rows": index.rows, "windows": int(rows.size), "m": m, "ef_construction": ef_construction}
    atomic_write_text(index.folder / ANN_META, json.dumps(meta) + "\n")
    return path


def _load(index: Index) -> Any:
    if "ann" in index.cache:
        return index.cache["ann"]
    faiss = _faiss()
    meta_path, path = index.folder / ANN_META, index.folder / ANN_FILE
    if not path.is_file() or not meta_path.is_file():
        raise ValueError(f"{index.folder}: no approximate index; build it with `tinyclap embed ... --ann`")
    meta = read_json(meta_path)  # JSONFileError (a ValueError) naming the file
    if meta.get("rows") != index.rows or meta.get("windows") != len(index):
        raise ValueError(f"{path}: stale (built for {meta.get('windows')} windows, the index has {len(index)}); "
                         "rebuild it with `tinyclap embed ... --ann`")
    ann = faiss.read_index(str(path))
    index.cache["ann"] = ann
    return ann


def ann_top(index: Index, queries: np.ndarray, m: int, live: np.ndarray, ef_search: int | None = None
            ) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """For each query: (rows, exact fp16 scores) of the best of the graph's `m` candidates, best first."""
    ann = _load(index)
    faiss = _faiss()
    graph = faiss.downcast_index(ann.index)
    graph.hnsw.efSearch = max(ef_search or 0, 2 * m, 64)
    _, ids = ann.search(np.ascontiguousarray(queries, dtype=np.float32), m)
    f16 = index.matrices()["f16"]
    out = []
    for q, r in zip(queries, ids):
        r = r[(r >= 0) & (r < live.size)]
        r = r[live[r]]
        exact = np.asarray(f16[np.sort(r)], dtype=np.float32) @ q.astype(np.float32)
        r = np.sort(r)
        top = np.argsort(-exact, kind="stable")[:m]
        out.append((r[top], exact[top]))
    return out
