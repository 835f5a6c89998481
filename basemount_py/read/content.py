"""File bytes from BaseSpace: signed-URL resolution and exact, bounded ranged GETs.

``ContentSource.fetch(file_id, start, end)`` returns exactly ``end - start`` bytes or raises an
``ApiError``; a wrong length is never returned. ``fetch_blocks(file_id, start, end, block_size)``
returns the same bytes cut into block-sized views (the last may be shorter) of the one buffer they
were received in: the block cache keeps them as they are, which saves copying every byte once
more (7 % of the daemon's CPU on a sequential read), and a kernel read inside that buffer is
answered with one view of it (reader.py).

* **URL resolution.** ``GET v1pre3/files/{id}/content?redirect=meta`` (through the API client, so
  it has the token and the client's own retries) answers a pre-signed URL and its ``Expires``. The
  URL is cached per file (bounded LRU) until ``url_refresh_margin`` before it expires — or half its
  lifetime when that is shorter, so even short-lived URLs are reused. Concurrent fetches of one file
  share a single resolution.
* **Ranged GETs.** A separate ``httpx.AsyncClient`` without the token header (the URL is signed;
  sending the token to a storage host would leak it) asks for ``Range: bytes=a-b`` — always
  bounded, since an open-ended range is billed as the whole object — and accepts 206 with the exact
  ``Content-Range``, or 200 only when that is the whole requested range. The raw body is read with
  a per-read timeout (``stall_timeout``), so a connection that stops sending is abandoned quickly
  instead of holding a FUSE request; its length is checked.
* **Failures.** 5xx/429 (``Retry-After`` honoured), resets, stalls and truncated bodies are retried
  with jittered backoff under the policy's attempt limit and overall deadline
  (:func:`~basemount_py.api.retry.with_retries`). A 403 from the content host means the signed URL
  expired or was revoked (:class:`ContentExpiredError`): the cached URL is dropped and re-resolved
  once. Resolution errors are not retried a second time here (the API client already did).
* **Secrets.** The signed URL's query string is a credential: it never appears in a message, and a
  logging filter strips query strings from httpx's request log lines.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import cachetools
import httpx
import trio

from ..api.client import BaseSpaceClient, certificate_error, raise_for_status, tls_context
from ..api.errors import ApiError, ContentExpiredError, NetworkError, ProtocolError
from ..api.retry import RetryPolicy, is_transient, with_retries
from ..options import MountOptions
from .range_threads import RangeThreads, uses_proxy

log = logging.getLogger(__name__)

URL_CACHE_ENTRIES = 4096
DEFAULT_URL_LIFETIME = 300.0  # when the API gives no (parsable) Expires: assume a short life
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


class _RedactQuery(logging.Filter):
    """Strip query strings from URLs in httpx's log records (signed URLs carry credentials)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(arg) for arg in record.args)
        return True


def _redact(value: Any) -> Any:
    if isinstance(value, httpx.URL):
        return value.copy_with(query=None, fragment=None)
    if isinstance(value, str) and "?" in value and "://" in value:
        return value.split("?", 1)[0]
    return value


# httpcore reads a response 64 KiB per recv(); each read costs a trip through trio, httpcore and
# h11 (~50 µs of Python), which made that per-chunk overhead the daemon's largest CPU cost on a
# sequential read. 1 MiB reads return whatever the socket holds (less on a slow link), so latency is
# unchanged while a fast link needs up to 16x fewer trips. The attribute is a public class constant.
CONTENT_READ_BYTES = 1024 * 1024
try:
    import httpcore

    if getattr(httpcore.AsyncHTTP11Connection, "READ_NUM_BYTES", 0) < CONTENT_READ_BYTES:
        httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = CONTENT_READ_BYTES
except (ImportError, AttributeError):  # another httpcore layout: keep its default
    pass

_httpx_log = logging.getLogger("httpx")
if not any(isinstance(f, _RedactQuery) for f in _httpx_log.filters):
    _httpx_log.addFilter(_RedactQuery())


def parse_expires(text: Any) -> float | None:
    """BaseSpace ``Expires`` (ISO 8601, 0–7 fractional digits, ``Z`` or offset) → epoch seconds."""
    if not isinstance(text, str):
        return None
    value = text.strip()
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?$", value)
    if not match:
        return None
    base, fraction, zone = match.groups()
    try:
        moment = datetime.fromisoformat(base)
    except ValueError:
        return None
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        offset = sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    else:
        offset = 0
    seconds = moment.replace(tzinfo=timezone.utc).timestamp() - offset
    return seconds + (float(fraction) if fraction else 0.0)


class _ResolveFailed(Exception):
    """Carries a resolution ApiError through ``with_retries`` without a second round of retries."""

    def __init__(self, error: ApiError):
        super().__init__(str(error))
        self.error = error


class ContentSource:
    def __init__(
        self,
        api: BaseSpaceClient,
        *,
        policy: RetryPolicy = RetryPolicy(),
        max_connections: int = MountOptions.max_connections,
        url_refresh_margin: float = 60.0,
        stall_timeout: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.api = api
        self.policy = policy
        self.url_refresh_margin = url_refresh_margin
        # No byte for this long on an open response = a stall (gcsfuse's read-stall retry).
        self.stall_timeout = stall_timeout if stall_timeout is not None else min(policy.request_timeout, 10.0)
        self._http = httpx.AsyncClient(
            transport=transport,
            verify=tls_context(),
            timeout=httpx.Timeout(
                connect=policy.request_timeout,
                read=self.stall_timeout,
                write=policy.request_timeout,
                pool=policy.request_timeout,
            ),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
            headers={"User-Agent": "basemount_py", "Accept-Encoding": "identity"},
        )
        # The ranged GETs themselves: http.client in worker threads, received straight into the
        # blocks (range_threads.py); httpx above stays for a URL that goes through a proxy, and
        # for an injected transport (an in-process emulator in tests), which carries every request.
        self._use_threads = transport is None
        self._threads = RangeThreads(max_connections, policy.request_timeout, self.stall_timeout)
        # (scheme, host) -> whether the environment proxies it: read once per host, not per GET
        # (urllib walks the whole environment each time: 5 % of the FUSE thread in a wan cp).
        self._proxied: dict[tuple[str, str], bool] = {}
        # file_id -> (url, refresh_at on the trio clock)
        self._urls: cachetools.LRUCache = cachetools.LRUCache(maxsize=URL_CACHE_ENTRIES)
        # file_id -> (done event, [the _ResolveFailed if it failed]) of the resolution under way
        self._resolving: dict[str, tuple[trio.Event, list[BaseException]]] = {}
        self.stats = {
            "range_requests": 0,
            "bytes_fetched": 0,
            "url_resolves": 0,
            "retries": 0,
            "expired_urls": 0,
        }

    async def aclose(self) -> None:
        self._threads.close()
        await self._http.aclose()

    # -- public ------------------------------------------------------------------------------

    async def fetch(self, file_id: str, start: int, end: int) -> bytes | bytearray:
        """Exactly bytes ``[start, end)`` of the file, or an ApiError (the buffer as received: no copy)."""
        if end == start and start >= 0:
            return b""
        (body,) = await self.fetch_blocks(file_id, start, end, max(1, end - start))
        buffer = body.obj  # the one view covers the whole buffer
        assert isinstance(buffer, (bytes, bytearray))
        return buffer

    async def fetch_blocks(self, file_id: str, start: int, end: int, block_size: int) -> list[memoryview]:
        """Bytes ``[start, end)`` as consecutive views of ``block_size`` (the last may be shorter)
        of the one buffer they were received in."""
        if start < 0 or end < start:
            raise ValueError(f"invalid byte range [{start}, {end})")
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        if end == start:
            return []
        describe = f"GET content of file {file_id} bytes {start}-{end - 1}"
        attempts = 0
        refreshed = False

        async def attempt() -> list[memoryview]:
            nonlocal attempts, refreshed
            attempts += 1
            if attempts > 1:
                self.stats["retries"] += 1
            url = await self._url(file_id)
            try:
                return await self._get_range(url, start, end, block_size, describe)
            except ContentExpiredError:
                self.stats["expired_urls"] += 1
                self._forget(file_id, url)
                if refreshed:
                    raise
                refreshed = True
                log.info("%s: content URL refused (expired?); resolving a fresh one", describe)
                url = await self._url(file_id)
                return await self._get_range(url, start, end, block_size, describe)

        try:
            return await with_retries(self.policy, attempt, describe, transient=is_transient)
        except _ResolveFailed as exc:
            raise exc.error from None

    # -- signed URLs -------------------------------------------------------------------------

    async def _url(self, file_id: str) -> str:
        while True:
            cached = self._urls.get(file_id)
            if cached is not None and trio.current_time() < cached[1]:
                return cached[0]
            pending = self._resolving.get(file_id)
            if pending is None:
                break
            # Someone else is resolving this file: share the answer, a failure included (it is
            # as fresh as our own attempt would be; with the API down, N waiters retrying one
            # after the other would each spend a whole retry cycle). Then look again: the URL
            # may already be cached, or a third task may be resolving it.
            event, shared = pending
            await event.wait()
            if shared:
                raise shared[0]
        event = trio.Event()
        outcome: list[BaseException] = []
        self._resolving[file_id] = (event, outcome)
        try:
            return await self._resolve(file_id)
        except _ResolveFailed as exc:
            outcome.append(exc)
            raise
        finally:
            if self._resolving.get(file_id, (None,))[0] is event:
                del self._resolving[file_id]
            event.set()

    async def _resolve(self, file_id: str) -> str:
        self.stats["url_resolves"] += 1
        try:
            # The id comes from the server: quoted, so "../x" or "1?y" cannot aim at another route.
            body = await self.api.get_json(f"v1pre3/files/{quote(file_id, safe='')}/content", {"redirect": "meta"})
        except ApiError as exc:
            raise _ResolveFailed(exc) from None
        response = found if isinstance(body, dict) and isinstance(found := body.get("Response"), dict) else {}
        href = response.get("HrefContent")
        if not isinstance(href, str) or not href:
            raise _ResolveFailed(ProtocolError(f"file {file_id}: content answer has no HrefContent"))
        url = urljoin(self.api.api_server, href)
        if not _valid_port(url):  # checked here, not met later by a fetch as an unmapped ValueError
            raise _ResolveFailed(ProtocolError(f"file {file_id}: the content URL is not valid"))
        expires = parse_expires(response.get("Expires"))
        lifetime = DEFAULT_URL_LIFETIME if expires is None else expires - time.time()
        # Refresh `margin` early, but for short-lived URLs at half-life so they are still reused.
        usable = lifetime - min(self.url_refresh_margin, lifetime / 2)
        if usable > 0:
            self._urls[file_id] = (url, trio.current_time() + usable)
        return url

    def _forget(self, file_id: str, url: str) -> None:
        cached = self._urls.get(file_id)
        if cached is not None and cached[0] == url:
            del self._urls[file_id]

    # -- ranged GET --------------------------------------------------------------------------

    def _proxied_host(self, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.scheme, parts.hostname or "")
        proxied = self._proxied.get(host)
        if proxied is None:
            if len(self._proxied) >= 256:  # signed URLs from many hosts: stay bounded
                self._proxied.clear()
            proxied = self._proxied[host] = uses_proxy(url)
        return proxied

    async def _get_range(self, url: str, start: int, end: int, block_size: int, describe: str) -> list[memoryview]:
        expected = end - start
        self.stats["range_requests"] += 1
        if self._use_threads and not self._proxied_host(url):
            check = lambda response: self._check_status(response, start, end, describe)  # noqa: E731
            blocks = await self._threads.get(url, start, end, block_size, describe, check)
            self.stats["bytes_fetched"] += expected
            return blocks
        headers = {"Range": f"bytes={start}-{end - 1}"}
        try:
            async with self._http.stream("GET", url, headers=headers) as response:
                if response.status_code == 403:
                    raise ContentExpiredError(f"{describe}: 403 from the content host", 403)
                if response.status_code >= 400:
                    await response.aread()
                    raise_for_status(response, describe)
                self._check_status(response, start, end, describe)
                # One buffer of the exact size, filled in place: growing a bytearray and copying it
                # to bytes at the end cost two extra copies of every byte (and page faults on
                # fresh memory), a third of the daemon's CPU on a sequential read (py-spy).
                body = bytearray(expected)
                received = await _fill(response.aiter_raw(), body, expected, describe)
        except httpx.TimeoutException as exc:
            raise NetworkError(f"{describe}: stalled or timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            bad_certificate = certificate_error(exc, describe)  # not transient: never retried
            if bad_certificate is not None:
                raise bad_certificate from None
            # Not str(exc): some httpx messages embed the request URL, whose query is a credential.
            raise NetworkError(f"{describe}: {type(exc).__name__}") from None
        if received != expected:
            raise NetworkError(f"{describe}: truncated body ({received} of {expected} bytes)")
        self.stats["bytes_fetched"] += expected
        # Views of the buffer itself (never modified again), as the worker threads give them.
        view = memoryview(body)
        return [view[o : o + block_size] for o in range(0, expected, block_size)]

    @staticmethod
    def _check_status(response: httpx.Response, start: int, end: int, describe: str) -> None:
        code = response.status_code
        if code == 206:
            match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
            if match and match.group(3) != "*" and int(match.group(3)) < end:
                raise ProtocolError(f"{describe}: the file has only {match.group(3)} bytes")
            if not match or int(match.group(1)) != start or int(match.group(2)) != end - 1:
                raise ProtocolError(f"{describe}: Content-Range {response.headers.get('content-range')!r} does not match")
        elif code == 200:
            # The host ignored Range: acceptable only if the whole body is what we asked for.
            length = response.headers.get("content-length")
            if start != 0 or length is None or not length.isdigit() or int(length) != end:
                raise ProtocolError(f"{describe}: host ignored the Range header (200 for a partial range)")
        else:
            raise ProtocolError(f"{describe}: unexpected HTTP {code}")
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) != end - start:
            raise ProtocolError(f"{describe}: Content-Length {length} for {end - start} requested bytes")


async def _fill(chunks: Any, body: bytearray, expected: int, describe: str) -> int:
    """Copy a body's chunks into ``body`` (``expected`` bytes long); the number of bytes received.

    Raises ProtocolError as soon as the body runs past ``expected`` bytes (the caller checks a
    short body)."""
    view = memoryview(body)
    received = 0
    try:
        async for chunk in chunks:
            n = len(chunk)
            if received + n > expected:
                raise ProtocolError(f"{describe}: the server sent more than {expected} bytes")
            view[received : received + n] = chunk
            received += n
    finally:
        view.release()
    return received


def _valid_port(url: str) -> bool:
    """Whether the URL's port, if it names one, is a number from 0 to 65535."""
    try:
        port = urlsplit(url).port  # ValueError when it is not a number or out of range
    except ValueError:
        return False
    return port is None or 0 <= port <= 65535
