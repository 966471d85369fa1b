"""Evaluation: deterministic clip embedding, zero-shot metrics and reports, latent-space pruning.
"""

from tinyclap._util import lazy_exports

_EXPORTS = {
    "run_eval": ".evaluate",
    "evaluate": ".evaluate",
    "EvalReport": ".evaluate",
    "embed_dataset": ".evaluate",
    "embed_files": ".embedding",
    "embed_clip": ".embedding",
    "run_prune": ".prune",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
