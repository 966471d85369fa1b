"""Data: labelled evaluation sets (ESC-50, UrbanSound8K, TUT17, CSV), distillation sources, the spec grammar.

Nothing here decodes audio or imports torch: readers turn official metadata files into lists of paths
(and labels), check that the audio exists, and report what is missing instead of crashing on it.

* `files`: the one list of audio extensions, folder scans, CSV reading, missing-file reports;
* `labelled`: `load_dataset("esc50" | "esc10" | "us8k" | "tut17" | "csv", root)` -> `LabelledDataset`
  (`classes` in class-index order, `items` of `Item(path, label, fold)`, `folds`, `missing`);
* `sources`: distillation sources (`list_audio_files(kind, path)`): one sorted, de-duplicated path per
  audio file, however many captions or labels it has;
* `spec`: the one command-line grammar `KIND:PATH#folds=..&limit=..&subset=..` (`parse_dataset_spec`
  for a labelled dataset, `parse_data_spec` for a source's audio files).

Accepted layouts
================

The section below is Markdown, kept verbatim in `docs/data_layouts.md` (a test checks they match).

<!-- data-layouts:start -->
## Evaluation datasets: `load_dataset(name, root, **kw)`

Every reader takes the dataset folder as `root` (or, where noted, its parent) and reads only the files
listed here. Each listed audio file is resolved as written or, failing that, as the file with the same stem
and another audio extension (`AUDIO_EXTENSIONS`: `.wav .flac .ogg .mp3 .aiff .aif .au .oga .opus .w64
.caf`, any case) in the same folder. Rows
whose audio is absent go to `dataset.missing` (with a `DatasetWarning`), never into `items`. A missing
metadata file, a missing column or a malformed value raises `DatasetError` naming the file (and line).
`folds=[...]` keeps only those folds; `classes` never depend on `folds`, so label indices stay stable.

- **`esc50`** (ESC-50): `meta/esc50.csv` with columns `filename,fold,target,category` (the official file
  also has `esc10,src_file,take`) and `audio/<filename>`. `root` may be the folder holding
  `ESC-50-master/`. Classes: the 50 `category` names ordered by `target`. Folds: the `fold` column (1-5).
- **`esc10`** (= `esc50` with `esc10=True`): the rows whose `esc10` column is `True`; classes: the 10
  ESC-10 categories ordered by their ESC-50 `target`, re-indexed 0-9.
- **`us8k`** (UrbanSound8K): `metadata/UrbanSound8K.csv` with columns `slice_file_name,fold,classID,class`
  (the official file also has `fsID,start,end,salience`) and `audio/fold<fold>/<slice_file_name>`. `root`
  may be the folder holding `UrbanSound8K/`. Classes: the 10 `class` names ordered by `classID`. Folds:
  the `fold` column (1-10). Rows of folds that are not on disk are reported in `missing`.
- **`tut17`** (TUT Acoustic Scenes 2017, DCASE 2017 task 1): development set (folds 1-4) or evaluation
  set (fold 1), see below. Classes: the 15 scenes in alphabetical order (`TUT17_CLASSES`): beach, bus,
  cafe/restaurant, car, city_center, forest_path, grocery_store, home, library, metro_station, office,
  park, residential_area, train, tram.
- **`csv`** (generic): `root` is a comma-separated UTF-8 file (a BOM is fine) with a header row and
  columns `path,label`, optionally `fold` (an integer or empty); extra columns are ignored. `path` is
  relative to the CSV's folder unless absolute; `label` is the class name (surrounding whitespace
  stripped, never empty). Classes: the sorted unique labels, or the order of the `classes=[...]`
  argument (a label not in it is an error). Folds: the `fold` column, else none.

Class indices: ESC-50 and US8K labels are the position of the row's `target`/`classID` among the ids in
the whole CSV, i.e. the id itself for the official files. The reference tinyCLAP code sorted ESC-50 class
names alphabetically instead; zero-shot accuracy does not depend on the order.

Prompts: `LabelledDataset.class_names_for_prompts()` turns underscores into spaces for every dataset. The
reference tinyCLAP code did so for ESC-50 and TUT17 but kept the underscores for UrbanSound8K ("this is
the sound of air_conditioner"); we deliberately do not.

### TUT Acoustic Scenes 2017 (`tut17`, `subset="auto" | "development" | "evaluation"`)

- A dataset folder is one holding `meta.txt` and/or `evaluation_setup/`. It is the development set when
  it has `evaluation_setup/fold<k>_*.txt` lists, else the evaluation set. `root` may be that folder or a
  parent holding `TUT-acoustic-scenes-2017-development/` and/or `TUT-acoustic-scenes-2017-evaluation/`
  (`subset="auto"` refuses a parent holding both), merged or as multi-part extractions such as
  `TUT-acoustic-scenes-2017-development.meta/TUT-acoustic-scenes-2017-development/meta.txt` and
  `TUT-acoustic-scenes-2017-development.audio.1/TUT-acoustic-scenes-2017-development/audio/...`: an
  audio file not at `<dataset folder>/audio/<file>` is searched by name in the dataset folder and in every
  `TUT-acoustic-scenes-2017-<subset>*` folder under `root`.
- List files are tab-separated (whitespace-separated if a line has no tab), one clip per line, paths
  relative to the dataset folder (`audio/<file>.wav`). Blank lines and a first line whose first field is
  `filename` (a header) are skipped. Scene labels must be one of the 15 names above.
- `meta.txt`: `audio/<file>.wav<TAB><scene>[<TAB><recording id>]`.
- Development set: fold *k* is the clips of `evaluation_setup/fold<k>_evaluate.txt`
  (`audio/<file>.wav<TAB><scene>`), the official 4-fold cross-validation, so every clip is in exactly
  one fold. A fold without an evaluate list falls back to `fold<k>_test.txt` (paths only). Labels missing
  from a list come from `meta.txt`; a label contradicting `meta.txt`, or a clip in two folds, is an
  error. `fold<k>_train.txt` lists are not read (each is the complement of its evaluate list).
- Evaluation set (one fold, numbered 1): labels from `meta.txt`, else from
  `evaluation_setup/evaluate.txt` (`audio/<file>.wav<TAB><scene>`). `evaluation_setup/test.txt` has no
  labels, so a folder with only that is an error (the labels came out later, in the
  `TUT-acoustic-scenes-2017-evaluation.meta.zip` package).
- The reference tinyCLAP code read a tab-separated `evaluate.txt` with a `filename<TAB>class` header and
  ordered the classes by first appearance; such a file is accepted as the evaluation set's `meta.txt` or
  `evaluation_setup/evaluate.txt` (classes keep the alphabetical order).

## Distillation sources: `parse_data_spec("KIND:PATH")`, `list_audio_files(kind, path)`

A spec is `KIND:PATH` or a bare `PATH` (a folder is scanned recursively, a file is read as a manifest),
optionally followed by `#folds=1,2&limit=N&subset=S` (the one dataset grammar, `tinyclap.data.spec`:
`folds`/`subset` select clips of a labelled dataset, `limit` keeps an evenly spread subset).
A source yields the sorted absolute paths of its audio files that exist, one per real file (captions,
labels and links to the same file do not multiply items); listed files missing on disk are left out with
a `DatasetWarning` (pass `missing_out=[]` to the functions to collect them). A spec that yields no audio
is an error. A prefix that is not a kind is part of the path (`C:/data` stays a path).

- **`audiocaps:DIR`** (`audiocaps_files(root, splits=("train",))`): `<split>.csv` for each split
  (`train`, `val`, `test` or `"all"`; the spec reads `train` only), column `youtube_id` (official columns
  `audiocap_id,youtube_id,start_time,caption`: several captions per clip, one item); audio at
  `<split>/<youtube_id>.wav` (or `Y<youtube_id>`, any audio extension).
- **`clotho:DIR`** (`clotho_files(root, splits=("development",))`): `clotho_captions_<split>.csv` for
  each split (`development`, `validation`, `evaluation` or `"all"`; the spec reads `development` only),
  column `file_name` (official `file_name,caption_1..caption_5`); audio in the first existing folder of
  `<split>/`, `clotho_audio_<split>/`, `data/` (the reference code's layout).
- **`macs:DIR`** or **`macs:DIR/MACS.yaml`** (`macs_files(root)`): `MACS.yaml`, a mapping whose `files:`
  list holds entries with `filename:` (and `annotations:` with `sentence`/`tags`/`annotator_id`, not
  needed here). Audio (TAU Urban Acoustic Scenes 2019 development clips) at `audio/<filename>`, else found
  by name anywhere under the folder (e.g. `TAU-urban-acoustic-scenes-2019-development/audio/`).
- **`fsd50k:DIR`** (`fsd50k_files(root, include_eval=False)`): `FSD50K.ground_truth/dev.csv`, column
  `fname` (official `fname,labels,mids,split`: both the train and val splits are used), audio at
  `FSD50K.dev_audio/<fname>.wav`; with `include_eval=True` also `FSD50K.ground_truth/eval.csv` and
  `FSD50K.eval_audio/`.
- **`folder:DIR`** or a bare folder (`scan_audio_folder(root)`): every file with an audio extension (any
  case), recursively, following links (each folder once), skipping hidden files and folders.
- **`manifest:FILE`** or a bare file (`manifest_files(path)`): a `.csv` (or tab-separated `.tsv`) with a
  `path` column, or any other text file with one path per line (blank lines and lines starting with `#`
  skipped). Relative paths resolve against the manifest's folder.
- **`esc50:DIR`**, **`us8k:DIR`**, **`tut17:DIR`**, **`csv:FILE`**: the item paths of that evaluation
  dataset read as above (labels ignored).
<!-- data-layouts:end -->
"""

from tinyclap._util import lazy_exports

_EXPORTS = {  # module -> the names it provides
    ".files": "AUDIO_EXTENSIONS DatasetError DatasetWarning",
    ".labelled": "DATASET_NAMES TUT17_CLASSES Item LabelledDataset load_csv_dataset load_dataset load_esc50 "
    "load_tut17 load_us8k",
    ".sources": "DATA_KINDS audiocaps_files clotho_files fsd50k_files list_audio_files macs_files manifest_files "
    "scan_audio_folder",
    ".spec": "DatasetSpec limit_dataset load_eval_dataset parse_data_spec parse_dataset_spec spread",
}
__all__ = sorted(n for names in _EXPORTS.values() for n in names.split())
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
