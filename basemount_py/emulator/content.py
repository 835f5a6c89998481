"""The S3-like content host: signed URLs, byte ranges and the streaming response.

* ``ContentSigner`` makes ``/_content/{file_id}?Expires=<unix>&Signature=<hex>`` URLs, where the
  signature is HMAC-SHA256 of ``"{file_id}:{expires}"`` with a per-process random secret (so a
  URL stops working when the emulator restarts, like a real presigned URL eventually does).
* ``parse_range`` implements single-range ``Range`` semantics as S3 does (multi-range and
  malformed headers are ignored, i.e. the whole object is sent).
* ``StreamResponse`` is the one ASGI response used for *every* emulator answer (JSON included),
  because faults (reset, truncate, stall) and the per-connection bandwidth cap act on the body
  stream.  Bodies are produced lazily in ~1 MiB pieces: file bytes with ``os.pread`` in a
  worker thread, synthetic bytes computed on the fly, so memory stays flat whatever the size;
  uvicorn's flow control makes ``send`` wait while the client is slow.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import socket
import struct
import time
from typing import AsyncIterator, Callable
from urllib.parse import quote

from .account import FileEntry
from .synthetic import synthetic_bytes

__all__ = ["ContentSigner", "parse_range", "StreamResponse", "file_body", "xml_error", "TRANSPORTS"]

log = logging.getLogger("basemount_py.emulator")

PIECE = 1024 * 1024

# Connection transports by client address, filled by server.py's protocol class, so a "reset"
# fault can send a real TCP RST.  Without an entry we fall back to closing the connection.
TRANSPORTS: dict[tuple[str, int], asyncio.BaseTransport] = {}


class ContentSigner:
    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    def signature(self, file_id: str, expires: int) -> str:
        return hmac.new(self._secret, f"{file_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, base_url: str, file_id: str, lifetime: float) -> tuple[str, int]:
        expires = int(time.time() + lifetime)
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
        if expires_at < time.time():
            return "Request has expired"
        return None


def xml_error(code: str, message: str) -> bytes:
    def esc(s: str) -> str:
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{esc(code)}</Code>'
        f"<Message>{esc(message)}</Message></Error>"
    ).encode()


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


def file_body(entry: FileEntry, start: int, end: int) -> Callable[[], AsyncIterator[bytes]]:
    """A factory of the byte pieces of ``entry[start:end]`` (opened only when streaming starts)."""

    async def synthetic() -> AsyncIterator[bytes]:
        pos = start
        while pos < end:
            n = min(PIECE, end - pos)
            yield synthetic_bytes(entry.seed or 0, pos, n)
            pos += n

    async def disk() -> AsyncIterator[bytes]:
        assert entry.disk_path is not None
        fd = await asyncio.to_thread(os.open, entry.disk_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            pos = start
            while pos < end:
                piece = await asyncio.to_thread(os.pread, fd, min(PIECE, end - pos), pos)
                if not piece:
                    # the file shrank on disk since the account was loaded
                    raise OSError(f"file {entry.id} is shorter on disk than its recorded size")
                yield piece
                pos += len(piece)
        finally:
            os.close(fd)

    return synthetic if entry.seed is not None else disk


class AbortConnection(Exception):
    """Raised inside the ASGI app to drop the connection (uvicorn closes it)."""


class StreamResponse:
    """An ASGI response: status, headers, a lazily produced body, and an optional body fault.

    ``fault``: None | "reset" | "truncate" | "stall" — applied once ``fault_at`` bytes of the
    body were sent.  ``bandwidth``: bytes/s cap (0 = none).  ``on_bytes`` counts sent bytes.
    """

    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        body: bytes | Callable[[], AsyncIterator[bytes]] = b"",
        *,
        length: int | None = None,
        send_body: bool = True,
        fault: str | None = None,
        stall_seconds: float = 0.0,
        bandwidth: float = 0.0,
        on_bytes: Callable[[int], None] | None = None,
    ):
        self.status = status
        self.headers = dict(headers)
        self.body = body
        self.length = len(body) if isinstance(body, bytes) else (length or 0)
        self.headers["Content-Length"] = str(self.length)
        self.send_body = send_body
        self.fault = fault if send_body else None
        self.stall_seconds = stall_seconds
        self.bandwidth = bandwidth
        self.on_bytes = on_bytes
        # the fault strikes after half the body, at most 1 MiB in: a client sees some data first
        self.fault_at = min(self.length // 2, PIECE)

    async def __call__(self, scope, receive, send) -> None:
        raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": raw_headers})
        if not self.send_body or self.length == 0:
            if self.fault in ("reset", "truncate"):
                await self._drop(scope, reset=self.fault == "reset")
            elif self.fault == "stall":
                await asyncio.sleep(self.stall_seconds)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        sent = 0
        started = time.monotonic()
        fault = self.fault
        async for piece in self._pieces():
            while piece:
                take = len(piece)
                if fault is not None and sent < self.fault_at:
                    take = min(take, self.fault_at - sent)
                elif fault is not None and sent >= self.fault_at:
                    if fault == "stall":
                        fault = None
                        await asyncio.sleep(self.stall_seconds)
                        continue
                    await self._drop(scope, reset=fault == "reset")
                    return
                if self.bandwidth > 0:
                    take = min(take, max(16 * 1024, int(self.bandwidth / 20)))
                chunk, piece = piece[:take], piece[take:]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
                if self.on_bytes:
                    self.on_bytes(len(chunk))
                if self.bandwidth > 0:
                    ahead = started + sent / self.bandwidth - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pieces(self) -> AsyncIterator[bytes]:
        if isinstance(self.body, bytes):
            yield self.body
            return
        try:
            async for piece in self.body():
                yield piece
        except OSError as exc:
            log.warning("content stream failed: %s", exc)
            raise AbortConnection() from None

    async def _drop(self, scope, *, reset: bool) -> None:
        """End the connection mid-body: RST (reset) or a clean FIN (truncate)."""
        transport = TRANSPORTS.get(tuple(scope.get("client") or ()))
        if transport is None:
            raise AbortConnection()
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            transport.abort()
        else:
            transport.close()
        # let uvicorn notice the disconnect so it doesn't report an incomplete response
        for _ in range(50):
            await asyncio.sleep(0.01)
            if transport.is_closing() and tuple(scope.get("client") or ()) not in TRANSPORTS:
                break
