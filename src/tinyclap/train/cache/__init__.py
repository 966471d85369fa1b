"""Distillation cache: fp16 log-mel crops + the frozen teacher's normalised embeddings, computed once.

tinyCLAP distils on audio only: the student learns to match the teacher's L2-normalised shared-space
embedding of the same 5 s crop. Decoding, resampling, the log-mel and the teacher are the expensive part
and never change between epochs, so `build_cache` (CLI: `tinyclap cache`) does them once and writes a
sharded, memory-mapped store; `CacheStore` / `CachedDataset` read it back with no decoding at all.

Store layout (`DIR` = the `--out` folder)
========================================

- `DIR/cache.json`: written first, before any shard::

      {"format": "tinyclap-cache/1",
       "teacher": {"kind", "path", "sha256", "sha256_of": "state_dict", "embed_dim", "sample_rate"},
       "frontend": LogMel().config(), "sample_rate": 44100, "clip_seconds": 5.0, "n_frames": 690,
       "n_mels": 64, "embed_dim": D, "crops_per_clip": K, "crop": "even" | "random",
       "val_fraction": f, "seed": s, "sources": [normalised specs]}

  plus, only for a cache built with `--views K` (K > 0), `"views": K` and `"view_augment"` (the ranges of
  `options.VIEW_AUGMENT`); a cache without views has exactly the cache.json (and identity) it always had.

  `sha256` hashes the teacher's state dict (tensor names, dtypes, shapes and bytes), so the same weights
  give the same identity whether they came from an official `.pth` or one of our checkpoints. A rerun into
  the same DIR with different settings (anything but `teacher.path`) is refused unless `overwrite=True`.
- `DIR/shards/r{rank:02d}-{idx:05d}/`: one finished shard, holding whole files only (a file's crops never
  straddle two shards), about `shard_size` rows:
  - `logmel.npy`: (n, 690, 64) float16, the student's log-mel (MS CLAP 2022 front end) of each crop;
  - `target.npy`: (n, D) float32, the teacher's L2-normalised embedding of the same crop;
  - `items.json`: one dict per row: `path` (absolute source path), `rel` (path relative to its source
    root, which seeds the split), `offset` (crop start in seconds), `crop` (index of the crop within its
    file), `split` ("train" | "val") and `file` (index of the file in that run's de-duplicated list); with
    views also `view` (0 = the clean crop, 1..K) and `aug` (null for view 0, else the view's draw: see below).
  A shard is written into `DIR/shards/.tmp-<name>-<pid>/` and renamed into place when complete, so a
  killed run loses at most the shard in flight; a rerun skips every file already in a finished shard
  (resume). A write error (disk full, permission denied) removes the temp folder and raises an OSError
  naming the shard. A finished shard that fails to open is moved aside to
  `DIR/shards/.corrupt-<name>-<time>/` and its files are computed again.
- `DIR/reports/r{rank:02d}.json` (each rank's last run) and `DIR/report.json` (their merge): files read,
  crops written, skipped files with the reason, stage timings and clips/s.

Crops, splits and ranks
=======================

Each unique source file (de-duplicated across specs by real path) is one item. A clip longer than 5 s at
44.1 kHz yields up to K = `crops_per_clip` non-overlapping crops (never more than fit): evenly spread
("even", deterministic; K = 1 is the centre crop, as `fit_clip(policy="eval")`) or at seeded random
non-overlapping offsets ("random", seeded by the seed and the file's `rel`, so reruns agree). Shorter clips
give one crop zero-padded at the end. The teacher sees the SAME crop (same start and duration): the
44.1 kHz crop itself, or that crop resampled with soxr to `teacher.sample_rate`.

The validation split is by source file: a file is "val" when the first 8 bytes of
sha256(f"{seed}:{rel}") read as a fraction fall below `val_fraction`, where `rel` is the file's path
relative to its spec's root (a folder spec: the folder; a manifest or dataset file: its folder; a single
file: its folder; a file outside that root: "<parent folder name>/<file name>"), so the split is stable
across reruns and machines. Under torchrun (`RANK`/`WORLD_SIZE`) rank r takes the files i with
i % world == r and writes its own `r{r}` shards; a gloo process group is created only when WORLD_SIZE > 1.

Augmented views (`--views K`)
============================

Every (file, crop) keeps its clean row (view 0: the same crop, log-mel, target and split as without views)
and, for a train-split file, gets K more rows right after it, views 1..K: each an augmented version of that
crop **with the teacher's embedding of exactly that augmented waveform** (the teacher sees what the student
sees). The augmentations are random crop/shift (50-100 % of the crop's audible length at a random offset of
the 5 s window, the rest zero), gain (-12..+6 dB, clipped to [-1, 1]) and, with probability 0.5, mixup with
the centre 5 s of a partner clip drawn from the train-split files of the same source list (lam 0.1..0.5,
peak-normalised if it clips); the ranges are `options.VIEW_AUGMENT`, the draw is `views` (seeded by the
cache seed, the file's `rel`, the crop and the view, so independent of workers, ranks and resumes), and
each row's `aug` record reproduces it (`views.apply_view`). Validation-split files get no views, so
validation cosines are comparable across caches. A views build computes files in fixed blocks of
max(1, batch_size // (crops_per_clip * (K + 1))) consecutive files of the rank's list and writes shards of
whole blocks, so every batch, and therefore every stored float, is the same whether the build ran once or
was killed and resumed (two builds give identical shard bytes). The clean rows' values equal a plain
cache's up to float rounding (the teacher batches them with other rows). `CacheStore.views` is K,
`CacheStore.row_views` the view of each row; `CachedDataset(..., views=True)` draws one row of each
(file, crop) per access, `views=False` (the default) reads the clean rows only. SpecAugment-style masking is
not in the cache: it is applied to the student's log-mel only, in training (`tinyclap.train.targets`).

A cache may also hold a **text bank** (`text_bank.npy` + `text_bank.json`: the teacher's text embeddings of a
vocabulary, for the text-anchored KL term, `tinyclap distill --kl-weight`), added by `tinyclap cache --text-bank`
or later by `--add-text-bank` without touching the audio: see `tinyclap.train.cache.textbank`.

Modules: `store` reads (CacheStore, CachedDataset, read_config; the only part a training run imports),
`sources` lists and decodes the inputs (specs, crops, split), `views` draws and applies augmented views,
`write` does the build's disk work (folder check, shards, reports, lock) and `build` runs it (`build_cache`).
Every public name is importable from `tinyclap.train.cache`.

The log-mel is computed with `tinyclap.audio.frontend.FFTLogMel`, the FFT form of `LogMel` (the conv1d DFT kept
for ONNX export): the same values up to float rounding (<= 1e-3 dB above -90 dB, ~1e-2 dB near the -100 dB floor)
for several times less CPU, which matters here because the cache runs the front end over a whole corpus.
"""

from tinyclap._util import lazy_exports

_EXPORTS = {  # module -> the names it provides
    ".options": "CROP_MODES VIEW_AUGMENT VIEW_MAX CacheOptions",
    ".views": "apply_view centre_clip draw_view file_views view_rng",
    ".store": "FORMAT SPLITS CacheError CacheStore CachedDataset read_config shard_name random_crop_start",
    ".sources": "crop_starts split_of SourceFile resolve_sources",
    ".write": "CacheReport",
    ".build": "build_cache",
    ".textbank": "CLASS_SETS add_text_bank build_text_bank default_vocabulary exclusion_names read_text_bank",
}
__all__ = sorted(n for names in _EXPORTS.values() for n in names.split())
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
