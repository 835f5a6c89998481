"""The S3-like content host: signed URLs, byte ranges and file bodies.

* ``ContentSigner`` makes ``/_content/{file_id}?Expires=<unix>&Signature=<hex>`` URLs, where the
  signature is HMAC-SHA256 of ``"{file_id}:{expires}"`` with a per-process random secret (so a
  URL stops working when the emulator restarts, like a real presigned URL eventually does).
* ``parse_range`` implements single-range ``Range`` semantics as S3 does (multi-range and
  malformed headers are ignored, i.e. the whole object is sent).
* ``file_response``: a file's bytes with S3's headers, ``206``/``416`` for ranges; the one answer
  of both the signed content URLs (app.py) and the plain HTTP tree (http_listing.py).
* ``file_body`` produces the bytes lazily in ~1 MiB pieces: file bytes with ``os.pread`` in a
  worker thread, synthetic bytes computed on the fly.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from email.utils import formatdate
from typing import AsyncIterator, Callable
from urllib.parse import quote

from ..blocking import RunBlocking, in_worker_thread

from .account import FileEntry
from .responses import PIECE, StreamResponse, xml_response
from .synthetic import synthetic_bytes

__all__ = ["ContentSigner", "parse_range", "file_body", "file_response"]


class ContentSigner:
    """Signs content URLs with an ``Expires`` in epoch seconds of ``clock`` (time.time; a test
    on trio's MockClock passes a clock that runs with it, so expiry costs no wall time)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._secret = secrets.token_bytes(32)
        self._clock = clock

    def signature(self, file_id: str, expires: int) -> str:
        return hmac.new(self._secret, f"{file_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, base_url: str, file_id: str, lifetime: float) -> tuple[str, int]:
        expires = int(self._clock() + lifetime)
        return f"{base_url}_content/{file_id}?Expires={expires}&Signature={self.signature(file_id, expires)}", expires

    def check(self, file_id: str, expires: str | None, signature: str | None) -> str | None:
        """None if valid, else the S3-style error message."""
        if not expires or not signature:
            return "Query-string authentication requires the Signature and Expires parameters"
        try:
            expires_at = int(expires)
        except ValueError:
            return "Invalid date (should be seconds since epoch)"
        if not hmac.compare_digest(self.signature(file_id, expires_at), signature):
            return "The request signature we calculated does not match the signature you provided."
        if expires_at < self._clock():
            return "Request has expired"
        return None


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """(start, end_exclusive) for a satisfiable single range; None = send the whole object;
    "unsatisfiable" = answer 416."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    if not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "":
            return None
        n = int(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size
    start = int(first)
    if last != "" and int(last) < start:
        return None  # syntactically invalid: ignored (RFC 9110)
    if start >= size:
        return "unsatisfiable"
    end = size if last == "" else min(size, int(last) + 1)
    return start, end


def content_disposition(name: str) -> str:
    """``attachment;filename="NAME"`` as the real content host sends it; a name that is not
    plain ASCII also gets the RFC 5987 ``filename*`` form (headers must stay Latin-1)."""
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    value = f'attachment;filename="{ascii_name}"'
    if ascii_name != name:
        value += "; filename*=UTF-8''" + quote(name.encode("utf-8", "surrogateescape"), safe="")
    return value


def file_body(entry: FileEntry, start: int, end: int, run_blocking: RunBlocking = in_worker_thread) -> Callable[[], AsyncIterator[bytes]]:
    """A factory of the byte pieces of ``entry[start:end]`` (opened only when streaming starts);
    files on disk are read through ``run_blocking`` (``basemount_py.blocking``)."""

    async def synthetic() -> AsyncIterator[bytes]:
        pos = start
        while pos < end:
            n = min(PIECE, end - pos)
            yield synthetic_bytes(entry.seed or 0, pos, n)
            pos += n

    async def disk() -> AsyncIterator[bytes]:
        assert entry.disk_path is not None
        fd = await run_blocking(os.open, entry.disk_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            pos = start
            while pos < end:
                piece = await run_blocking(os.pread, fd, min(PIECE, end - pos), pos)
                if not piece:
                    # the file shrank on disk since the account was loaded
                    raise OSError(f"file {entry.id} is shorter on disk than its recorded size")
                yield piece
                pos += len(piece)
        finally:
            os.close(fd)

    return synthetic if entry.seed is not None else disk


def file_response(
    entry: FileEntry,
    range_header: str | None,
    on_bytes: Callable[[int], None],
    *,
    attachment: bool = False,
    run_blocking: RunBlocking = in_worker_thread,
) -> StreamResponse:
    """``entry``'s bytes as S3 sends them: ``Range`` -> 206 with ``Content-Range``, an unsatisfiable
    range -> 416 (an XML error that still carries the object's headers), else 200. ``attachment``
    adds the ``Content-Disposition`` of signed content URLs."""
    headers = {
        "Content-Type": entry.content_type,
        "Accept-Ranges": "bytes",
        "ETag": f'"{entry.etag}"',
        "Last-Modified": formatdate(int(entry.mtime), usegmt=True),
    }
    if attachment:
        headers["Content-Disposition"] = content_disposition(entry.name)
    rng = parse_range(range_header, entry.size)
    if rng == "unsatisfiable":
        headers["Content-Range"] = f"bytes */{entry.size}"
        del headers["Content-Type"]
        return xml_response(416, "InvalidRange", "The requested range is not satisfiable", headers)
    status, start, end = 200, 0, entry.size
    if isinstance(rng, tuple):
        status, (start, end) = 206, rng
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry.size}"
    return StreamResponse(status, headers, file_body(entry, start, end, run_blocking), length=end - start, on_bytes=on_bytes)
