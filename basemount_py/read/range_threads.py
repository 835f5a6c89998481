"""Ranged GETs of signed content URLs in worker threads, received straight into the block buffers.

Why not httpx here (it stays the API client): on the trio loop, every byte of a response went
socket → h11's buffer → an extracted chunk → our block, with a trip through trio, httpcore and h11
per chunk, all on the thread that also answers the kernel. ``http.client`` in a worker thread reads
the body straight into one buffer (one copy, done by the kernel), cut into block-sized views,
with the GIL released while it waits, so the FUSE loop's thread is left to the FUSE requests.
Measured against the emulator on the 2-CPU VM (512 MiB as 4 MiB ranges, 16 in flight, same run,
interleaved): 1.0-1.2 s of client CPU instead of 1.6-1.9 s, and 1.6-2.5x the throughput
(docs/performance.md).

One :class:`RangeThreads` per :class:`~.content.ContentSource`: a pool of idle keep-alive
connections per (scheme, host, port), at most ``max_connections`` requests at once. Every socket
wait is bounded by ``stall_timeout`` (a connection that stops sending is abandoned quickly), the
connect by ``connect_timeout``. Failures become the same ``ApiError`` kinds as the httpx path, so
retries, the 403 re-resolve and the errno mapping are unchanged; messages never include the URL
(its query string is a credential). Proxies: when one is configured for the URL's host, the
caller uses the httpx path instead (``http.client`` does not read the proxy settings).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
import urllib.request
from typing import Callable
from urllib.parse import urlsplit

import httpx
import trio

from ..api.client import certificate_error, raise_for_status, tls_context
from ..api.errors import ContentExpiredError, NetworkError, ProtocolError

__all__ = ["RangeThreads", "uses_proxy"]

log = logging.getLogger(__name__)

Check = Callable[[httpx.Response], None]


def _headers(start: int, end: int) -> dict[str, str]:
    return {"Range": f"bytes={start}-{end - 1}", "User-Agent": "basemount_py", "Accept-Encoding": "identity"}


def uses_proxy(url: str) -> bool:
    """Whether the environment sends requests for ``url`` through a proxy."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    return bool(proxies.get(parts.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(parts.hostname or "")


class RangeThreads:
    def __init__(self, max_connections: int, connect_timeout: float, stall_timeout: float):
        self.connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout
        self._limiter = trio.CapacityLimiter(max(1, max_connections))
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._closed = False

    async def get(self, url: str, start: int, end: int, block_size: int, describe: str, check: Check) -> list[memoryview]:
        """Bytes ``[start, end)`` of ``url`` as block-sized views of one buffer; ``check`` vets the
        status and headers."""
        # The buffer is allocated in the worker as it receives: on the trio thread, allocating
        # (and zeroing) the blocks was a quarter of the FUSE thread's time in a wan cp
        # (docs/performance.md). That it comes from a worker does not raise the daemon's RSS
        # because malloc.tune_malloc limits glibc to one arena (before that, each thread's arena
        # kept its freed heap and the peak RSS doubled).
        blocks: list[memoryview] = []
        live: list[http.client.HTTPConnection] = []  # the connection the worker uses, while it does
        try:
            await trio.to_thread.run_sync(self._get, url, start, end, block_size, blocks, live, describe, check, limiter=self._limiter, abandon_on_cancel=True)
        except trio.Cancelled:
            # Given up on (the retry deadline, the op timeout, a shutdown): the worker would read
            # on, holding its connection slot, as long as the host keeps sending (a trickle within
            # the stall timeout). Its socket is shut now, so its read ends and the slot comes back.
            for conn in list(live):
                _shut(conn)
            raise
        return blocks

    def close(self) -> None:
        self._closed = True
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for conn in connections:
                conn.close()

    # -- in the worker thread ------------------------------------------------------------------

    def _get(
        self, url: str, start: int, end: int, block_size: int, blocks: list[memoryview], live: list[http.client.HTTPConnection], describe: str, check: Check
    ) -> None:
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        origin = (parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        try:
            for fresh in (False, True):
                conn, reused = self._checkout(origin, fresh)
                live[:] = [conn]
                reusable = False
                try:
                    try:
                        conn.request("GET", target, headers=_headers(start, end))
                        response = conn.getresponse()
                    except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                        if reused:
                            continue  # the server closed an idle keep-alive connection: a new one
                        raise
                    # The path only: the query string of a signed URL is a credential.
                    log.debug("GET %s://%s%s bytes=%d-%d: %d", parts.scheme, origin[1], parts.path, start, end - 1, response.status)
                    self._receive(response, start, end, block_size, blocks, describe, check)
                    reusable = not response.will_close
                    return
                finally:
                    live.clear()
                    if reusable and not self._closed:
                        self._checkin(origin, conn)
                    else:
                        conn.close()
            raise NetworkError(f"{describe}: the connection was closed before the answer")
        except (ContentExpiredError, NetworkError, ProtocolError):
            raise
        except TimeoutError as exc:
            raise NetworkError(f"{describe}: stalled or timed out ({type(exc).__name__})") from None
        except (OSError, http.client.HTTPException) as exc:
            bad_certificate = certificate_error(exc, describe)  # not transient: never retried
            if bad_certificate is not None:
                raise bad_certificate from None
            raise NetworkError(f"{describe}: {type(exc).__name__}") from None

    @staticmethod
    def _receive(response: http.client.HTTPResponse, start: int, end: int, block_size: int, blocks: list[memoryview], describe: str, check: Check) -> None:
        if response.status == 403:
            raise ContentExpiredError(f"{describe}: 403 from the content host", 403)
        if response.status >= 400:
            body = response.read(64 * 1024)
            raise_for_status(httpx.Response(response.status, headers=_raw_headers(response), content=body), describe)
        check(httpx.Response(response.status, headers=_raw_headers(response)))
        expected = end - start
        # The whole body in one buffer: read(n) allocates it without zeroing it and receives
        # straight into it, as much as the socket holds at each recv (not 64 KiB at a time: fewer
        # system calls and trips through the GIL); the blocks are views of it, not copies.
        body = response.read(expected)
        if len(body) != expected:
            raise NetworkError(f"{describe}: truncated body ({len(body)} of {expected} bytes)")
        if response.read(1):
            raise ProtocolError(f"{describe}: the server sent more than {expected} bytes")
        view = memoryview(body)
        blocks[:] = [view[offset : offset + block_size] for offset in range(0, expected, block_size)]

    def _checkout(self, origin: tuple[str, str, int], fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection to ``origin`` (unless ``fresh``) or a new one; and whether it was idle."""
        with self._lock:
            idle = self._idle.get(origin)
            if idle and not fresh:
                return idle.pop(), True
        scheme, host, port = origin
        if scheme == "https":
            # The same trust as the httpx clients (the CA bundle, or SSL_CERT_FILE/SSL_CERT_DIR).
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=self.connect_timeout, context=tls_context())
        elif scheme == "http":
            conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        else:
            raise ProtocolError(f"content URL with an unsupported scheme {scheme!r}")
        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.settimeout(self.stall_timeout)
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            conn.close()
            raise
        return conn, False

    def _checkin(self, origin: tuple[str, str, int], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault(origin, []).append(conn)


def _raw_headers(response: http.client.HTTPResponse) -> list[tuple[bytes, bytes]]:
    """The answer's headers as bytes again: http.client decodes them as latin-1, and httpx refuses
    text that is not ASCII (an S3 host's Content-Disposition with a UTF-8 file name, say)."""
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.getheaders()]


def _shut(conn: http.client.HTTPConnection) -> None:
    """End what another thread is doing on ``conn`` (a blocked ``recv`` returns at once)."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
