"""Manifests: a JSON snapshot of the API listings under one folder, served without listing calls.

On a cluster every array task that mounts BaseSpace would list the same folders again. Instead,
``basemount-py manifest PATH > FILE`` walks PATH once (on a login node) and records every raw
API listing the walk needed, the ones of PATH's ancestors included; ``mount --manifest FILE``
then answers those listings from the file (like dxfuse's manifest). Only content still comes from
BaseSpace: opening a file resolves its signed URL (one call per file), so a job that reads one
file costs the token check at mount plus that call. The single-entity GETs the tree makes for
its lazy entries (a sample's app session link, ``SampleProperties``) are recorded the same way.

The snapshot is recorded below ``Layout`` (at ``list_all``), so a manifest mount builds its tree
with the very same code as a live one, and hostile data in a manifest meets the same defences as
hostile data from a server. A listing the manifest lacks (a folder outside PATH) fails with
``OutsideManifestError`` and the folder's ``.error`` says why. The mount is a snapshot: refresh
re-reads the manifest, never the server.

File format (version 1)::

    {"format": "basemount_py-manifest", "version": 1, "api_server": "https://...",
     "root": "Projects/P/Samples", "created": 1700000000.0,
     "listings": [{"path": "v1pre3/...", "params": {"K": "V"}, "v2": false, "values": false,
                   "items": [...]}, ...],
     "documents": [{"path": "v1pre3/samples/1", "params": {}, "body": {...}}, ...]}
"""

from __future__ import annotations

import time
from typing import Any

from ..api.client import BaseSpaceClient
from ..api.errors import NotADirectory, NotFound, OutsideManifestError
from ..jsonfile import JsonFileError, read_json_file
from .filesystem import Tree
from .layout import Layout
from .nodes import DIR, Node

__all__ = ["ManifestError", "ManifestApi", "RecordingApi", "make_manifest", "load_manifest", "FORMAT", "VERSION"]

FORMAT = "basemount_py-manifest"
VERSION = 1
MAX_MANIFEST_BYTES = 512 * 2**20  # a manifest is read whole into memory
SKIPPED = (".Trash",)  # never part of a snapshot: trash is not pipeline input

ListingKey = tuple[str, tuple[tuple[str, str], ...], bool, bool]


class ManifestError(Exception):
    """An unusable manifest file or PATH; the message is the one line the user sees."""


def _key(path: str, params: dict | None, v2: bool, values: bool) -> ListingKey:
    return (path, tuple(sorted((str(k), str(v)) for k, v in (params or {}).items())), bool(v2), bool(values))


class RecordingApi:
    """Stands in for the client under ``Layout``: passes listings through and keeps them."""

    def __init__(self, api: BaseSpaceClient):
        self.api = api
        self.api_server = api.api_server
        self.listings: dict[ListingKey, list] = {}
        self.documents: dict[ListingKey, dict] = {}

    async def list_all(self, path: str, params: dict | None = None, *, v2: bool = False, page_size: int = 1024, values: bool = False) -> list:
        items = await self.api.list_all(path, params, v2=v2, page_size=page_size, values=values)
        self.listings[_key(path, params, v2, values)] = items
        return items

    async def get_json(self, path: str, params: dict | None = None) -> dict:
        body = await self.api.get_json(path, params)
        self.documents[_key(path, params, False, False)] = body
        return body


class ManifestApi:
    """Stands in for the client under ``Layout`` in a ``--manifest`` mount: listings come from
    the manifest (no call), anything else goes to the real client."""

    def __init__(self, api: BaseSpaceClient, manifest: dict[str, Any]):
        self.api = api
        self.api_server = api.api_server
        self.root = manifest["root"]
        self.listings: dict[ListingKey, list] = manifest["listings"]
        self.documents: dict[ListingKey, dict] = manifest["documents"]

    def _missing(self) -> OutsideManifestError:
        return OutsideManifestError(f"not in the manifest (it holds /{self.root} and the folders above it)")

    async def list_all(self, path: str, params: dict | None = None, *, v2: bool = False, page_size: int = 1024, values: bool = False) -> list:
        items = self.listings.get(_key(path, params, v2, values))
        if items is None:
            raise self._missing()
        return list(items)

    async def get_json(self, path: str, params: dict | None = None) -> dict:
        body = self.documents.get(_key(path, params, False, False))
        if body is None:
            raise self._missing()
        return body

    def __getattr__(self, name: str) -> Any:
        return getattr(self.api, name)


# -- making one ----------------------------------------------------------------------------------


def split_path(text: str) -> tuple[str, ...]:
    parts = tuple(p for p in text.strip().split("/") if p not in ("", "."))
    if ".." in parts:
        raise ManifestError(f"PATH {text!r} may not contain '..'")
    return parts


async def make_manifest(api: BaseSpaceClient, path: tuple[str, ...]) -> dict[str, Any]:
    """Walk ``path`` (relative to the mount root) and everything below it; return the manifest."""
    recorder = RecordingApi(api)
    tree = Tree(Layout(recorder))  # type: ignore[arg-type]  # duck-typed: Layout only lists
    node = tree.nodes[1]
    for depth, name in enumerate(path):
        try:
            node = await tree.child(node, name)
        except (NotFound, NotADirectory):
            raise ManifestError(f"no folder {'/'.join(path[: depth + 1])} in this account") from None
    if node.type != DIR:
        raise ManifestError(f"{'/'.join(path) or '/'} is not a folder")
    await _walk(tree, node)
    return {
        "format": FORMAT,
        "version": VERSION,
        "api_server": api.api_server.rstrip("/"),
        "root": "/".join(path),
        "created": time.time(),
        "listings": [
            {"path": p, "params": dict(params), "v2": v2, "values": values, "items": items} for (p, params, v2, values), items in recorder.listings.items()
        ],
        "documents": [{"path": p, "params": dict(params), "body": body} for (p, params, _, _), body in recorder.documents.items()],
    }


async def _walk(tree: Tree, node: Node) -> None:
    for child in (await tree.children(node)).values():
        try:
            await tree.layout.resolve(child)  # lazy entries: their GETs go into the manifest too
        except NotFound:
            pass
        if child.type == DIR and child.name not in SKIPPED:
            await _walk(tree, child)


# -- reading one ---------------------------------------------------------------------------------


def load_manifest(path: str, api_server: str) -> dict[str, Any]:
    """Read and check a manifest file; ``ManifestError`` says what is wrong with it."""
    try:
        data = read_json_file(path, "manifest", MAX_MANIFEST_BYTES)
    except JsonFileError as exc:
        raise ManifestError(str(exc)) from None
    try:
        return _check(data, api_server)
    except ManifestError as exc:
        raise ManifestError(f"manifest {path}: {exc}") from None


def _check(data: Any, api_server: str) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError("not a basemount_py manifest (make one with: basemount-py manifest PATH > FILE)")
    if data.get("version") != VERSION:
        raise ManifestError(f"version {data.get('version')!r} is not supported (this basemount_py reads version {VERSION})")
    made_for = data.get("api_server")
    if not isinstance(made_for, str) or made_for.rstrip("/") != api_server.rstrip("/"):
        raise ManifestError(f"it was made against {made_for!r}, not the API server in use ({api_server.rstrip('/')})")
    root = data.get("root")
    if not isinstance(root, str):
        raise ManifestError('"root" must be a string')
    listings, documents = data.get("listings"), data.get("documents", [])
    if not isinstance(listings, list) or not isinstance(documents, list):
        raise ManifestError('"listings" and "documents" must be lists')
    table: dict[ListingKey, list] = {}
    for number, entry in enumerate(listings):
        where = f"listing {number}"
        path, params = _check_request(entry, where)
        items, v2, values = entry.get("items"), entry.get("v2", False), entry.get("values", False)
        if not isinstance(v2, bool) or not isinstance(values, bool):
            raise ManifestError(f"{where}: v2 and values must be true or false")
        if not isinstance(items, list) or (not values and not all(isinstance(i, dict) for i in items)):
            raise ManifestError(f"{where}: items must be a list of objects")
        table[_key(path, params, v2, values)] = items
    bodies: dict[ListingKey, dict] = {}
    for number, entry in enumerate(documents):
        where = f"document {number}"
        path, params = _check_request(entry, where)
        if not isinstance(entry.get("body"), dict):
            raise ManifestError(f"{where}: body must be an object")
        bodies[_key(path, params, False, False)] = entry["body"]
    return {"root": root, "listings": table, "documents": bodies, "created": data.get("created")}


def _check_request(entry: Any, where: str) -> tuple[str, dict]:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where} is not an object")
    path, params = entry.get("path"), entry.get("params", {})
    if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
        raise ManifestError(f"{where}: bad API path {str(path)[:80]!r}")
    if not isinstance(params, dict) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in params.values()):
        raise ManifestError(f"{where}: params must map names to strings or integers")
    return path, params
