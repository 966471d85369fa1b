"""Evaluation: deterministic clip embedding and its cache (`embedding`), zero-shot metrics and plots
(`metrics`), the evaluation run and the class-prompt side (`run`), latent-space pruning (`prune`).
"""

from tinyclap._util import lazy_exports

_EXPORTS = {  # module -> the names it provides
    ".run": "run_eval build_classifier read_templates resolve_text_model",
    ".metrics": "evaluate EvalReport save_confusion_png",
    ".embedding": "embed_dataset embed_files embed_clip Embedded default_cache_dir",
    ".prune": "run_prune",
}
__all__ = sorted(n for names in _EXPORTS.values() for n in names.split())
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
