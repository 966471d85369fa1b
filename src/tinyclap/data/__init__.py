"""Data: labelled evaluation sets (ESC-50, UrbanSound8K, TUT17, CSV), distillation sources, the spec grammar.
"""

from tinyclap._util import lazy_exports

_EXPORTS = {
    "AUDIO_EXTENSIONS": ".datasets",
    "DATASET_NAMES": ".datasets",
    "DATA_KINDS": ".datasets",
    "DatasetError": ".datasets",
    "load_dataset": ".datasets",
    "parse_data_spec": ".datasets",
    "list_audio_files": ".datasets",
    "LabelledDataset": ".datasets",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
