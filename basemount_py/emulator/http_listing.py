"""The account as a plain HTTP directory tree, for peer filesystems in the benchmark (issue 14).

``GET /_emulator/http/<account-relative folder>/`` answers an HTML page of links (sub-folders end
in ``/``), the shape rclone's ``http`` backend and ``wget -r`` read; ``GET`` or ``HEAD`` of
``/_emulator/http/<account-relative file path>`` serves the file's bytes through the same
:class:`~.responses.StreamResponse` as the signed content URLs, so ranges, ``latency_ms``,
``conn_bandwidth`` and the ``content_bytes`` counter apply to a peer exactly as to the mount.

Paths are the files' keys in the account folder (``Projects/P/Samples/S/Files/x.bam``); they are
looked up in a map built from the account model, never opened as file-system paths. There is no
token and no signature, so the route answers loopback clients only.
"""

from __future__ import annotations

from html import escape
from ipaddress import ip_address
from urllib.parse import quote

from starlette.requests import Request

from .account import Account, FileEntry
from .content import file_response
from .responses import StreamResponse, html_response, xml_response

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
    cached = account.http_tree_index
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
    account.http_tree_index = (files, folders)
    return files, folders


def _listing(folder: str, subdirs: set[str], names: set[str]) -> StreamResponse:
    title = escape("/" + folder)
    links = [f'<a href="{quote(d)}/">{escape(d)}/</a>' for d in sorted(subdirs)]
    links += [f'<a href="{quote(n)}">{escape(n)}</a>' for n in sorted(names)]
    body = f"<!DOCTYPE html><html><head><title>Index of {title}</title></head><body><h1>Index of {title}</h1>\n" + "\n".join(links) + "\n</body></html>\n"
    return html_response(body)


def http_tree(account: Account, request: Request, on_bytes) -> StreamResponse:
    """The listing or the file at ``request.path_params["path"]`` (403 for non-loopback clients)."""
    if not _is_loopback(request):
        return xml_response(403, "AccessDenied", "loopback only")
    path = request.path_params.get("path", "")
    files, folders = _index(account)
    folder = path.rstrip("/")
    if path.endswith("/") or path == "":
        found = folders.get(folder)
        if found is not None:
            return _listing(folder, *found)
    elif path in files:
        return file_response(files[path], request.headers.get("range"), on_bytes)
    elif folder in folders:  # a folder without its trailing slash: send the client to the listing
        return StreamResponse(301, {"Location": quote("/" + HTTP_TREE_PREFIX + folder + "/")})
    return xml_response(404, "NoSuchKey", "The specified key does not exist.")
