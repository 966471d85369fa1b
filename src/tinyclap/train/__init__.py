"""Training: the teacher-target cache (`cache`) and distillation (`distill`: config, targets, loop, state,
metrics, dist).
"""

from tinyclap._util import lazy_exports

_EXPORTS = {  # module -> the names it provides
    ".cache": "build_cache CacheStore CachedDataset CacheError",
    ".config": "DistillConfig StageOptions",
    ".distill": "distill RunResult",
    ".loop": "train_stage train_step",
    ".state": "StageResult read_stage_result",
}
__all__ = sorted(n for names in _EXPORTS.values() for n in names.split())
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
