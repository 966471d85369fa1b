"""Training: the teacher-target cache (`cache`) and distillation (`distill`).
"""

from tinyclap._util import lazy_exports

_EXPORTS = {
    "build_cache": ".cache",
    "CacheStore": ".cache",
    "CachedDataset": ".cache",
    "CacheError": ".cache",
    "DistillConfig": ".distill",
    "distill": ".distill",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
