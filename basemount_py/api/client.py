"""Async BaseSpace API client (httpx on trio).

* Auth by ``x-access-token`` header only: the token never appears in a URL, a log line or an error.
* ``list_all`` fetches a whole listing: the first page tells TotalCount, the rest are fetched
  concurrently with the largest page size, and any gap a short page leaves is filled afterwards.
* A 401 re-reads the credentials once (token rotation) through ``token_reloader``.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import ssl
from urllib.parse import quote
from typing import Any, Callable

import httpx
import trio

from ..options import MountOptions
from ..tasks import gather
from .errors import (
    ApiError,
    AuthError,
    CertificateError,
    ForbiddenError,
    NOT_JSON,
    NetworkError,
    NotFoundError,
    ProtocolError,
    ServerError,
)
from .budget import RequestBudget
from .config import ConfigError
from .retry import RetryPolicy, with_retries

log = logging.getLogger(__name__)

V1_PAGE_MAX = 1024  # BaseSpace caps v1pre3 list Limit at 1024
FILES_PAGE_MAX = 1000  # ...and file listings at 1000
# A caller that must know whether a request may have reached the server (the commit of an upload,
# whose outcome decides whether the file may still be renamed) sets ``[False]`` here: every try of
# a request run in that context which got past connecting sets it to True. A try that could not
# connect (refused, unreachable, no connection from the pool in time) sent nothing, and one
# answered 429 or 503 was not handled (too many requests; unavailable).
reached_server: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("reached_server", default=None)


NOT_HANDLED = (429, 503)


def _note_reached(exc: BaseException | None = None, status: int = 0) -> None:
    never_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)) or status in NOT_HANDLED
    marker = reached_server.get()
    if marker is not None and not never_sent:
        marker[0] = True


PAGE_CONCURRENCY = 8
WAVE_PAGES = 32  # pages requested before looking at what came back (see list_all)
MAX_LIST_ITEMS = 1_000_000  # a listing longer than this is cut (a lying TotalCount cannot loop us)

__all__ = ["BaseSpaceClient", "RetryPolicy", "V1_PAGE_MAX", "FILES_PAGE_MAX"]


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except NOT_JSON:
        return response.reason_phrase or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        status = body.get("ResponseStatus") or {}
        for candidate in (
            status.get("Message") if isinstance(status, dict) else None,
            body.get("MessageFormatted"),
            body.get("Message"),
            body.get("error_description"),
            body.get("error"),
        ):
            if candidate:
                return str(candidate)
    return response.reason_phrase or f"HTTP {response.status_code}"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _causes(exc: BaseException) -> list[BaseException]:
    """The exceptions under ``exc`` (httpx wraps the socket's or ssl's own error)."""
    out: list[BaseException] = []
    cause = exc.__cause__ or exc.__context__
    while cause is not None and len(out) < 8:  # chains are short; never loop on a cycle
        out.append(cause)
        cause = cause.__cause__ or cause.__context__
    return out


def tls_context() -> ssl.SSLContext:
    """The process's one TLS client context, shared by the API client, the content client and the
    content fetcher's threads.

    Each httpx client otherwise loads the CA bundle itself: about 0.1 s of CPU each, twice per
    mount start. It is what httpx would build (certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``
    when set), kept per value of those two variables, so a changed setting is honoured."""
    return _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context()


def certificate_error(exc: BaseException, describe: str) -> CertificateError | None:
    """A CertificateError when ``exc`` comes from a failed TLS certificate check, else None.
    Its message is the ssl module's, which names no URL (safe for signed content URLs too)."""
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return CertificateError(f"{describe}: TLS certificate verification failed ({cause.verify_message})")
    return None


def transport_detail(exc: BaseException) -> str:
    """What went wrong under an httpx transport error, which often has no message of its own
    (a TLS failure arrives as a bare ConnectError whose cause is the ssl error)."""
    text = str(exc)
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLError):
            return f"TLS error ({cause.reason or cause})"
        text = text or str(cause)
    return text


def path_segment(value: object) -> str:
    """An id from the server as one URL path segment, so a hostile id cannot reach another route."""
    return quote(str(value), safe="")


def raise_for_status(response: httpx.Response, what: str) -> None:
    """Turn an error response into the matching ApiError (shared with the content reader)."""
    code = response.status_code
    if code < 400:
        return
    message = f"{what}: {code} {_error_message(response)}"
    if code == 401:
        raise AuthError(message, code)
    if code == 403:
        raise ForbiddenError(message, code)
    if code in (404, 410):
        raise NotFoundError(message, code)
    if code == 429 or code >= 500:
        raise ServerError(message, code, _retry_after(response))
    raise ApiError(message, code)


class BaseSpaceClient:
    def __init__(
        self,
        api_server: str,
        access_token: str,
        *,
        policy: RetryPolicy = RetryPolicy(),
        max_connections: int = MountOptions.max_connections,
        token_reloader: Callable[[], str | None] | None = None,
        budget: RequestBudget | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.api_server = api_server.rstrip("/") + "/"
        self._token = access_token
        self.policy = policy
        self._token_reloader = token_reloader
        # One budget per process (docs/cluster.md): every API request of this client waits for it.
        self.budget = budget if budget is not None else RequestBudget()
        self._http = httpx.AsyncClient(
            transport=transport,
            verify=tls_context(),
            base_url=self.api_server,
            timeout=httpx.Timeout(policy.request_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
            headers={"User-Agent": "basemount_py"},
        )
        self.request_count = 0
        self._token_lock = trio.Lock()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "BaseSpaceClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- single requests -------------------------------------------------------------------

    async def _send_once(self, method: str, path: str, params: dict | None, token: str, **kwargs: Any) -> httpx.Response:
        await self.budget.acquire()
        self.request_count += 1
        headers = {"x-access-token": token}
        headers.update(kwargs.pop("headers", {}) or {})
        try:
            response = await self._http.request(method, path, params=params, headers=headers, **kwargs)
        except httpx.TimeoutException as exc:
            _note_reached(exc)
            raise NetworkError(f"{method} {path}: timed out ({type(exc).__name__})") from None
        except httpx.LocalProtocolError as exc:
            # Our own request is malformed (a header value httpx refuses: its message quotes the
            # value, which may be the token). Never transient, and never its text.
            raise ProtocolError(f"{method} {path}: the request could not be sent ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            _note_reached(exc)
            bad_certificate = certificate_error(exc, f"{method} {path}")
            if bad_certificate is not None:
                raise bad_certificate from None
            raise NetworkError(f"{method} {path}: {type(exc).__name__}: {transport_detail(exc)}") from None
        _note_reached(status=response.status_code)
        if response.status_code == 429:
            self.budget.throttled(_retry_after(response))
        elif response.status_code < 500:
            self.budget.succeeded()
        raise_for_status(response, f"{method} {path}")
        return response

    async def request(self, method: str, path: str, params: dict | None = None, **kwargs: Any) -> httpx.Response:
        """One API request with retries; a 401 re-reads the token once and tries again."""
        path = path.lstrip("/")
        sent = [self._token]

        async def attempt() -> httpx.Response:
            sent[0] = self._token
            return await self._send_once(method, path, params, sent[0], **dict(kwargs))

        try:
            return await with_retries(self.policy, attempt, f"{method} {path}")
        except AuthError:
            if not await self._refresh_token(sent[0]):
                raise
            return await with_retries(self.policy, attempt, f"{method} {path}")

    async def _refresh_token(self, rejected: str) -> bool:
        """After a 401 for ``rejected``: True if a different token is now available.

        Many requests fail together when a token is revoked; one lock makes them share a single
        re-read, and a request whose token was already replaced simply retries with the new one."""
        async with self._token_lock:
            if self._token != rejected:
                return True
            if self._token_reloader is None:
                return False
            try:
                # A file read: off the trio loop, so a slow home directory cannot stall the mount.
                # Abandoned on cancel (the op timeout, the shutdown): a hung home directory (NFS)
                # must not hold the request, nor the others waiting on this lock, past their bound.
                fresh = await trio.to_thread.run_sync(self._token_reloader, abandon_on_cancel=True)
            except (OSError, ConfigError) as exc:  # a broken config must not crash the caller
                log.warning("re-reading credentials failed: %s", exc)
                return False
            if fresh and fresh != self._token:
                log.warning("API answered 401; retrying with the re-read access token")
                self._token = fresh
                return True
            return False

    async def get_json(self, path: str, params: dict | None = None) -> dict:
        response = await self.request("GET", path, params)
        return _json(response, path)

    async def post_json(self, path: str, params: dict | None = None, json: Any = None) -> dict:
        response = await self.request("POST", path, params, json=json)
        return _json(response, path)

    # -- listings --------------------------------------------------------------------------

    async def list_all(self, path: str, params: dict | None = None, *, v2: bool = False, page_size: int = V1_PAGE_MAX, values: bool = False) -> list:
        """Every item of a paged listing, in server order, de-duplicated by Id.

        ``values=True`` is for lists of values rather than entities (an array property's items):
        items of any JSON type are kept, repeats included, in the server's own order."""
        base = dict(params or {})
        off_key, lim_key = ("offset", "limit") if v2 else ("Offset", "Limit")
        if not v2 and not values:
            base.setdefault("SortBy", "Id")
            base.setdefault("SortDir", "Asc")

        async def page(offset: int) -> tuple[list, int]:
            body = await self.get_json(path, {**base, off_key: offset, lim_key: page_size})
            return _page_items(body, v2, path, values)

        first, total = await page(0)
        pages: dict[int, list[dict]] = {0: first}
        step = len(first)
        if step and total > step:
            # Fetch the remaining pages concurrently, but in bounded waves: a server whose
            # TotalCount lies (huge, or changing between pages) costs at most one wasted wave,
            # never a million requests. A wave that comes back with an empty page ends the walk.
            limiter = trio.CapacityLimiter(PAGE_CONCURRENCY)
            totals = [total]

            async def fetch(offset: int) -> None:
                async with limiter:
                    pages[offset], seen = await page(offset)
                    totals.append(seen)

            offset = step
            while offset < min(total, MAX_LIST_ITEMS):
                wave = [o for o in range(offset, offset + WAVE_PAGES * step, step) if o < min(total, MAX_LIST_ITEMS)]
                await gather([functools.partial(fetch, o) for o in wave])  # a failure: raised plainly
                offset = wave[-1] + step
                if any(not pages[o] for o in wave):
                    break
                total = max(totals)  # a count that grew between pages: keep going

        # Walk the pages in order; a short page (the server may return fewer than asked) or a
        # TotalCount that changed leaves a gap, which is filled by fetching from where it starts.
        items: list[dict] = []
        position = 0
        while position < min(total, MAX_LIST_ITEMS):
            chunk = pages.get(position)
            if chunk is None:
                chunk, seen = await page(position)
                total = max(total, seen)
            if not chunk:
                break
            items.extend(chunk)
            position += len(chunk)
        if position >= MAX_LIST_ITEMS:
            log.warning("%s: listing cut at %d items", path, MAX_LIST_ITEMS)
        return items if values else _dedupe(items)


def _json(response: httpx.Response, path: str) -> dict:
    try:
        body = response.json()
    except NOT_JSON:
        raise ProtocolError(f"GET {path}: response is not JSON") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"GET {path}: response is not a JSON object")
    return body


def _page_items(body: dict, v2: bool, path: str, values: bool = False) -> tuple[list, int]:
    try:
        if v2:
            items = body.get("Items") or []
            total = int((body.get("Paging") or {}).get("TotalCount", len(items)))
        else:
            response = body["Response"]
            items = response.get("Items") or []
            total = int(response.get("TotalCount", len(items)))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):  # OverflowError: a TotalCount of 1e400
        raise ProtocolError(f"GET {path}: not a list envelope") from None
    if not isinstance(items, list):
        raise ProtocolError(f"GET {path}: Items is not a list")
    return (items if values else [i for i in items if isinstance(i, dict)]), max(0, total)


def _dedupe(items: list[dict]) -> list[dict]:
    seen: set[str] = set()
    out = []
    for item in items:
        key = str(item.get("Id", id(item)))
        if key in seen:
            continue
        seen.add(key)
        out.append(item)
    return out
