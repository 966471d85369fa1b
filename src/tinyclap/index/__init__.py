"""Your own audio, indexed: `tinyclap embed` writes an index folder, `tinyclap search` queries it.

- `store`: the folder (SQLite files/windows tables + append-only fp16 and int8 matrices, manifest), `Index`,
  `Hit`; crash-safe appends.
- `build`: `embed_sources` (incremental, resumable, worker threads, torchrun ranks).
- `search`: exact top-k (int8 first pass with a proven error bound, exact fp16 re-rank), merging of
  adjacent windows of one file.
- `query`: `text_query` (the teacher's text tower) and `audio_query` (the index's own model).
- `model`: the index's audio model; an export folder runs on ONNX Runtime without torch.

Importing this package (and opening and searching an index) imports no torch.
"""

from tinyclap._util import lazy_exports

_EXPORTS = {
    ".store": "Index Hit IndexDamaged IndexFolderError FileRecord",
    ".build": "EmbedReport embed_sources list_sources",
    ".query": "audio_query text_query",
    ".model": "IndexModel load_index_model",
}
__all__ = sorted(n for names in _EXPORTS.values() for n in names.split())
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
