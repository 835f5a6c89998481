"""Every answer the emulator sends, and the one way a handler's failure becomes one.

* ``StreamResponse`` is the one ASGI response used for *every* emulator answer (JSON included),
  because faults (reset, truncate, stall) and the per-connection bandwidth cap act on the body
  stream.  Bodies are produced lazily (``content.file_body``: ~1 MiB pieces), so memory stays
  flat whatever the size; uvicorn's flow control makes ``send`` wait while the client is slow.
* The JSON, HTML and XML answers in the shapes real BaseSpace and S3 send them (headers from
  recorded traffic, tests/conformance/recorded.json).
* ``HttpError`` and its kinds: a handler raises one, and ``app._endpoint`` (the only place that
  catches them) answers with ``HttpError.response()``.

A leaf module: it imports nothing from the rest of the emulator.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from typing import Any, AsyncIterator, Callable

import anyio

__all__ = [
    "StreamResponse",
    "AbortConnection",
    "TRANSPORTS",
    "xml_error",
    "json_bytes",
    "json_response",
    "html_response",
    "xml_response",
    "envelope",
    "error_status",
    "not_found",
    "UNAUTHORIZED_BODY",
    "HttpError",
    "BadRequest",
    "Forbidden",
    "bounded_body",
]

log = logging.getLogger("basemount_py.emulator")

PIECE = 1024 * 1024  # body pieces (content.file_body); a body fault strikes at most this far in

# Connection transports by client address, filled by server.py's protocol class, so a "reset"
# fault can send a real TCP RST.  Without an entry we fall back to closing the connection.
TRANSPORTS: dict[tuple[str, int], asyncio.Transport] = {}

UNAUTHORIZED_BODY = {
    "ResponseStatus": {
        "ErrorCode": "BASESPACE.COMMON.UNAUTHORIZED",
        "Message": "Please sign in to access this resource.",
    },
    "Notifications": [],
}


def json_bytes(obj: Any) -> bytes:
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from an .entity.json: escape them instead
        return json.dumps(obj, separators=(",", ":")).encode("ascii")


# Real BaseSpace: JSON answers say plain ``application/json``, its 403s add ``; charset=utf-8``
# (recorded traffic, tests/conformance/recorded.json).
JSON_TYPE = "application/json"
ERROR_JSON_TYPE = "application/json; charset=utf-8"
# Every API answer of real BaseSpace forbids caching this way (unknown paths say ``private``).
NO_CACHE_HEADERS = {"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache", "Expires": "0"}


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> StreamResponse:
    h = {"Content-Type": JSON_TYPE if status < 400 else ERROR_JSON_TYPE}
    h.update(headers or {})
    return StreamResponse(status, h, json_bytes(obj))


def html_response(text: str, status: int = 200) -> StreamResponse:
    return StreamResponse(status, {"Content-Type": "text/html; charset=utf-8"}, text.encode())


def xml_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> StreamResponse:
    h = {"Content-Type": "application/xml"}
    h.update(headers or {})
    return StreamResponse(status, h, xml_error(code, message))


def envelope(response: Any) -> dict[str, Any]:
    return {"Response": response, "ResponseStatus": {}, "Notifications": []}


def error_status(status: int, code: str | None, message: str, notifications: list | None = None) -> StreamResponse:
    rs: dict[str, Any] = {"Message": message}
    if code:
        rs = {"ErrorCode": code, "Message": message}
    return json_response({"ResponseStatus": rs, "Notifications": notifications or []}, status)


def not_found() -> StreamResponse:
    r = error_status(404, None, "This isn't a recognized path. Please check the documentation at https://developer.basespace.illumina.com")
    r.headers["Content-Type"] = JSON_TYPE  # recorded: the unknown-path 404 has no charset...
    r.headers["Cache-Control"] = "private"  # ...and is the one answer marked private
    return r


# -- a handler's failure ------------------------------------------------------------------------


class HttpError(Exception):
    """Raised by a handler: answer with this error instead (BaseSpace's JSON error shape)."""

    def __init__(self, status: int, message: str, code: str | None = "BASESPACE.COMMON.BAD_REQUEST", notifications: list | None = None):
        super().__init__(message)
        self.status, self.code, self.notifications = status, code, notifications

    def response(self) -> StreamResponse:
        return error_status(self.status, self.code, str(self), self.notifications)


class BadRequest(HttpError):
    def __init__(self, message: str):
        super().__init__(400, message)


class Forbidden(HttpError):
    """Unknown or foreign ids answer 403 like BaseSpace (never 404, which leaks existence)."""

    def __init__(self, type_name: str, access: str = "READ"):
        super().__init__(403, f"Sorry but this requires {access} access to this {type_name} resource.", "BASESPACE.COMMON.INSUFFICIENT_RESOURCE_PERMISSIONS")
        if access == "READ":  # real read 403s repeat the message as the notification item
            self.notifications = [{"Type": "error", "Item": str(self)}]


async def bounded_body(request: Any, limit: int) -> bytes:
    """A small request body (a form, a JSON object), read whole but never past ``limit`` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest("request body too large")
    return bytes(body)


def xml_error(code: str, message: str) -> bytes:
    def esc(s: str) -> str:
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{esc(code)}</Code><Message>{esc(message)}</Message></Error>').encode()


class AbortConnection(Exception):
    """Raised inside the ASGI app to drop the connection (uvicorn closes it). ``reset``: an RST
    (the client sees a reset), else a clean FIN mid-body (the client sees a truncated body); an
    in-process transport (tests/inprocess.py) turns each into the error a socket would give."""

    def __init__(self, reset: bool = True):
        super().__init__("reset" if reset else "truncate")
        self.reset = reset


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
                await anyio.sleep(self.stall_seconds)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        sent = 0
        started = anyio.current_time()  # the event loop's clock (a test's MockClock in-process)
        fault = self.fault
        async for piece in self._pieces():
            while piece:
                take = len(piece)
                if fault is not None and sent < self.fault_at:
                    take = min(take, self.fault_at - sent)
                elif fault is not None and sent >= self.fault_at:
                    if fault == "stall":
                        fault = None
                        await anyio.sleep(self.stall_seconds)
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
                    ahead = started + sent / self.bandwidth - anyio.current_time()
                    if ahead > 0:
                        await anyio.sleep(ahead)
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
            raise AbortConnection(reset)
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
