"""The account as a plain HTTP directory tree, for peer filesystems in the benchmark (issue 14).

``GET /_emulator/http/<account-relative folder>/`` answers an HTML page of links (sub-folders end
in ``/``), the shape rclone's ``http`` backend and ``wget -r`` read; ``GET`` or ``HEAD`` of
``/_emulator/http/<account-relative file path>`` serves the file's bytes through the same
:class:`~.content.StreamResponse` as the signed content URLs, so ranges, ``latency_ms``,
``conn_bandwidth`` and the ``content_bytes`` counter apply to a peer exactly as to the mount.

Paths are the files' keys in the account folder (``Projects/P/Samples/S/Files/x.bam``); they are
looked up in a map built from the account model, never opened as file-system paths. There is no
token and no signature, so the route answers loopback clients only.
"""

from __future__ import annotations

from email.utils import formatdate
from html import escape
from ipaddress import ip_address
from urllib.parse import quote

from starlette.requests import Request

from .account import Account, FileEntry
from .content import StreamResponse, file_body, parse_range, xml_error

__all__ = ["HTTP_TREE_PREFIX", "http_tree"]

HTTP_TREE_PREFIX = "_emulator/http/"


def _is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def _index(account: Account) -> tuple[dict[str, FileEntry], dict[str, tuple[set[str], set[str]]]]:
    """file key -> entry, folder -> (sub-folder names, file names); cached on the account model."""
    cached = getattr(account, "_http_tree_index", None)
    if cached is not None:
        return cached
    files: dict[str, FileEntry] = {}
    folders: dict[str, tuple[set[str], set[str]]] = {"": (set(), set())}
    for entry in account.files.values():
        parts = entry.key.split("/")
        files[entry.key] = entry
        for depth in range(len(parts)):
            folder = "/".join(parts[:depth])
            subdirs, names = folders.setdefault(folder, (set(), set()))
            if depth == len(parts) - 1:
                names.add(parts[depth])
            else:
                subdirs.add(parts[depth])
    account._http_tree_index = (files, folders)  # type: ignore[attr-defined]  # rebuilt on reload
    return files, folders


def _listing(folder: str, subdirs: set[str], names: set[str]) -> StreamResponse:
    title = escape("/" + folder)
    links = [f'<a href="{quote(d)}/">{escape(d)}/</a>' for d in sorted(subdirs)]
    links += [f'<a href="{quote(n)}">{escape(n)}</a>' for n in sorted(names)]
    body = (
        f"<!DOCTYPE html><html><head><title>Index of {title}</title></head><body><h1>Index of {title}</h1>\n"
        + "\n".join(links)
        + "\n</body></html>\n"
    ).encode()
    return StreamResponse(200, {"Content-Type": "text/html; charset=utf-8"}, body)


def _file(entry: FileEntry, request: Request, on_bytes) -> StreamResponse:
    headers = {
        "Content-Type": entry.content_type,
        "Accept-Ranges": "bytes",
        "ETag": f'"{entry.etag}"',
        "Last-Modified": formatdate(int(entry.mtime), usegmt=True),
    }
    rng = parse_range(request.headers.get("range"), entry.size)
    if rng == "unsatisfiable":
        headers["Content-Range"] = f"bytes */{entry.size}"
        return StreamResponse(416, headers, xml_error("InvalidRange", "The requested range is not satisfiable"))
    status, start, end = 200, 0, entry.size
    if isinstance(rng, tuple):
        status, (start, end) = 206, rng
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry.size}"
    return StreamResponse(status, headers, file_body(entry, start, end), length=end - start, on_bytes=on_bytes)


def http_tree(account: Account, request: Request, on_bytes) -> StreamResponse:
    """The listing or the file at ``request.path_params["path"]`` (403 for non-loopback clients)."""
    if not _is_loopback(request):
        return StreamResponse(403, {"Content-Type": "application/xml"}, xml_error("AccessDenied", "loopback only"))
    path = request.path_params.get("path", "")
    files, folders = _index(account)
    folder = path.rstrip("/")
    if path.endswith("/") or path == "":
        found = folders.get(folder)
        if found is not None:
            return _listing(folder, *found)
    elif path in files:
        return _file(files[path], request, on_bytes)
    elif folder in folders:  # a folder without its trailing slash: send the client to the listing
        return StreamResponse(301, {"Location": quote("/" + HTTP_TREE_PREFIX + folder + "/")})
    return StreamResponse(404, {"Content-Type": "application/xml"}, xml_error("NoSuchKey", "The specified key does not exist."))
