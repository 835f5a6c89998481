"""Starlette routes of the BaseSpace API emulator.

``Emulator`` holds the state (account model, token, knobs, counters, device-flow codes,
content-URL signer); ``build_app(emulator)`` returns the ASGI app.

Every route goes through ``_endpoint`` which, in this order: counts the request under its route
template, applies ``latency_ms``, asks the ``FaultInjector`` for a fault (500/503/429 answer at
once; an API "stall" delays the answer; reset/truncate/stall of a body are handed to the
``StreamResponse``), checks the token (API routes), runs the handler, and adds ``X-Request-ID``
and ``Cache-Control: no-cache``.  Debug routes under ``/_emulator`` and the browser page of the
device flow bypass faults and auth (the emulator is meant for loopback only).

Model lookups only go through id -> entity maps built at load time, so request paths never
become file-system paths.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from collections import OrderedDict
from email.utils import formatdate
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

import anyio
from starlette.requests import Request
from starlette.routing import Route, Router

from ..entities import COLLECTION, WITH_FILES, EntityKind
from ..blocking import RunBlocking, in_worker_thread
from . import render
from .account import Account, AccountError, Entity, FileEntry, Ref, bs_date, load_account, resolve_token, warm
from .content import ContentSigner, file_response
from .http_listing import HTTP_TREE_PREFIX, http_tree
from .knobs import Counters, FaultInjector, KnobError, Knobs, RateLimiter
from .responses import (
    JSON_TYPE,
    NO_CACHE_HEADERS,
    UNAUTHORIZED_BODY,
    BadRequest,
    Forbidden,
    bounded_body,
    HttpError,
    StreamResponse,
    envelope,
    error_status,
    html_response,
    json_bytes,
    json_response,
    not_found,
    xml_response,
)
from .writes import write_routes

__all__ = ["Emulator", "build_app", "UNAUTHORIZED_BODY"]

V1_LIMIT_MAX = 1024
FILES_LIMIT_MAX = 1000
DEFAULT_LIMIT = 10
MAX_FORM_BYTES = 64 * 1024
MAX_DEVICE_CODES = 1000
MAX_ISSUED_TOKENS = 1000
DEVICE_CODE_LIFETIME = 1800
DEFAULT_SCOPES = ["BROWSE GLOBAL", "READ GLOBAL", "CREATE GLOBAL", "MOVETOTRASH GLOBAL", "START APPLICATIONS"]

Handler = Callable[["Emulator", Request], Awaitable[StreamResponse]]


class Emulator:
    """All mutable state of one emulator process."""

    def __init__(
        self,
        data_dir: str,
        token: str | None = None,
        knobs: Knobs | None = None,
        clock=time.monotonic,
        wall_clock=time.time,
        run_blocking: RunBlocking = in_worker_thread,
    ):
        """``clock`` paces the rate limiter, ``wall_clock`` dates signed URLs, ``run_blocking`` runs
        the routes' disk I/O (account files, uploads, the trash; ``basemount_py.blocking``):
        injectable so that an in-process test can drive them all on trio's MockClock."""
        self.run_blocking = run_blocking
        self.data_dir = data_dir
        self.account: Account = load_account(data_dir)
        self.token = resolve_token(data_dir, token)
        self.knobs = knobs or Knobs()
        self.faults = FaultInjector(self.knobs)
        self.rate_limiter = RateLimiter(self.knobs, clock)
        self.counters = Counters()
        self.signer = ContentSigner(wall_clock)
        self.started = time.time()
        # device flow: device_code -> state; issued tokens -> info (both bounded, oldest dropped)
        self.device_codes: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.issued: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # Serialises the write routes' changes to the account folder and the reloads (writes.py).
        self.write_lock = anyio.Lock()

    def reload(self) -> None:
        """Re-read the folder; existing entities keep their ids.  On error the old model stays."""
        self.account = load_account(self.data_dir, previous=self.account.ids)

    async def warm(self, files: list[FileEntry]) -> None:
        """Compute the ETags (content MD5s) these files still lack, off the event loop."""
        await warm(files, self.run_blocking)

    def count_content_bytes(self, n: int) -> None:
        """File bytes sent (content URLs and the HTTP tree), for the counters."""
        self.counters.content_bytes += n

    def token_info(self, token: str | None) -> dict[str, Any] | None:
        if not token:
            return None
        if secrets.compare_digest(token.encode(), self.token.encode()):
            return {"client_id": "emulator", "scope": DEFAULT_SCOPES, "created": self.started}
        return self.issued.get(token)


# -- helpers -------------------------------------------------------------------------------


def params(request: Request) -> dict[str, str]:
    """Query parameters with lower-case names (BaseSpace accepts any case)."""
    return {k.lower(): v for k, v in request.query_params.items()}


def _int_param(p: dict[str, str], name: str, default: int) -> int:
    raw = p.get(name.lower())
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {raw!r}") from None
    if value < 0:
        raise BadRequest(f"{name} must be >= 0")
    return value


def _id_key(value: str) -> tuple:
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def _sort_key(item: Entity | FileEntry, field: str) -> Any:
    if field == "Id":
        return _id_key(item.id)
    if field == "Name":
        return (item.name, _id_key(item.id))
    if field == "DateCreated":
        if isinstance(item, FileEntry):
            return (bs_date(item.mtime), _id_key(item.id))
        return (str(item.overrides.get("DateCreated", bs_date(item.created))), _id_key(item.id))
    if field == "Path":
        return (item.path, _id_key(item.id))  # type: ignore[union-attr]
    if field == "Size":
        return (item.size, _id_key(item.id))  # type: ignore[union-attr]
    raise AssertionError(field)


@dataclass(frozen=True)
class V2Sort:
    """The sort fields a v2 listing accepts (swagger-private-v2.json) and its default order."""

    fields: tuple[str, ...]
    default_by: str
    default_dir: str = "Asc"


V2_DATASETS = V2Sort(
    ("Name", "DateCreated", "DateModified", "AppSessionName", "ApplicationName", "ProjectName", "Size", "QcStatus"),
    "DateCreated",
    "Desc",  # recorded: a datasets listing without sortby comes back "DateCreated Desc"
)
V2_BIOSAMPLES = V2Sort(("Id", "BioSampleName", "Nickname", "DateModified", "UserOwnedBy", "Project", "Subject", "LabStatus", "Status"), "Id")
V2_APPSESSIONS = V2Sort(
    ("Name", "Id", "AppId", "ExecutionStatus", "ModifiedOn", "DateCreated", "AppName", "TotalSize", "QcStatus", "DeliveryStatus"),
    "Id",
)
V2_FILES = V2Sort(("Id", "DateCreated", "Path", "Name"), "Id")
# Where a v2 sort field's value sits in the rendered item (the rest sort by the field of that name).
_V2_SORT_PATH = {
    "Size": ("TotalSize",),
    "ProjectName": ("Project", "Name"),
    "AppSessionName": ("AppSession", "Name"),
    "ApplicationName": ("AppSession", "Application", "Name"),
    "AppName": ("Application", "Name"),
    "AppId": ("Application", "Id"),
    "ModifiedOn": ("DateModified",),
    "Project": ("DefaultProject", "Name"),
    "UserOwnedBy": ("UserOwnedBy", "Name"),
}


def _v2_sort_value(item: dict[str, Any], field: str) -> tuple:
    value: Any = item
    for key in _V2_SORT_PATH.get(field, (field,)):
        value = value.get(key) if isinstance(value, dict) else None
    if field == "Id":
        return _id_key(str(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, "" if value is None else str(value))


def _page_window(emulator: Emulator, p: dict[str, str], files: bool) -> tuple[int, int, int]:
    """(offset, limit, how many to show): ``short_pages`` shows fewer than asked."""
    offset = _int_param(p, "Offset", 0)
    limit = min(_int_param(p, "Limit", DEFAULT_LIMIT), FILES_LIMIT_MAX if files else V1_LIMIT_MAX)
    count = limit
    if emulator.knobs.short_pages and limit > 0:
        count = limit // 2 + 1
    return offset, limit, min(count, limit)


def _paging(emulator: Emulator, shown: int, total: int, offset: int, limit: int, sort_by: str, sort_dir: str) -> dict:
    if emulator.knobs.total_count_skew:
        total = max(0, total + emulator.knobs.total_count_skew * (offset // max(1, limit) + 1))
    return {
        "DisplayedCount": shown,
        "TotalCount": total,
        "Offset": offset,
        "Limit": limit,
        "SortDir": sort_dir,
        "SortBy": sort_by,
    }


def paged(
    emulator: Emulator,
    request: Request,
    items: list,
    render_item: Callable[[Any], dict[str, Any]],
    *,
    files: bool = False,
) -> StreamResponse:
    """Sort, page and wrap a v1pre3 listing (default ``Id Asc``, as recorded)."""
    p = params(request)
    offset, limit, count = _page_window(emulator, p, files)
    allowed = ["Id", "Name", "DateCreated"] + (["Path", "Size"] if files else [])
    by_lower = {a.lower(): a for a in allowed}
    sort_by = by_lower.get(p.get("sortby", "Id").lower())
    if sort_by is None:
        raise BadRequest(f"SortBy must be one of {', '.join(allowed)}")
    sort_dir = {"asc": "Asc", "desc": "Desc"}.get(p.get("sortdir", "Asc").lower())
    if sort_dir is None:
        raise BadRequest("SortDir must be Asc or Desc")
    ordered = sorted(items, key=lambda i: _sort_key(i, sort_by), reverse=sort_dir == "Desc")
    page = [_item_json(emulator, request, render_item, i) for i in ordered[offset : offset + count]]
    meta = json_bytes(_paging(emulator, len(page), len(items), offset, limit, sort_by, sort_dir))
    body = b'{"Response":{"Items":[' + b",".join(page) + b"]," + meta[1:] + b',"ResponseStatus":{},"Notifications":[]}'
    return StreamResponse(200, {"Content-Type": JSON_TYPE}, body)


def _item_json(emulator: Emulator, request: Request, render_item: Callable[[Any], dict[str, Any]], item: Any) -> bytes:
    """A list item's JSON, rendered once per account model: real-shaped items are large (a
    sample item embeds its library, genome, projects and owner) and a 5,000-sample project
    is listed again and again.  The model never changes in place (writes reload it), so the
    cache lives on it; the key holds the base URL (v2 Hrefs) and the item form."""
    key = (_base(request), render_item.__name__, id(item))
    cache = emulator.account.rendered
    body = cache.get(key)
    if body is None:
        body = cache[key] = json_bytes(render_item(item))
    return body


def paged_v2(
    emulator: Emulator,
    request: Request,
    items: list,
    render_item: Callable[[Any], dict[str, Any]],
    sort: V2Sort,
    *,
    files: bool = False,
) -> StreamResponse:
    """Sort, page and wrap a v2 listing (``{"Items", "Paging"}``).

    Recorded behaviour: v2 ignores a sort field it does not know (``biosamples?sortby=Name``
    comes back sorted by ``Id``), so an unknown ``sortby``/``sortdir`` falls back to the
    listing's default instead of a 400."""
    p = params(request)
    offset, limit, count = _page_window(emulator, p, files)
    by_lower = {f.lower(): f for f in sort.fields}
    sort_by = by_lower.get(p.get("sortby", "").lower(), sort.default_by)
    sort_dir = {"asc": "Asc", "desc": "Desc"}.get(p.get("sortdir", "").lower(), sort.default_dir)
    rendered = [render_item(i) for i in items]
    rendered.sort(key=lambda d: (_v2_sort_value(d, sort_by), _id_key(str(d.get("Id")))), reverse=sort_dir == "Desc")
    page = rendered[offset : offset + count]
    return json_response({"Items": page, "Paging": _paging(emulator, len(page), len(items), offset, limit, sort_by, sort_dir)})


def filter_files(files: list[FileEntry], directory: str | None, extensions: str | None) -> list[FileEntry]:
    """``Directory``: files whose Path lies under it (recursively); ``Extensions``: name suffixes."""
    out = files
    if directory:
        d = directory.strip().strip("/")
        if d:
            out = [f for f in out if f.path.startswith(d + "/")]
    if extensions:
        exts = [e.strip().lower() for e in extensions.split(",") if e.strip()]
        exts = [e if e.startswith(".") else "." + e for e in exts]
        if exts:
            out = [f for f in out if f.name.lower().endswith(tuple(exts))]
    return out


def _base(request: Request) -> str:
    return str(request.base_url)


async def _hold(knobs: Knobs) -> None:
    """An API stall: the answer waits ``stall_seconds``, a knob read again while it waits, so a
    test that holds a request for as long as it needs (a long stall) releases it by lowering the
    knob instead of waiting out a guessed length."""
    start = anyio.current_time()
    # Polled (every 50 ms at most): a knob is a plain field that any request may set, no event.
    while (left := knobs.stall_seconds - (anyio.current_time() - start)) > 0:  # noqa: ASYNC110
        await anyio.sleep(min(left, 0.05))


def _request_token(request: Request) -> str | None:
    token = request.headers.get("x-access-token")
    if token:
        return token.strip()
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    for k, v in request.query_params.items():
        if k.lower() == "access_token":
            return v
    return None


async def _form(request: Request) -> dict[str, str]:
    """A small urlencoded form body (parsed here: starlette's form parser needs python-multipart)."""
    body = await bounded_body(request, MAX_FORM_BYTES)
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise BadRequest("form body is not UTF-8") from None
    form = {k: v[0] for k, v in parsed.items()}
    # clients may also send the fields as query parameters
    for k, v in request.query_params.items():
        form.setdefault(k, v)
    return form


# -- the endpoint wrapper --------------------------------------------------------------------


def _endpoint(emulator: Emulator, template: str, handler: Handler, *, scope: str = "api", auth: bool = True):
    async def endpoint(request: Request) -> StreamResponse:
        em = emulator
        method = request.method
        em.counters.request(f"{method} {template}")
        k = em.knobs
        fault = None
        if scope != "none":  # "none": the browser page and unknown paths get no latency/faults
            if k.latency_ms > 0:
                await anyio.sleep(k.latency_ms / 1000)
            fault = em.faults.decide(scope)
        if fault is not None:
            em.counters.fault(fault)
        limited = em.rate_limiter.check(_request_token(request) or "") if scope == "api" and fault is None else None
        response: StreamResponse
        if limited is not None:
            em.counters.fault("rate-limit")
            response = _throttled(limited, scope)
        elif fault in ("500", "503"):
            response = _server_error(int(fault), scope)
            fault = None
        elif fault == "429":
            response = _throttled(k.retry_after, scope)
            fault = None
        else:
            if fault == "stall" and scope == "api":
                await _hold(k)
                fault = None
            if auth and em.token_info(_request_token(request)) is None:
                response = json_response(UNAUTHORIZED_BODY, 401)
            else:
                try:
                    response = await handler(em, request)
                except HttpError as exc:  # the one path from a handler's failure to an answer
                    response = exc.response()
        response.headers.setdefault("X-Request-ID", str(uuid.uuid4()))
        if scope != "content":  # the S3-like content host sends no cache headers
            for name, value in NO_CACHE_HEADERS.items():
                response.headers.setdefault(name, value)
        if method == "HEAD":
            response.send_body = False
            response.fault = None
        else:
            response.fault = fault
        response.stall_seconds = k.stall_seconds
        response.bandwidth = k.conn_bandwidth * 1_000_000
        return response

    return endpoint


def _server_error(status: int, scope: str) -> StreamResponse:
    if scope == "content":
        code = "InternalError" if status == 500 else "SlowDown"
        return xml_response(status, code, "We encountered an internal error. Please try again. (injected)")
    return error_status(status, "BASESPACE.COMMON.INTERNAL_ERROR", f"Injected server error {status}")


def _throttled(retry_after: float, scope: str) -> StreamResponse:
    value = f"{retry_after:g}"
    if scope == "content":
        return xml_response(429, "SlowDown", "Please reduce your request rate. (injected)", {"Retry-After": value})
    r = error_status(429, "BASESPACE.COMMON.TOO_MANY_REQUESTS", "Too many requests; retry later (injected)")
    r.headers["Retry-After"] = value
    return r


# -- v1pre3 handlers -------------------------------------------------------------------------


def _get(em: Emulator, kind: str, request: Request, key: str = "id") -> Entity:
    entity = em.account.get(kind, request.path_params[key])
    if entity is None:
        raise Forbidden(render.type_name(kind))
    return entity


def _v1_entity(kind: str) -> Handler:
    async def handler(em: Emulator, request: Request) -> StreamResponse:
        e = _get(em, kind, request)
        await em.warm(_file_refs(e))
        body = render.V1(em.account, _base(request)).entity(e)
        return json_response(envelope(body))

    return handler


async def users_current(em: Emulator, request: Request) -> StreamResponse:
    return json_response(envelope(render.V1(em.account, _base(request)).user()))


async def my_projects(em: Emulator, request: Request) -> StreamResponse:
    v1 = render.V1(em.account, _base(request))
    return paged(em, request, em.account.projects, v1.project_item)


async def my_runs(em: Emulator, request: Request) -> StreamResponse:
    v1 = render.V1(em.account, _base(request))
    return paged(em, request, em.account.runs, v1.run_item)


def _with_status(items: list, render_item: Callable[[Any], dict[str, Any]], statuses: str | None) -> list:
    """BaseSpace's ``Statuses`` / ``status`` filter: a comma list of statuses, any case."""
    if not statuses:
        return items
    wanted = {s.strip().lower() for s in statuses.split(",") if s.strip()}
    return [i for i in items if str(render_item(i).get("Status", "")).lower() in wanted]


def _sessions_of_projects(em: Emulator, p: dict[str, str]) -> list[Entity]:
    """App sessions, filtered by ``output.projects`` (a comma list of project ids) if given."""
    wanted = _ids_param(p, "output.projects")
    if wanted is None:
        return em.account.appsessions
    return [s for s in em.account.appsessions if s.project is not None and s.project.id in wanted]


async def my_appsessions(em: Emulator, request: Request) -> StreamResponse:
    v1 = render.V1(em.account, _base(request))
    p = params(request)
    sessions = _with_status(_sessions_of_projects(em, p), v1.appsession_item, p.get("status") or p.get("statuses"))
    return paged(em, request, sessions, v1.appsession_item)


def _project_children(kind: str) -> Handler:
    async def handler(em: Emulator, request: Request) -> StreamResponse:
        project = _get(em, "project", request)
        v1 = render.V1(em.account, _base(request))
        group = em.account.samples if kind == "sample" else em.account.appresults
        render_item = v1.sample_item if kind == "sample" else v1.appresult_item
        children = _with_status([e for e in group if e.project is project], render_item, params(request).get("statuses"))
        return paged(em, request, children, render_item)

    return handler


def _entity_files(kind: str) -> Handler:
    async def handler(em: Emulator, request: Request) -> StreamResponse:
        e = _get(em, kind, request)
        p = params(request)
        files = filter_files(e.files, p.get("directory"), p.get("extensions"))
        await em.warm(files)
        return paged(em, request, files, render.V1(em.account, _base(request)).file_item, files=True)

    return handler


def _entity_properties(kind: str) -> Handler:
    async def handler(em: Emulator, request: Request) -> StreamResponse:
        e = _get(em, kind, request)
        await em.warm(_file_refs(e))
        p = params(request)
        shown = _int_param(p, "propertyitemslimit", render.PROPERTY_ITEMS_SHOWN)
        props = render.V1(em.account, _base(request)).properties(e, items_limit=shown)
        offset = _int_param(p, "Offset", 0)
        limit = min(_int_param(p, "Limit", DEFAULT_LIMIT * 100), V1_LIMIT_MAX)
        items = props[offset : offset + limit]
        return json_response(
            envelope(
                {
                    "Items": items,
                    "DisplayedCount": len(items),
                    "TotalCount": len(props),
                    "Offset": offset,
                    "Limit": limit,
                    "SortDir": "Asc",
                    "SortBy": "Name",
                }
            )
        )

    return handler


def _property_items(kind: str) -> Handler:
    """``GET v1pre3/{coll}/{id}/properties/{name}/items``: every item of an array property, paged."""

    async def handler(em: Emulator, request: Request) -> StreamResponse:
        e = _get(em, kind, request)
        await em.warm(_file_refs(e))
        values = render.V1(em.account, _base(request)).property_items(e, request.path_params["name"])
        if values is None:
            return not_found()
        p = params(request)
        offset = _int_param(p, "Offset", 0)
        limit = min(_int_param(p, "Limit", DEFAULT_LIMIT), V1_LIMIT_MAX)
        page = values[offset : offset + limit]
        meta = {"DisplayedCount": len(page), "TotalCount": len(values), "Offset": offset, "Limit": limit}
        return json_response(envelope({"Items": page, **meta, "SortDir": "Asc", "SortBy": "DateCreated"}))

    return handler


def _file(em: Emulator, request: Request) -> FileEntry:
    f = em.account.files.get(request.path_params["id"])
    if f is None:
        # recorded: real BaseSpace answers an unknown file id with the 403 of a *Run* resource
        raise Forbidden("Run")
    return f


async def file_meta(em: Emulator, request: Request) -> StreamResponse:
    f = _file(em, request)
    await em.warm([f])
    return json_response(envelope(render.V1(em.account, _base(request)).file(f)))


async def file_properties(em: Emulator, request: Request) -> StreamResponse:
    """``GET v1pre3/files/{id}/properties``: the emulator keeps no file properties (an empty list)."""
    _file(em, request)  # an unknown id answers 403
    p = params(request)
    offset, limit, _count = _page_window(em, p, files=False)
    meta = _paging(em, 0, 0, offset, limit, "Name", "Asc")
    return json_response(envelope({"Items": [], **meta}))


async def file_content(em: Emulator, request: Request) -> StreamResponse:
    """``v1pre3/files/{id}/content`` and ``v2/files/{id}/content``: 302 to the signed URL, or
    ``?redirect=meta`` for the URL as JSON (recorded: v1 envelope; ``Expires`` header = the URL's)."""
    f = _file(em, request)
    await em.warm([f])  # before the URL's lifetime starts: the content host sends the ETag first
    url, expires = em.signer.url(_base(request), f.id, em.knobs.url_lifetime)
    redirect = params(request).get("redirect", "true").lower()
    if redirect == "meta":
        meta = {"Expires": bs_date(expires), "HrefContent": url, "SupportsRange": True}
        body = meta if request.url.path.startswith("/v2/") else envelope(meta)
        return json_response(body, headers={"Expires": formatdate(int(expires), usegmt=True), "Accept-Ranges": "bytes"})
    return StreamResponse(302, {"Location": url, "Content-Type": "text/plain"}, b"")


# -- OAuth device flow -------------------------------------------------------------------------


async def device_authorization(em: Emulator, request: Request) -> StreamResponse:
    form = await _form(request)
    if not form.get("client_id"):
        return json_response({"error": "invalid_request", "error_description": "client_id is required"}, 400)
    if form.get("response_type", "device_code") != "device_code":
        return json_response({"error": "unsupported_response_type", "error_description": "use device_code"}, 400)
    scope = [s.strip() for s in form.get("scope", "").split(",") if s.strip()] or DEFAULT_SCOPES
    device_code = secrets.token_hex(16)
    user_code = "".join(secrets.choice("BCDFGHJKLMNPQRSTVWXZ") for _ in range(8))
    em.device_codes[device_code] = {
        "user_code": user_code,
        "client_id": form["client_id"],
        "scope": scope,
        "approved": False,
        "expires": time.time() + DEVICE_CODE_LIFETIME,
    }
    while len(em.device_codes) > MAX_DEVICE_CODES:
        em.device_codes.popitem(last=False)
    base = _base(request)
    return json_response(
        {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": f"{base}oauth/device",
            "verification_with_code_uri": f"{base}oauth/device?code={user_code}",
            "expires_in": DEVICE_CODE_LIFETIME,
            "interval": 1,
        }
    )


async def device_token(em: Emulator, request: Request) -> StreamResponse:
    form = await _form(request)
    if form.get("grant_type") != "device":
        return json_response({"error": "unsupported_grant_type", "error_description": "use grant_type=device"}, 400)
    state = em.device_codes.get(form.get("code", ""))
    if state is None:
        return json_response({"error": "invalid_grant", "error_description": "unknown or used device code"}, 400)
    if state["expires"] < time.time():
        em.device_codes.pop(form["code"], None)
        return json_response({"error": "expired_token", "error_description": "the device code expired"}, 400)
    if not state["approved"]:
        return json_response({"error": "authorization_pending", "error_description": "User has not yet approved the access request"}, 400)
    em.device_codes.pop(form["code"], None)  # a device code yields one token
    token = secrets.token_hex(16)
    em.issued[token] = {"client_id": state["client_id"], "scope": state["scope"], "created": time.time()}
    while len(em.issued) > MAX_ISSUED_TOKENS:
        em.issued.popitem(last=False)
    return json_response({"access_token": token, "token_type": "Bearer", "expires_in": 31536000})


async def device_page(em: Emulator, request: Request) -> StreamResponse:
    code = params(request).get("code", "").strip().upper()
    for state in em.device_codes.values():
        if state["user_code"] == code and state["expires"] >= time.time():
            state["approved"] = True
            return html_response("<!doctype html><title>BaseSpace emulator</title><p>Access approved. You can return to your terminal.</p>")
    return html_response("<!doctype html><title>BaseSpace emulator</title><p>Unknown or expired code.</p>", 404)


async def token_current(em: Emulator, request: Request) -> StreamResponse:
    token = _request_token(request) or ""
    info = em.token_info(token) or {}
    v1 = render.V1(em.account, _base(request))
    client_id = str(info.get("client_id", "emulator"))
    return json_response(
        envelope(
            {
                "Id": hashlib.sha256(token.encode()).hexdigest()[:32],
                "AccessToken": token[:4] + "…",
                "Application": {
                    "Id": client_id,
                    "Href": f"v1pre3/applications/{client_id}",
                    "Name": "BaseSpace API emulator" if client_id == "emulator" else client_id,
                },
                "UserResourceOwner": v1.user_compact(),
                "Status": "Active",
                "DateCreated": bs_date(info.get("created", em.started)),
                "Scopes": list(info.get("scope", DEFAULT_SCOPES)),
            }
        )
    )


# -- v2 handlers ---------------------------------------------------------------------------------


def _ids_param(p: dict[str, str], name: str) -> set[str] | None:
    raw = p.get(name)
    if raw is None or raw == "":
        return None
    return {x.strip() for x in raw.split(",") if x.strip()}


async def v2_biosamples(em: Emulator, request: Request) -> StreamResponse:
    a = em.account
    items = a.biosamples
    projects = _ids_param(params(request), "projectid")
    if projects is not None:
        with_datasets = {d.biosample.id for d in a.datasets if d.project and d.project.id in projects and d.biosample}
        items = [b for b in items if (b.default_project and b.default_project.id in projects) or b.id in with_datasets]
    return paged_v2(em, request, items, render.V2(a, _base(request)).biosample, V2_BIOSAMPLES)


async def v2_biosample(em: Emulator, request: Request) -> StreamResponse:
    return json_response(render.V2(em.account, _base(request)).biosample(_get(em, "biosample", request)))


def _dataset_type_filter(raw: str | None, v2: render.V2):
    """``datasettypes``: a comma list; ``x`` is that type, ``~x`` that type or any type conforming
    to it (recorded: ``~common.fastq`` answers ``illumina.fastq.v1.8`` datasets), ``!x`` excludes x."""
    terms = [t.strip() for t in (raw or "").split(",") if t.strip()]
    if not terms:
        return None
    include = [t for t in terms if not t.startswith("!")]
    exclude = {t[1:] for t in terms if t.startswith("!")}

    def keep(d: Entity) -> bool:
        dtype = v2.dataset_type(d)
        ids = {dtype["Id"]} | set(dtype["ConformsToIds"])
        if dtype["Id"] in exclude:
            return False
        if not include:
            return True
        return any(dtype["Id"] == t if not t.startswith("~") else t[1:] in ids for t in include)

    return keep


def _datasets(em: Emulator, request: Request, items: list[Entity]) -> StreamResponse:
    p = params(request)
    v2 = render.V2(em.account, _base(request))
    keep = _dataset_type_filter(p.get("datasettypes"), v2)
    if keep is not None:
        items = [d for d in items if keep(d)]
    sessions = _ids_param(p, "appsessionids")
    if sessions is not None:
        items = [d for d in items if d.appsession is not None and d.appsession.id in sessions]
    include = {x.strip().lower() for x in p.get("include", "").split(",")}
    with_properties = "properties" in include
    return paged_v2(em, request, items, lambda d: v2.dataset(d, with_properties=with_properties), V2_DATASETS)


async def v2_datasets(em: Emulator, request: Request) -> StreamResponse:
    p = params(request)
    items = em.account.datasets
    projects = _ids_param(p, "projectid")
    if projects is not None:
        items = [d for d in items if d.project is not None and d.project.id in projects]
    biosamples = _ids_param(p, "inputbiosamples")
    if biosamples is not None:
        items = [d for d in items if d.biosample is not None and d.biosample.id in biosamples]
    return _datasets(em, request, items)


async def v2_project_datasets(em: Emulator, request: Request) -> StreamResponse:
    project = _get(em, "project", request)
    return _datasets(em, request, [d for d in em.account.datasets if d.project is project])


async def v2_dataset(em: Emulator, request: Request) -> StreamResponse:
    return json_response(render.V2(em.account, _base(request)).dataset_detail(_get(em, "dataset", request)))


async def v2_dataset_files(em: Emulator, request: Request) -> StreamResponse:
    d = _get(em, "dataset", request)
    p = params(request)
    files = filter_files(d.files, p.get("directory"), p.get("extensions"))
    await em.warm(files)
    return paged_v2(em, request, files, render.V2(em.account, _base(request)).file, V2_FILES, files=True)


async def v2_file(em: Emulator, request: Request) -> StreamResponse:
    f = _file(em, request)
    await em.warm([f])
    return json_response(render.V2(em.account, _base(request)).file(f))


async def v2_appsessions(em: Emulator, request: Request) -> StreamResponse:
    """``GET v2/appsessions``: ``output.projects`` (comma list of project ids), paged like v2."""
    sessions = _sessions_of_projects(em, params(request))
    return paged_v2(em, request, sessions, render.V2(em.account, _base(request)).appsession, V2_APPSESSIONS)


async def v2_users_current(em: Emulator, request: Request) -> StreamResponse:
    return json_response(render.V2(em.account, _base(request)).user())


async def run_samples(em: Emulator, request: Request) -> StreamResponse:
    """``GET v1pre3/runs/{id}/samples``: the samples whose properties name the run (``Input.Runs``)."""
    run = _get(em, "run", request)
    samples = [s for s in em.account.samples if run in _referenced(s.properties)]
    return paged(em, request, samples, render.V1(em.account, _base(request)).sample_item)


def _file_refs(e: Entity) -> list[FileEntry]:
    return [t for t in _referenced(e.properties) if isinstance(t, FileEntry)]


def _referenced(value: Any) -> list[Any]:
    """Every Ref target inside property values."""
    if isinstance(value, Ref):
        return [value.target]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _referenced(v)]
    if isinstance(value, list):
        return [t for v in value for t in _referenced(v)]
    return []


# -- the content host --------------------------------------------------------------------------


async def content(em: Emulator, request: Request) -> StreamResponse:
    file_id = request.path_params["file_id"]
    q = request.query_params
    problem = em.signer.check(file_id, q.get("Expires"), q.get("Signature"))
    if problem:
        return xml_response(403, "AccessDenied", problem)
    entry = em.account.files.get(file_id)
    if entry is None:  # removed by a reload after the URL was issued
        return xml_response(404, "NoSuchKey", "The specified key does not exist.")
    if entry.archived:  # what S3 answers for an object in archival (Glacier) storage
        return xml_response(403, "InvalidObjectState", "The operation is not valid for the object's storage class")
    await em.warm([entry])
    return file_response(entry, request.headers.get("range"), em.count_content_bytes, attachment=True, run_blocking=em.run_blocking)


async def http_tree_route(em: Emulator, request: Request) -> StreamResponse:
    """The account as a plain HTTP directory tree for peer filesystems (http_listing.py)."""
    return http_tree(em.account, request, em.count_content_bytes)


# -- debug endpoints ---------------------------------------------------------------------------


async def debug_counters(em: Emulator, request: Request) -> StreamResponse:
    return json_response(em.counters.to_dict())


async def debug_counters_reset(em: Emulator, request: Request) -> StreamResponse:
    em.counters.reset()
    return json_response(em.counters.to_dict())


async def debug_knobs(em: Emulator, request: Request) -> StreamResponse:
    if request.method == "POST":
        raw = await request.body()
        try:
            changes = json.loads(raw or b"{}")
            em.knobs.merge(changes)
        except (ValueError, KnobError) as exc:
            return json_response({"error": str(exc)}, 400)
    return json_response(em.knobs.to_dict())


async def debug_token(em: Emulator, request: Request) -> StreamResponse:
    """Replace the accepted token (token-rotation tests); the old one gets 401 from now on."""
    try:
        token = json.loads(await request.body() or b"{}").get("token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token.strip():
        return json_response({"error": 'expected {"token": "<new token>"}'}, 400)
    em.token = token.strip()
    return json_response({"rotated": True})


async def debug_reload(em: Emulator, request: Request) -> StreamResponse:
    try:
        em.reload()
    except AccountError as exc:
        return json_response({"error": str(exc)}, 400)
    a = em.account
    return json_response({"projects": len(a.projects), "runs": len(a.runs), "datasets": len(a.datasets), "files": len(a.files)})


async def unknown_path(em: Emulator, request: Request) -> StreamResponse:
    return not_found()


# -- assembly ------------------------------------------------------------------------------------


def build_app(emulator: Emulator) -> Router:
    routes: list[tuple[str, str, Handler, dict[str, Any]]] = [
        ("GET", "v1pre3/users/current", users_current, {}),
        ("GET", "v1pre3/users/current/projects", my_projects, {}),
        ("GET", "v1pre3/users/current/runs", my_runs, {}),
        ("GET", "v1pre3/users/current/appsessions", my_appsessions, {}),
        ("GET", "v1pre3/projects/{id}", _v1_entity("project"), {}),
        ("GET", "v1pre3/projects/{id}/samples", _project_children("sample"), {}),
        ("GET", "v1pre3/projects/{id}/appresults", _project_children("appresult"), {}),
        ("GET", "v1pre3/files/{id}", file_meta, {}),
        ("GET", "v1pre3/files/{id}/content", file_content, {}),
        ("POST", "v1pre3/oauthv2/deviceauthorization", device_authorization, {"auth": False}),
        ("POST", "v1pre3/oauthv2/token", device_token, {"auth": False}),
        ("GET", "v1pre3/oauthv2/token/current", token_current, {}),
        ("GET", "v2/biosamples", v2_biosamples, {}),
        ("GET", "v2/biosamples/{id}", v2_biosample, {}),
        ("GET", "v2/datasets", v2_datasets, {}),
        ("GET", "v2/datasets/{id}", v2_dataset, {}),
        ("GET", "v2/datasets/{id}/files", v2_dataset_files, {}),
        ("GET", "v2/projects/{id}/datasets", v2_project_datasets, {}),
        ("GET", "v2/files/{id}", v2_file, {}),
        ("GET", "v2/files/{id}/content", file_content, {}),
        ("GET", "v2/appsessions", v2_appsessions, {}),
        ("GET", "v2/users/current", v2_users_current, {}),
        ("GET", "v1pre3/runs/{id}/samples", run_samples, {}),
        ("GET", "v1pre3/files/{id}/properties", file_properties, {}),
    ]
    K = EntityKind
    for kind in (K.SAMPLE, K.APPRESULT, K.RUN, K.APPSESSION):
        routes.append(("GET", f"v1pre3/{COLLECTION[kind]}/{{id}}", _v1_entity(kind), {}))
    for kind in WITH_FILES:
        routes.append(("GET", f"v1pre3/{COLLECTION[kind]}/{{id}}/files", _entity_files(kind), {}))
    for kind in (K.SAMPLE, K.APPRESULT, K.RUN, K.APPSESSION, K.PROJECT):
        routes.append(("GET", f"v1pre3/{COLLECTION[kind]}/{{id}}/properties", _entity_properties(kind), {}))
        routes.append(("GET", f"v1pre3/{COLLECTION[kind]}/{{id}}/properties/{{name}}/items", _property_items(kind), {}))
    routes += write_routes()  # projects, app results, uploads, trash, properties (writes.py)

    starlette_routes = []
    for method, template, handler, opts in routes:
        starlette_routes.append(Route("/" + template, _endpoint(emulator, template, handler, **opts), methods=[method]))
    raw: dict[str, Any] = {"auth": False, "scope": "none"}
    starlette_routes += [
        Route("/_content/{file_id}", _endpoint(emulator, "content", content, scope="content", auth=False), methods=["GET", "HEAD"]),
        Route("/oauth/device", _endpoint(emulator, "oauth/device", device_page, **raw), methods=["GET"]),
        Route(
            "/" + HTTP_TREE_PREFIX + "{path:path}",
            _endpoint(emulator, "http tree", http_tree_route, scope="content", auth=False),
            methods=["GET", "HEAD"],
        ),
        Route("/_emulator/counters", _debug(emulator, debug_counters), methods=["GET"]),
        Route("/_emulator/counters/reset", _debug(emulator, debug_counters_reset), methods=["POST"]),
        Route("/_emulator/knobs", _debug(emulator, debug_knobs), methods=["GET", "POST"]),
        Route("/_emulator/reload", _debug(emulator, debug_reload), methods=["POST"]),
        Route("/_emulator/token", _debug(emulator, debug_token), methods=["POST"]),
        Route(
            "/{path:path}",
            _endpoint(emulator, "unknown", unknown_path, **raw),
            methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"],
        ),
    ]
    return Router(routes=starlette_routes)


def _debug(emulator: Emulator, handler: Handler):
    async def endpoint(request: Request) -> StreamResponse:
        return await handler(emulator, request)

    return endpoint
