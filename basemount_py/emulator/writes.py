"""Write endpoints of the emulator: projects, app results, uploads, trash, properties, app sessions.

Every write is persisted into the account folder first and then the model is re-read
(``Emulator.reload``, which keeps existing ids), so a restarted emulator serves exactly what the
clients wrote, and the folder stays the single source of truth:

* ``POST v1pre3/projects`` creates ``Projects/<Name>/`` (an existing name returns that project).
* ``POST v1pre3/projects/{id}/appresults`` creates ``Projects/P/AppResults/<Name>/`` with an
  ``.entity.json`` holding ``Status: Running`` and a new ``AppSession`` (``BaseSpaceCLI - <time>``).
* Uploads (``POST v1pre3/appresults/{id}/files``) are streamed to ``ACCOUNT/.uploads/<fid>/`` and
  moved into ``Files/<directory>/<name>`` once complete, so an unfinished upload never shows up
  as a file. Multipart state lives only on disk (``upload.json`` + ``part.<n>``), which is why
  a multipart upload survives an emulator restart. Files that are not complete are neither
  listed nor fetchable (their id answers 403 like any unknown id).
* Trash moves the entity folder to ``ACCOUNT/.trash/<trash id>/item`` (+ ``trash.json``);
  restore moves it back. Ids are hashes of paths, so a restored entity gets its old id back.
* Properties and app-session changes edit ``.entity.json`` (written atomically).

Mutations and reloads are serialised by one lock; their disk I/O goes through the emulator's
``run_blocking`` (a worker thread: it never blocks the event loop; inline in in-process tests on
a mock clock, ``basemount_py.blocking``). Request bodies are read in pieces, paced by ``conn_bandwidth`` like
response bodies, and checked against ``Content-MD5`` when the header is present.
Request paths never become file-system paths: entities are found through the id maps, and the
``name``/``directory`` parameters are validated component by component.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import time
from typing import Any, Callable

import anyio
from starlette.requests import Request

from . import render
from ..entities import COLLECTION, KIND_OF, TRASHABLE, WITH_PROPERTIES, EntityKind
from .account import FILE_SIDECAR_SUFFIX, SYNTHETIC_SUFFIX, AccountError, Entity, bs_date
from .responses import BadRequest, Forbidden, HttpError, bounded_body, envelope, json_response

__all__ = ["write_routes"]

UPLOADS = ".uploads"
TRASH = ".trash"
MAX_PART_NUMBER = 10000
MAX_JSON_BODY = 1024 * 1024
# collection -> kind of the entities whose properties the emulator stores (and that can be referenced)
PROPERTY_OWNERS = {COLLECTION[kind]: kind for kind in WITH_PROPERTIES}
TRASH_TYPE = {
    "project": "DeletedProject",
    "sample": "DeletedSample",
    "appresult": "DeletedAppResult",
    "run": "DeletedRun",
    "appsession": "DeletedAppSession",
}
TRASH_INCLUDES = "FILEDATA+METADATA"


# -- small disk helpers (run in worker threads) ----------------------------------------------


def _safe_component(name: str, what: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\0" in name or len(name.encode("utf-8", "surrogateescape")) > 255:
        raise BadRequest(f"{what} {name!r} is not a valid file or folder name")
    return name


def _folder_name(parent: str, name: str) -> tuple[str, bool]:
    """A free folder name under ``parent`` for an entity called ``name``; True when it differs
    from ``name`` (then ``.entity.json`` carries the real Name)."""
    base = name
    try:
        _safe_component(name, "name")
        if name.startswith("."):
            raise BadRequest("hidden")
    except HttpError:
        base = "entity-" + hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    candidate, n = base, 1
    while os.path.lexists(os.path.join(parent, candidate)):
        n += 1
        candidate = f"{base} ({n})"
    return candidate, candidate != name


def _new_entity_folder(parent: str, name: str, fields: dict[str, Any]) -> str:
    """Make the folder of a created entity called ``name`` under ``parent``, with its
    ``.entity.json`` (``fields``, plus the real Name when the folder had to be named otherwise);
    the folder's name."""
    os.makedirs(parent, exist_ok=True)
    folder, renamed = _folder_name(parent, name)
    full = os.path.join(parent, folder)
    os.mkdir(full)
    if renamed:
        fields = {**fields, "Name": name}
    _write_entity_json(full, fields)
    return folder


def _read_entity_json(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, ".entity.json")
    if not os.path.isfile(path):
        return {}
    with open(path, "rb") as f:
        value = json.loads(f.read())
    return value if isinstance(value, dict) else {}


def _write_entity_json(folder: str, value: dict[str, Any]) -> None:
    tmp = os.path.join(folder, f".entity.json.{secrets.token_hex(4)}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, ensure_ascii=False)
    os.replace(tmp, os.path.join(folder, ".entity.json"))


# -- request helpers ---------------------------------------------------------------------------


async def _json_body(request: Request) -> dict[str, Any]:
    body = await bounded_body(request, MAX_JSON_BODY)
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError:
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    return {k.lower(): v for k, v in value.items()} | {"_raw": value}


async def _body_to_file(em, request: Request, path: str) -> tuple[int, str]:
    """Stream the request body into ``path``; pace it by ``conn_bandwidth``; return (size, md5 hex)."""
    md5 = hashlib.md5()
    size = 0
    started = anyio.current_time()
    fd = await em.run_blocking(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        pending = bytearray()
        async for chunk in request.stream():
            if not chunk:
                continue
            md5.update(chunk)
            size += len(chunk)
            pending += chunk
            if len(pending) >= 1 << 20:
                await em.run_blocking(os.write, fd, bytes(pending))
                pending.clear()
            bandwidth = em.knobs.conn_bandwidth * 1_000_000
            if bandwidth > 0:
                ahead = started + size / bandwidth - anyio.current_time()
                if ahead > 0:
                    await anyio.sleep(ahead)
        if pending:
            await em.run_blocking(os.write, fd, bytes(pending))
    finally:
        await em.run_blocking(os.close, fd)
    return size, md5.hexdigest()


def _check_md5(request: Request, md5_hex: str) -> None:
    header = request.headers.get("content-md5")
    if header is None:
        return
    try:
        expected = base64.b64decode(header.strip(), validate=True).hex()
    except (ValueError, TypeError):
        raise BadRequest("Content-MD5 is not base64") from None
    if expected != md5_hex:
        raise HttpError(400, "The Content-MD5 you specified did not match what was received.", "BASESPACE.FILES.BAD_DIGEST")


def _entity(em, kind: str, entity_id: str) -> Entity:
    e = em.account.get(kind, entity_id)
    if e is None:
        raise Forbidden(render.type_name(kind), access="WRITE")
    return e


def _upload_dir(em, file_id: str) -> str:
    if not file_id.isdigit():  # ids we hand out are digits: nothing else may reach the disk
        raise Forbidden("File", access="WRITE")
    return os.path.join(em.account.root, UPLOADS, file_id)


async def _reload(em, extra_ids: dict | None = None) -> None:
    """Re-read the folder (off the event loop); ``extra_ids`` pins the ids of new entries (the
    id handed out when a multipart upload started stays the file's id)."""
    em.account.ids.update(extra_ids or {})
    await em.run_blocking(em.reload)


async def _apply(em, do, undo, extra_ids: dict | None = None) -> Any:
    """Change the folder, then reload; if the new folder does not load (e.g. a property still
    references a trashed entity), undo the change and answer 409 with the reason."""
    result = await em.run_blocking(do)
    try:
        await _reload(em, extra_ids)
    except AccountError as exc:
        await em.run_blocking(undo)
        raise HttpError(409, f"the change was refused: {exc}", "BASESPACE.COMMON.CONFLICT") from None
    return result


async def _create_folder(em, make: Callable[[], str]) -> str:
    """Run ``make`` (it creates an entity folder and returns its account-relative key), then
    reload; if the account no longer loads, the folder is removed again (``_apply``)."""
    made: list[str] = []

    def do() -> str:
        made.append(make())
        return made[0]

    def undo() -> None:
        shutil.rmtree(os.path.join(em.account.root, *made[0].split("/")), True)

    return await _apply(em, do, undo)


def _snapshot(folders: list[str]):
    """An undo for .entity.json edits: puts back the files as they are now."""
    saved = {}
    for folder in folders:
        path = os.path.join(folder, ".entity.json")
        saved[path] = open(path, "rb").read() if os.path.isfile(path) else None

    def undo() -> None:
        for path, data in saved.items():
            if data is None:
                if os.path.exists(path):
                    os.unlink(path)
            else:
                with open(path, "wb") as f:
                    f.write(data)

    return undo


def _find(em, kind: str, key: str) -> Entity | None:
    for (k, _), e in em.account.by_id.items():
        if k == kind and e.key == key:
            return e
    return None


def _ok(em, request: Request, body: Any, status: int = 200):
    return json_response(envelope(body), status)


# -- projects and app results ------------------------------------------------------------------


async def create_project(em, request: Request):
    body = await _json_body(request)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("Name is required")
    v1 = lambda: render.V1(em.account, str(request.base_url))  # noqa: E731
    async with em.write_lock:
        for p in em.account.projects:
            if p.name == name:
                return _ok(em, request, v1().project(p))
        parent = os.path.join(em.account.root, "Projects")

        def make() -> str:
            folder = _new_entity_folder(parent, name, {"Description": str(body.get("description") or "")})
            return f"Projects/{folder}"

        key = await _create_folder(em, make)
        p = _find(em, "project", key)
        assert p is not None
        return _ok(em, request, v1().project(p), 201)


async def create_appresult(em, request: Request):
    body = await _json_body(request)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("Name is required")
    session_id = request.query_params.get("appsessionid") or request.query_params.get("appSessionId")
    async with em.write_lock:
        project = _entity(em, "project", request.path_params["id"])
        session_spec: dict[str, Any]
        if session_id:
            session = _entity(em, "appsession", session_id)
            if session.project is not project:
                raise BadRequest("the app session belongs to another project")
            session_spec = {"Name": session.name}
        else:
            taken = {s.name for s in em.account.appsessions if s.project is project}
            base = "BaseSpaceCLI - " + time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
            sname, n = base, 1
            while sname in taken:
                n += 1
                sname = f"{base} ({n})"
            session_spec = {"Name": sname, "Status": "Running", "StatusSummary": ""}
        parent = os.path.join(project.folder or "", "AppResults")

        def make() -> str:
            fields: dict[str, Any] = {"Description": str(body.get("description") or ""), "Status": "Running", "AppSession": session_spec}
            references = body.get("references")
            if isinstance(references, list):
                fields["References"] = references
            folder = _new_entity_folder(parent, name, fields)
            return f"{project.key}/AppResults/{folder}"

        key = await _create_folder(em, make)
        r = _find(em, "appresult", key)
        assert r is not None
        return _ok(em, request, render.V1(em.account, str(request.base_url)).appresult(r), 201)


# -- uploads --------------------------------------------------------------------------------------


def _upload_target(em, appresult: Entity, request: Request) -> tuple[str, str]:
    """(name, directory) from the query, validated; refuses Complete app results."""
    q = {k.lower(): v for k, v in request.query_params.items()}
    name = _safe_component(q.get("name", ""), "name")
    if name.endswith(SYNTHETIC_SUFFIX):
        raise BadRequest(f"names ending in {SYNTHETIC_SUFFIX} are reserved by the emulator")
    directory = "/".join(_safe_component(c, "directory") for c in q.get("directory", "").split("/") if c)
    if str(appresult.overrides.get("Status", "Complete")).lower() == "complete":
        raise HttpError(409, f"AppResult {appresult.id} is Complete: no files can be added", "BASESPACE.APPRESULTS.ALREADY_COMPLETE")
    return name, directory


def _final_path(appresult: Entity, name: str, directory: str) -> tuple[str, str]:
    """(disk path, account-relative key) of the uploaded file; refuses clashes."""
    files = os.path.join(appresult.folder or "", "Files")
    rel = f"{directory}/{name}" if directory else name
    full = os.path.join(files, *rel.split("/"))
    # a directory component that is a file (or the file already existing) is a clash
    probe = files
    for part in rel.split("/")[:-1]:
        probe = os.path.join(probe, part)
        if os.path.lexists(probe) and not os.path.isdir(probe):
            raise HttpError(409, f"{rel}: {part} is a file", "BASESPACE.FILES.CONFLICT")
    if os.path.lexists(full) or os.path.lexists(full + SYNTHETIC_SUFFIX):
        raise HttpError(409, f"a file {rel} already exists in this AppResult", "BASESPACE.FILES.CONFLICT")
    return full, f"{appresult.key}/Files/{rel}"


def _new_file_id(em, key: str) -> str:
    from .account import _hash_id

    used = set(em.account.files) | {i for (_k, i) in em.account.by_id}
    attempt = 0
    while True:
        candidate = _hash_id("file", key, attempt)
        if candidate not in used and not os.path.exists(os.path.join(em.account.root, UPLOADS, candidate)):
            return candidate
        attempt += 1


def _install(src: str, dest: str) -> None:
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    os.replace(src, dest)
    now = time.time()
    os.utime(dest, (now, now))


async def upload_file(em, request: Request):
    appresult = _entity(em, "appresult", request.path_params["id"])
    name, directory = _upload_target(em, appresult, request)
    multipart = request.query_params.get("multipart", "").lower() == "true"
    async with em.write_lock:
        _full, key = await em.run_blocking(_final_path, appresult, name, directory)
        file_id = _new_file_id(em, key)
        folder = _upload_dir(em, file_id)
        await em.run_blocking(os.makedirs, folder)
        meta = {
            "Id": file_id,
            "AppResult": appresult.key,
            "Name": name,
            "Directory": directory,
            "ContentType": request.headers.get("content-type", "application/octet-stream"),
            "Created": time.time(),
        }
        await em.run_blocking(_write_json, os.path.join(folder, "upload.json"), meta)
    if multipart:
        pending = {
            "Id": file_id,
            "Href": f"v1pre3/files/{file_id}",
            "Name": name,
            "Path": f"{directory}/{name}" if directory else name,
            "UploadStatus": "pending",
            "Size": 0,
        }
        return _ok(em, request, pending, 201)
    try:
        body_path = os.path.join(folder, "body")
        size, md5_hex = await _body_to_file(em, request, body_path)
        _check_md5(request, md5_hex)
        if size == 0:
            raise BadRequest("BaseSpace does not accept zero-byte files")
        return await _commit(em, request, file_id, meta, body_path)
    finally:
        await em.run_blocking(shutil.rmtree, folder, True)


def _write_json(path: str, value: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def _read_upload(em, file_id: str) -> tuple[str, dict[str, Any]]:
    folder = _upload_dir(em, file_id)
    try:
        with open(os.path.join(folder, "upload.json"), encoding="utf-8") as f:
            return folder, json.load(f)
    except (OSError, ValueError):
        raise Forbidden("File", access="WRITE") from None


async def _commit(em, request: Request, file_id: str, meta: dict[str, Any], data_path: str, etag: str | None = None):
    """Move the finished bytes into the app result's Files/ and serve the new file.

    ``etag``: a multipart upload's ``<md5>-<parts>`` (S3's form, which real BaseSpace shows),
    kept in the file's ``NAME.file.json``; a single upload's ETag is its content MD5."""
    async with em.write_lock:
        appresult = _find(em, "appresult", meta["AppResult"])
        if appresult is None:
            raise HttpError(409, "the AppResult of this upload no longer exists", "BASESPACE.FILES.CONFLICT")
        full, key = await em.run_blocking(_final_path, appresult, meta["Name"], meta["Directory"])
        sidecar = full + FILE_SIDECAR_SUFFIX

        def install() -> None:
            if etag is not None:
                os.makedirs(os.path.dirname(full), exist_ok=True)
                _write_json(sidecar, {"ETag": etag})
            _install(data_path, full)

        def undo() -> None:
            os.replace(full, data_path)
            if os.path.exists(sidecar):
                os.unlink(sidecar)

        await _apply(em, install, undo, {("file", key): file_id})
        entry = em.account.files.get(file_id)
        assert entry is not None
        await em.warm([entry])
        return _ok(em, request, render.V1(em.account, str(request.base_url)).file(entry), 201)


async def upload_part(em, request: Request):
    folder, _meta = await em.run_blocking(_read_upload, em, request.path_params["id"])
    try:
        number = int(request.path_params["n"])
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_PART_NUMBER:
        raise BadRequest(f"part number must be between 1 and {MAX_PART_NUMBER}")
    tmp = os.path.join(folder, f"part.{number}.{secrets.token_hex(4)}.tmp")
    try:
        size, md5_hex = await _body_to_file(em, request, tmp)
        _check_md5(request, md5_hex)
        await em.run_blocking(os.replace, tmp, os.path.join(folder, f"part.{number}"))
    finally:
        if await em.run_blocking(os.path.exists, tmp):
            await em.run_blocking(os.unlink, tmp)
    return _ok(em, request, {"Number": number, "Size": size, "ETag": md5_hex})


def _assemble(folder: str) -> tuple[str, str]:
    """(path of the parts joined in order, the S3 multipart ETag ``md5(part md5s)-<parts>``)."""
    parts = sorted((int(n.split(".")[1]), n) for n in os.listdir(folder) if n.startswith("part.") and n.count(".") == 1)
    if not parts:
        raise BadRequest("no parts were uploaded")
    numbers = [n for n, _ in parts]
    if numbers != list(range(1, len(numbers) + 1)):
        raise BadRequest(f"parts must be numbered 1..N without gaps (got {numbers[:10]}...)")
    out = os.path.join(folder, "assembled")
    digests = b""
    with open(out, "wb") as dest:
        for _, name in parts:
            part_md5 = hashlib.md5()
            with open(os.path.join(folder, name), "rb") as src:
                while piece := src.read(1 << 20):
                    part_md5.update(piece)
                    dest.write(piece)
            digests += part_md5.digest()
    if os.path.getsize(out) == 0:
        raise BadRequest("BaseSpace does not accept zero-byte files")
    return out, f"{hashlib.md5(digests).hexdigest()}-{len(parts)}"


async def file_status(em, request: Request):
    """``POST v1pre3/files/{id}?uploadstatus=complete|aborted``."""
    status = request.query_params.get("uploadstatus", request.query_params.get("uploadStatus", "")).lower()
    folder, meta = await em.run_blocking(_read_upload, em, request.path_params["id"])
    if status == "aborted":
        await em.run_blocking(shutil.rmtree, folder, True)
        return _ok(em, request, {"Id": meta["Id"], "UploadStatus": "aborted"})
    if status != "complete":
        raise BadRequest("uploadstatus must be complete or aborted")
    data, etag = await em.run_blocking(_assemble, folder)
    try:
        return await _commit(em, request, meta["Id"], meta, data, etag)
    finally:
        if not await em.run_blocking(os.path.exists, data):  # installed: the staging folder is done
            await em.run_blocking(shutil.rmtree, folder, True)


# -- trash ------------------------------------------------------------------------------------------


def _trash_item(em, request: Request, tid: str, info: dict[str, Any]) -> dict[str, Any]:
    base = str(request.base_url)
    kind = info["Kind"]
    return {
        "Id": tid,
        "Href": f"{base}v2/trash/{tid}",
        "Name": info["Name"],
        "TrashItemType": TRASH_TYPE.get(kind, "Deleted" + render.type_name(kind)),
        "Includes": TRASH_INCLUDES,
        "DateDeleted": bs_date(info["Deleted"]),
        "DateModified": bs_date(info["Deleted"]),
        "Size": info.get("Size", 0),
        "Entity": {"Id": info["EntityId"], "Type": render.type_name(kind), "Href": f"v1pre3/{kind}s/{info['EntityId']}"},
        "OriginalPath": info["OriginalPath"],
    }


def _trash_entries(root: str) -> list[tuple[str, dict[str, Any]]]:
    folder = os.path.join(root, TRASH)
    out = []
    for tid in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        try:
            with open(os.path.join(folder, tid, "trash.json"), encoding="utf-8") as f:
                out.append((tid, json.load(f)))
        except (OSError, ValueError):
            continue
    return out


def _trash_slots(item_folder: str, info: dict[str, Any]) -> list[tuple[str, str]]:
    """(place inside the trash item, original path relative to the account) of every folder a
    trash item holds: ``item`` for an entity; ``items/0``, ``items/1`` … for the samples and app
    results of an app session (``Members`` in trash.json)."""
    if isinstance(info.get("Members"), list):
        return [(os.path.join(item_folder, "items", str(i)), key) for i, key in enumerate(info["Members"])]
    return [(os.path.join(item_folder, "item"), info["OriginalPath"])]


async def _into_trash(em, info: dict[str, Any]) -> str:
    """Move the folders ``info`` names into a new trash item (all or none); the item's id."""
    root = em.account.root
    tid = str(1_000_000_000 + secrets.randbelow(9_000_000_000))
    dest = os.path.join(root, TRASH, tid)
    pairs = [(os.path.join(root, *key.split("/")), slot) for slot, key in _trash_slots(dest, info)]
    moved: list[tuple[str, str]] = []

    def move() -> None:
        os.makedirs(dest)
        try:
            for original, slot in pairs:
                os.makedirs(os.path.dirname(slot), exist_ok=True)
                os.rename(original, slot)
                moved.append((original, slot))
        except OSError:
            undo()
            raise
        _write_json(os.path.join(dest, "trash.json"), info)

    def undo() -> None:
        for original, slot in reversed(moved):
            os.rename(slot, original)
        moved.clear()
        shutil.rmtree(dest, True)

    await _apply(em, move, undo)
    return tid


async def move_to_trash(em, request: Request):
    collection = request.url.path.strip("/").split("/")[1]
    kind = KIND_OF[collection]
    async with em.write_lock:
        e = _entity(em, kind, request.path_params["id"])
        if not e.folder:
            raise BadRequest(f"this {render.type_name(kind)} cannot be moved to the trash by the emulator")
        size = e.total_size if kind != "project" else em.account.project_total_size(e)
        info = {"Kind": kind, "Name": e.name, "EntityId": e.id, "OriginalPath": e.key, "Deleted": time.time(), "Size": size}
        tid = await _into_trash(em, info)
        return _ok(em, request, _trash_item(em, request, tid, info))


async def move_appsession_to_trash(em, request: Request):
    """``DELETE v2/appsessions/{id}``: the session goes to the trash with its outputs.

    App sessions exist in the account folder only through their samples and app results (their
    ``AppSession`` in .entity.json), so the trash item holds those folders; restoring puts every
    one back."""
    async with em.write_lock:
        session = _entity(em, "appsession", request.path_params["id"])
        members = [e for e in em.account.samples + em.account.appresults if e.appsession is session and e.folder]
        if not members:
            raise BadRequest("this app session has no samples or app results in the account folder to move")
        info = {
            "Kind": "appsession",
            "Name": session.name,
            "EntityId": session.id,
            "OriginalPath": session.key,
            "Members": [e.key for e in members],
            "Deleted": time.time(),
            "Size": sum(e.total_size for e in members),
        }
        tid = await _into_trash(em, info)
        return json_response(_trash_item(em, request, tid, info))


async def list_trash(em, request: Request):
    entries = await em.run_blocking(_trash_entries, em.account.root)
    items = [_trash_item(em, request, tid, info) for tid, info in entries]
    q = {k.lower(): v for k, v in request.query_params.items()}
    offset, limit = int(q.get("offset", 0) or 0), min(int(q.get("limit", 1000) or 1000), 1000)
    page = items[offset : offset + limit]
    return json_response(
        {"Items": page, "Paging": {"DisplayedCount": len(page), "TotalCount": len(items), "Offset": offset, "Limit": limit, "SortDir": "Asc", "SortBy": "Id"}}
    )


def _trash_folder(em, tid: str) -> tuple[str, dict[str, Any]]:
    if not tid.isdigit():
        raise HttpError(404, f"no trash item {tid}", "BASESPACE.TRASH.NOT_FOUND")
    folder = os.path.join(em.account.root, TRASH, tid)
    try:
        with open(os.path.join(folder, "trash.json"), encoding="utf-8") as f:
            return folder, json.load(f)
    except (OSError, ValueError):
        raise HttpError(404, f"no trash item {tid}", "BASESPACE.TRASH.NOT_FOUND") from None


async def get_trash_item(em, request: Request):
    tid = request.path_params["id"]
    _folder, info = await em.run_blocking(_trash_folder, em, tid)
    return json_response(_trash_item(em, request, tid, info))


async def restore_from_trash(em, request: Request):
    tid = request.path_params["id"]
    async with em.write_lock:
        folder, info = await em.run_blocking(_trash_folder, em, tid)
        root = em.account.root
        slots = [(slot, key, os.path.join(root, *key.split("/"))) for slot, key in _trash_slots(folder, info)]
        restored: list[tuple[str, str]] = []

        def move() -> None:
            for _slot, key, original in slots:
                if os.path.lexists(original):
                    raise HttpError(409, f"{key} exists again; cannot restore over it", "BASESPACE.TRASH.CONFLICT")
                if info["Kind"] not in ("project", "run") and not os.path.isdir(os.path.dirname(os.path.dirname(original))):
                    raise HttpError(409, "the project of this item is not there (restore it first)", "BASESPACE.TRASH.CONFLICT")
            for slot, _key, original in slots:  # all checked first: all or none come back
                os.makedirs(os.path.dirname(original), exist_ok=True)
                os.rename(slot, original)
                restored.append((slot, original))

        def undo() -> None:
            for slot, original in reversed(restored):
                os.rename(original, slot)
            restored.clear()

        await _apply(em, move, undo)
        await em.run_blocking(shutil.rmtree, folder, True)
        item = _trash_item(em, request, tid, info)
        item["Restored"] = True
        return json_response(item)


# -- properties and app sessions ------------------------------------------------------------------------


def _href_ref(em, value: Any) -> Any:
    """``"v1pre3/samples/ID"`` (or an object with Href/Id) -> a ``{"Ref": key}`` for .entity.json."""
    href = value.get("Href") if isinstance(value, dict) else value
    if not isinstance(href, str):
        raise BadRequest("reference items must be Href strings like v1pre3/samples/123")
    parts = href.strip("/").split("/")
    if "v1pre3" in parts:
        parts = parts[parts.index("v1pre3") + 1 :]
    if len(parts) != 2 or parts[0] not in PROPERTY_OWNERS:
        raise BadRequest(f"{href!r} is not an entity Href (v1pre3/samples/ID, …)")
    target = em.account.get(PROPERTY_OWNERS[parts[0]], parts[1])
    if target is None or not target.folder:
        raise BadRequest(f"{href!r} does not name an entity")
    return {"Ref": target.key}


async def set_properties(em, request: Request):
    collection = request.url.path.strip("/").split("/")[1]
    kind = PROPERTY_OWNERS.get(collection)
    body = await _json_body(request)
    props = body.get("properties")
    if not isinstance(props, list) or not props:
        raise BadRequest('expected {"Properties": [{"Type", "Name", "Content"|"Items"}]}')
    async with em.write_lock:
        if kind is None:
            raise BadRequest("the emulator stores properties of projects, samples, app results and runs only")
        e = _entity(em, kind, request.path_params["id"])
        clean = []
        for prop in props:
            if not isinstance(prop, dict) or not isinstance(prop.get("Name"), str) or not isinstance(prop.get("Type"), str):
                raise BadRequest("each property needs a string Type and Name")
            name, ptype = prop["Name"], prop["Type"]
            if "." not in name.strip(".") or any(c in name for c in "/\0\n"):
                raise BadRequest(f"property name {name!r} must be namespaced, like Input.my-value")
            base = ptype[:-2] if ptype.endswith("[]") else ptype
            out: dict[str, Any] = {"Type": ptype, "Name": name, "Description": str(prop.get("Description", ""))}
            if base == "string":
                if ptype.endswith("[]"):
                    out["Items"] = [str(i) for i in prop.get("Items") or []]
                else:
                    out["Content"] = str(prop.get("Content", ""))
            elif base in ("project", "sample", "appresult", "run"):
                if ptype.endswith("[]"):
                    out["Items"] = [_href_ref(em, i) for i in prop.get("Items") or []]
                else:
                    out["Content"] = _href_ref(em, prop.get("Content"))
            else:
                raise BadRequest(f"property type {ptype!r} is not supported by the emulator")
            clean.append(out)

        def save() -> None:
            fields = _read_entity_json(e.folder or "")
            existing = [p for p in fields.get("Properties") or [] if isinstance(p, dict)]
            names = {p["Name"] for p in clean}
            fields["Properties"] = [p for p in existing if p.get("Name") not in names] + clean
            _write_entity_json(e.folder or "", fields)

        undo = await em.run_blocking(_snapshot, [e.folder or ""])
        await _apply(em, save, undo)
        e = _entity(em, kind, request.path_params["id"])
        all_props = render.V1(em.account, str(request.base_url)).properties(e)
        return _ok(em, request, {"Items": [p for p in all_props if p.get("Name") in {c["Name"] for c in clean}]})


async def delete_property(em, request: Request):
    """``DELETE v2/{projects,samples,appresults,runs}/{id}/properties/{name}``."""
    kind = PROPERTY_OWNERS.get(request.url.path.strip("/").split("/")[1])
    name = request.path_params["name"]
    async with em.write_lock:
        if kind is None:
            raise BadRequest("the emulator stores properties of projects, samples, app results and runs only")
        e = _entity(em, kind, request.path_params["id"])
        if not any(isinstance(p, dict) and p.get("Name") == name for p in e.properties):
            raise HttpError(404, f"{render.type_name(kind)} {e.id} has no property {name}", "BASESPACE.PROPERTIES.NOT_FOUND")

        def save() -> None:
            fields = _read_entity_json(e.folder or "")
            fields["Properties"] = [p for p in fields.get("Properties") or [] if not (isinstance(p, dict) and p.get("Name") == name)]
            _write_entity_json(e.folder or "", fields)

        undo = await em.run_blocking(_snapshot, [e.folder or ""])
        await _apply(em, save, undo)
        return json_response({"Name": name, "Deleted": True})


async def update_appsession(em, request: Request):
    """``POST v1pre3/appsessions/{id}`` with ``status`` (complete/aborted/...) and/or ``Name``."""
    body = await _json_body(request)
    async with em.write_lock:
        session = _entity(em, "appsession", request.path_params["id"])
        members = [e for e in em.account.samples + em.account.appresults if e.appsession is session and e.folder]
        if not members:
            raise BadRequest("this app session has no app result or sample folder to store its state in")
        changes: dict[str, Any] = {}
        status = body.get("status")
        if status is not None:
            if not isinstance(status, str) or status.lower() not in ("complete", "aborted", "running", "needsattention"):
                raise BadRequest("status must be one of complete, aborted, running, needsattention")
            current = str(session.overrides.get("Status", "Complete")).lower()
            if current == "complete" and status.lower() == "complete":
                raise HttpError(409, f"AppSession {session.id} is already Complete", "BASESPACE.APPSESSIONS.ALREADY_COMPLETE")
            changes["Status"] = {"complete": "Complete", "aborted": "Aborted", "running": "Running", "needsattention": "NeedsAttention"}[status.lower()]
            if body.get("statussummary") is not None:
                changes["StatusSummary"] = str(body["statussummary"])
        name = body.get("name")
        if name is not None:
            if not isinstance(name, str) or not name.strip():
                raise BadRequest("Name must be a non-empty string")
            if any(s.name == name and s is not session for s in em.account.appsessions if s.project is session.project):
                raise HttpError(409, f"an app session named {name!r} exists in this project", "BASESPACE.APPSESSIONS.CONFLICT")
            changes["Name"] = name
        if not changes:
            raise BadRequest("nothing to change: give status and/or Name")

        def save() -> None:
            for e in members:
                fields = _read_entity_json(e.folder or "")
                spec = found if isinstance(found := fields.get("AppSession"), dict) else {"Name": session.name}
                spec.update(changes)
                spec["Id"] = session.id  # a renamed session keeps its id
                fields["AppSession"] = spec
                if "Status" in changes and e.kind == "appresult":
                    fields["Status"] = changes["Status"]
                _write_entity_json(e.folder or "", fields)

        undo = await em.run_blocking(_snapshot, [e.folder or "" for e in members])
        await _apply(em, save, undo)
        session = _entity(em, "appsession", request.path_params["id"])
        return _ok(em, request, render.V1(em.account, str(request.base_url)).appsession(session))


# -- registration ---------------------------------------------------------------------------------------


def write_routes() -> list[tuple[str, str, Any, dict[str, Any]]]:
    """(method, template, handler, options) tuples for ``app.build_app``."""
    routes = [
        ("POST", "v1pre3/projects", create_project),
        ("POST", "v1pre3/projects/{id}/appresults", create_appresult),
        ("POST", "v1pre3/appresults/{id}/files", upload_file),
        ("PUT", "v1pre3/files/{id}/parts/{n}", upload_part),
        ("POST", "v1pre3/files/{id}", file_status),
        ("POST", "v1pre3/appsessions/{id}", update_appsession),
        ("GET", "v2/trash", list_trash),
        ("GET", "v2/trash/{id}", get_trash_item),
        ("POST", "v2/trash/{id}/restorefromtrash", restore_from_trash),
    ]
    for kind in TRASHABLE:
        routes.append(("DELETE", f"v1pre3/{COLLECTION[kind]}/{{id}}", move_to_trash))
    routes.append(("DELETE", "v2/appsessions/{id}", move_appsession_to_trash))
    for collection in (COLLECTION[kind] for kind in (*WITH_PROPERTIES, EntityKind.APPSESSION)):
        routes.append(("POST", f"v1pre3/{collection}/{{id}}/properties", set_properties))
        routes.append(("DELETE", f"v2/{collection}/{{id}}/properties/{{name}}", delete_property))
    return [(m, t, h, {}) for m, t, h in routes]
