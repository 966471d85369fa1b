"""Receiving an upload safely: a streaming multipart reader with a size limit, and content sniffing.

The request body is read chunk by chunk (`request.stream()`) into python-multipart's push parser, never
held whole: a declared Content-Length over the limit is refused before one byte is read, and a body that
grows past it is refused the moment it does (HTTP 413), with the rest left unread. The audio part goes
straight to a file in the request's private temporary folder; text fields are kept only up to 64 KB.
Its first bytes are sniffed (`sniff_audio`): the file name and the declared content type are not trusted.
The audio is taken from a field named `audio` or `file`; a file part under any other name is refused (400,
naming the fields). The boundary must be RFC 2046's (1-70 characters of its set), and the body must end with
its closing boundary (a truncated form is refused, 400). Read deadlines are the connection's
(`tinyclap.serve.protocol`); a client dropped by one ends the request here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import ClientDisconnect

from tinyclap.serve.limits import ApiError

MAX_FIELD_BYTES = 64 * 1024
SNIFF_BYTES = 12
FILE_FIELDS = ("audio", "file")  # the form fields that carry the audio
# RFC 2046 section 5.1.1: 1-70 characters, these only, not ending in a space
BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")

# (magic at offset 0, extra check, name); libsndfile decodes all of these
_MAGIC: list[tuple[bytes, Any, str]] = [
    (b"RIFF", lambda h: h[8:12] == b"WAVE", "WAV"),
    (b"RF64", lambda h: h[8:12] == b"WAVE", "WAV (RF64)"),
    (b"BW64", lambda h: h[8:12] == b"WAVE", "WAV (BW64)"),
    (b"riff", lambda h: True, "Wave64"),
    (b"fLaC", lambda h: True, "FLAC"),
    (b"OggS", lambda h: True, "Ogg"),
    (b"FORM", lambda h: h[8:12] in (b"AIFF", b"AIFC"), "AIFF"),
    (b".snd", lambda h: True, "AU"),
    (b"caff", lambda h: True, "CAF"),
    (b"ID3", lambda h: True, "MP3"),
]
# recognised but not decodable here: named, so the message can say what the file is
_UNSUPPORTED: list[tuple[bytes, int, str]] = [
    (b"\x1a\x45\xdf\xa3", 0, "WebM/Matroska"),
    (b"ftyp", 4, "MP4/M4A"),
    (b"%PDF", 0, "PDF"),
    (b"\x89PNG", 0, "PNG"),
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"PK\x03\x04", 0, "ZIP"),
]


def sniff_audio(head: bytes) -> str:
    """The audio format the first bytes show (e.g. 'WAV', 'MP3'), or ApiError(415) naming what it is."""
    if not head:
        raise ApiError(400, "empty upload: the audio file has 0 bytes")
    for magic, check, name in _MAGIC:
        if head.startswith(magic) and check(head):
            return name
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0 and (head[1] & 0x06):
        return "MP3"  # an MPEG audio frame sync (layer bits not 00)
    for magic, offset, name in _UNSUPPORTED:
        if head[offset:offset + len(magic)] == magic:
            raise ApiError(415, f"unsupported audio format: the content is {name}; send WAV, FLAC, Ogg, MP3 or AIFF")
    raise ApiError(415, "not a recognised audio file (content sniffed, the file name is not trusted): send WAV, "
                        "FLAC, Ogg, MP3 or AIFF")


@dataclass
class Upload:
    """What a multipart request carried: text fields, and the audio part saved at `path` (None if absent)."""

    fields: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    filename: str = ""
    size: int = 0
    format: str = ""


class _Collector:
    """python-multipart callbacks: headers of each part, audio data to a file, small fields to memory."""

    def __init__(self, folder: Path, file_fields: tuple[str, ...]) -> None:
        self.folder = folder
        self.file_fields = file_fields
        self.upload = Upload()
        self._headers: dict[bytes, bytes] = {}
        self._hname = self._hvalue = b""
        self._name = ""
        self._is_file = False
        self._buf = bytearray()
        self._fd: int | None = None
        self._head = b""
        self.error: ApiError | None = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._hname.lower()] = self._hvalue
        self._hname = self._hvalue = b""

    def on_headers_finished(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = opts.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = self._name in self.file_fields
        if not self._is_file and b"filename" in opts and self.error is None:
            fields = " or ".join(repr(f) for f in self.file_fields)
            self.error = ApiError(400, f"unexpected file field {self._name[:50]!r}: send the audio in a form "
                                       f"field named {fields}")
            return
        if self._is_file:
            if self.upload.path is not None:
                self.error = ApiError(400, "more than one audio part in the request (fields "
                                           f"{' or '.join(repr(f) for f in self.file_fields)})")
                return
            self.upload.filename = opts.get(b"filename", b"").decode("utf-8", "replace")[:200]
            self.upload.path = self.folder / "upload.audio"
            self._fd = os.open(self.upload.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:  # the first error is the one answered; the rest is not kept
            return
        chunk = data[start:end]
        if not self._is_file:
            self._buf += chunk
            if len(self._buf) > MAX_FIELD_BYTES:
                fields = " or ".join(repr(f) for f in self.file_fields)
                self.error = ApiError(413, f"form field {self._name[:50]!r} is over {MAX_FIELD_BYTES} bytes (a text "
                                           f"field; the audio goes in a field named {fields})")
            return
        if len(self._head) < SNIFF_BYTES:
            self._head += chunk[: SNIFF_BYTES - len(self._head)]
            if len(self._head) >= SNIFF_BYTES and not self.upload.format:
                self._sniff()
        if self._fd is not None and self.error is None:
            os.write(self._fd, chunk)
            self.upload.size += len(chunk)

    def _sniff(self) -> None:
        try:
            self.upload.format = sniff_audio(self._head)
        except ApiError as e:
            self.error = e

    def on_part_end(self) -> None:
        if self._is_file:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if not self.upload.format and self.error is None:
                self._sniff()  # shorter than SNIFF_BYTES
        elif self._name:
            self.upload.fields[self._name] = self._buf.decode("utf-8", "replace")
        self._headers, self._buf, self._is_file = {}, bytearray(), False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _boundary(content_type: str) -> bytes:
    ctype, opts = parse_options_header(content_type)
    if ctype != b"multipart/form-data" or not opts.get(b"boundary"):
        raise ApiError(415, "send the audio as multipart/form-data (a form with an 'audio' file field)")
    boundary = opts[b"boundary"]
    if not BOUNDARY.fullmatch(boundary):
        raise ApiError(400, f"malformed multipart boundary ({len(boundary)} characters): RFC 2046 allows 1 to 70 "
                            "letters, digits and '()+_,-./:=? ")
    return boundary


async def receive_upload(request: Any, folder: Path, max_bytes: int,
                         file_fields: tuple[str, ...] = FILE_FIELDS) -> Upload:
    """Stream a multipart request into `folder` (the request's private temp folder), enforcing `max_bytes`.

    Raises ApiError: 413 when the declared or actual body exceeds `max_bytes` (the rest is not read), 415
    for a body that is not multipart or an audio part whose content is not audio, 400 for a malformed or
    truncated form (or a client dropped by a read deadline: nobody reads that answer).
    """
    boundary = _boundary(request.headers.get("content-type", ""))
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"upload too large: {int(declared):,} bytes declared, the limit is {max_bytes:,}")
    col = _Collector(folder, file_fields)
    cb = {name: getattr(col, name) for name in ("on_header_field", "on_header_value", "on_header_end",
                                                 "on_headers_finished", "on_part_data", "on_part_end")}
    parser = MultipartParser(boundary, cb)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise ApiError(413, f"upload too large: over the limit of {max_bytes:,} bytes (reading stopped)")
            try:
                parser.write(chunk)
            except Exception as e:  # python-multipart's MultipartParseError and friends
                raise ApiError(400, f"malformed multipart body ({type(e).__name__}: {e})") from None
            if col.error is not None:
                raise col.error
        parser.finalize()
    except ClientDisconnect:
        raise ApiError(400, "the client went away (or was dropped by a read deadline) before the body ended") from None
    finally:
        col.close()
    if col.error is not None:
        raise col.error
    if parser.state != MultipartState.END:
        raise ApiError(400, "truncated multipart body: it ends without its closing boundary")
    return col.upload
