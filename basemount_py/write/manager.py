"""Write mode: what mkdir, rmdir, create, write, close, symlink and the write commands do.

``core.Filesystem`` hands nodes from the tree to these methods; the adapter maps the
``WriteFailure`` (an ``OSError`` carrying errno + message) they raise. Every failure is also
written to the folder's ``.error``, so scripts and ``basemount-cmd`` can show the reason.

Only these writes exist (everything else stays read-only, EROFS):

* ``mkdir Projects/NAME`` creates a project; ``mkdir Projects/P/AppResults/NAME`` an app result
  with its app session (Running); ``mkdir`` inside a Running app result's ``Files/`` makes a
  local folder (BaseSpace has no empty folders: it exists in this mount until files land in it).
* Files created in a Running app result's ``Files/`` are uploaded (``upload.py``); they appear
  at once as "pending" entries and become the server's file when the upload is committed.
* ``rmdir`` of a project, sample, app result, app session or run moves it to the trash. As in
  BaseMount, a failed delete of anything else (``rm -rf`` walking into hidden files) blocks every
  delete for 5 s, so ``rm -rf Projects/P`` cannot trash a project by accident.
* Properties: a file under ``Properties/`` sets a string property; a symlink to an entity folder
  adds a reference (``properties.py``).

After each write the cached listings it affects are dropped (or, for an upload, the new file is
added to the cached listing) so the new entity shows up at once.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import posixpath
import time
from typing import Any, Iterator

import trio

from ..api.client import BaseSpaceClient
from ..api.errors import ApiError, FsError, errno_for
from ..blocking import RunBlocking, in_worker_thread
from ..entities import WITH_PROPERTIES
from ..tree import DIR, SYMLINK, TEXT, Node, NotFound, Tree
from ..tree.nodes import (
    TRASHABLE_FOLDERS,
    UPLOAD,
    Dynamic,
    EntityRef,
    FilesRef,
    FolderKind,
    Owner,
    ProjectScope,
    PropertiesRef,
    PropertyRef,
    PropItemsRef,
    text_node,
)
from ..tree.layout import properties_href
from .api import WriteApi
from .properties import MAX_BYTES, entity_href, item_href
from .spool import COMMITTED, FAILED, FILE, OPEN, PENDING, PROPERTY, UPLOADING, Spool, SpoolEntry, SpoolFull
from .upload import UploadConfig, WriteFailure
from .uploader import Uploader, left_by_rsync

log = logging.getLogger(__name__)

# Why the next mount keeps a file still under rsync's temp name instead of uploading it (_resume).
RSYNC_TEMP_KEPT = (
    "an rsync temp file that was never renamed (the mount stopped in between); kept in the spool: "
    "run rsync again, then remove it, or retry it to upload it under this name"
)

DELETE_GUARD_SECONDS = 5.0
FOLDER_QUIET_SECONDS = 1.0  # after a lookup in a folder, its pending uploads wait this long (a rename may follow)
COMPLETE_WAIT_SECONDS = 30.0  # mark-as-complete waits this long for the app result's uploads
STATUS_NAME = ".uploads"  # the hidden status file at the mount's top
MAX_ERROR_LINES = 50  # .error of one folder keeps this many failures


class WriteManager:
    def __init__(
        self,
        tree: Tree,
        client: BaseSpaceClient,
        spool: Spool,
        cfg: UploadConfig | None = None,
        mountpoint: str = "/",
        fetch: Any = None,
        run_blocking: RunBlocking = in_worker_thread,
    ):
        # Spool file I/O, hashing: worker threads in a mount, inline in tests on a mock clock.
        self.run_blocking = run_blocking
        self.tree = tree
        self.layout = tree.layout
        self.api = WriteApi(client)
        self.cfg = cfg or UploadConfig()
        self.mountpoint = mountpoint.rstrip("/") or "/"
        self.spool = spool
        self.uploader = Uploader(self.api, client, spool, self.cfg, self._committed, self._failed, fetch, run_blocking)
        self._handles: dict[str, int] = {}  # spool entry id -> open file handles
        self.unavailable = ""  # why the spool cannot be used (then no file can be written)
        self._nursery: trio.Nursery | None = None
        self._blocked_until = 0.0
        self.uploads_committed = 0
        self.layout.upload_errors = self.upload_errors
        # The hidden status file at the top (basemount-py status reads it).
        status = text_node((STATUS_NAME,), b"", hidden=True)
        status.dynamic, status.render = Dynamic.STATUS, self.status_text
        self.layout.local.setdefault((), {})[STATUS_NAME] = status

    async def __aenter__(self) -> "WriteManager":
        try:
            adopted = await self.run_blocking(self.spool.open)
        except OSError as exc:  # the mount still reads; writing files needs the spool
            self.unavailable = (
                f"the upload spool {self.spool.account_dir} cannot be used ({exc.strerror or exc}); "
                "files cannot be written in this mount (choose a writable --cache-dir)"
            )
            log.warning("%s", self.unavailable)
            adopted = []
        self._cm = trio.open_nursery()
        self._nursery = await self._cm.__aenter__()
        self.uploader.start(self._nursery)
        await self._resume(adopted)
        if self.spool.owed:  # aborts an earlier daemon of this account could not make
            self._nursery.start_soon(self.uploader.abort_owed)
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        self.uploader.stop()  # a commit waiting on a hung server too: the next mount checks and finishes it
        try:
            return await self._cm.__aexit__(*exc)
        finally:
            left = len(self.spool.entries)
            if left:
                log.warning("%d upload(s) left in the spool %s: they resume at the next mount of this account", left, self.spool.session)
            self.spool.close()

    # -- errors and cache invalidation --------------------------------------------------------------

    def fail(self, folder: tuple[str, ...], code: int, message: str) -> WriteFailure:
        log.warning("%s: %s", "/" + "/".join(folder), message)
        return self._report(folder, WriteFailure(code, message))

    def _report(self, folder: tuple[str, ...], exc: WriteFailure) -> WriteFailure:
        # every failure in the folder, not only the last (bounded), until a write there succeeds
        lines = [line for line in self.layout.write_errors.get(folder, "").splitlines(keepends=True) if line.strip()]
        line = f"Error: {exc.message}\n"
        if line not in lines:
            lines = (lines + [line])[-MAX_ERROR_LINES:]
        self.layout.write_errors[folder] = "".join(lines)
        return exc

    def _drop_listing(self, *paths: tuple[str, ...], prefix: bool = False) -> None:
        self.tree.drop_listings(*paths, below=prefix)

    def _drop_properties(self, collection: str, entity_id: str) -> None:
        """Forget an entity's properties listing and the item pages of its long arrays."""
        self.layout.drop_api(properties_href(collection, entity_id), below=True)

    def _require(self, node: Node, folder: tuple[str, ...], what: str) -> None:
        if not node.writable:
            raise self.fail(folder, errno.EROFS, f"{what}: this folder is read-only")

    # -- mkdir / rmdir -----------------------------------------------------------------------------------

    async def mkdir(self, parent: Node, name: str) -> Node:
        path = parent.path
        if parent.kind == FolderKind.PROJECTS:
            with self._api_write(path, f"creating project {name!r}"):
                created = await self.api.create_project(name)
            self.layout.drop_api("v1pre3/users/current/projects")
            self._drop_listing(path)
            return await self._created_child(parent, name, created)
        if parent.kind == FolderKind.APPRESULTS:
            pid = _project_id(parent)
            with self._api_write(path, f"creating app result {name!r}"):
                created = await self.api.create_appresult(pid, name)
            self.layout.drop_api(f"v1pre3/projects/{pid}/appresults", "v1pre3/users/current/appsessions")
            self._drop_listing(path, path[:-1] + ("AppSessions",))
            return await self._created_child(parent, name, created)
        if parent.kind == FolderKind.FILES and parent.writable:
            files = _files_ref(parent)
            data: FilesRef | PropItemsRef = FilesRef(files.owner, files.sub + (name,))
            return self._add_local(parent, Node(path=path + (name,), type=DIR, kind=FolderKind.FILES, data=data, writable=True, local=True, mtime=time.time()))
        if parent.kind == FolderKind.PROPERTIES:
            data = PropItemsRef(_owner(parent), name)  # an array property without items yet
            folder = Node(path=path + (name,), type=DIR, kind=FolderKind.PROPITEMS, data=data, writable=True, local=True, mtime=time.time())
            return self._add_local(parent, folder)
        raise self.fail(path, errno.EROFS, f"cannot create folder {name!r} here (read-only)")

    def _add_local(self, parent: Node, node: Node) -> Node:
        self.layout.local.setdefault(parent.path, {})[node.name] = node
        self._drop_listing(parent.path)
        return node

    def _remove_local(self, node: Node) -> None:
        folder = self.layout.local.get(node.path[:-1])
        if folder is not None and folder.get(node.name) is node:
            del folder[node.name]
            if not folder:
                del self.layout.local[node.path[:-1]]
            self._drop_listing(node.path[:-1])

    async def _created_child(self, parent: Node, name: str, created: dict) -> Node:
        """The folder node of an entity just created, found in the refreshed listing by Id."""
        entries = await self.tree.children(parent)
        wanted = str(created.get("Id"))
        child = entries.get(name)
        if child is None or _entity_id(child) != wanted:
            child = next((c for c in entries.values() if c.type == DIR and _entity_id(c) == wanted), child)
        if child is None:
            raise self.fail(parent.path, errno.EIO, f"{name!r} was created but is not listed yet; try: basemount-cmd refresh")
        self.layout.write_errors.pop(parent.path, None)
        return child

    async def rmdir(self, parent: Node, name: str) -> None:
        path = parent.path
        child = await self.tree.child(parent, name)
        if child.local:
            if self.layout.local.get(child.path):
                raise self.fail(path, errno.ENOTEMPTY, f"{name}: folder is not empty")
            self._remove_local(child)
            return
        if self._is_property(parent, child):  # an array property: rmdir Properties/Ns.list
            await self.delete_property(parent, child)
            return
        if child.kind not in TRASHABLE_FOLDERS:
            self.block_deletes(path, f"cannot remove {name!r} (only entities can be moved to the trash)")
        await self.move_to_trash(child)

    def block_deletes(self, folder: tuple[str, ...], message: str) -> None:
        """BaseMount's rm -rf guard: after a refused delete, every delete fails for 5 s."""
        self._blocked_until = time.monotonic() + DELETE_GUARD_SECONDS
        raise self.fail(folder, errno.EPERM, f"{message}; deletes are blocked for {DELETE_GUARD_SECONDS:.0f} s")

    def _check_delete_guard(self, folder: tuple[str, ...]) -> None:
        if time.monotonic() < self._blocked_until:
            raise self.fail(folder, errno.EPERM, "deletes are blocked for a few seconds after a refused delete (rm -rf guard)")

    async def unlink(self, parent: Node, name: str) -> None:
        child = await self.tree.child(parent, name)
        if child.type == UPLOAD:
            await self.remove_upload(parent, child)
            return
        if self._is_property(parent, child):  # a string or reference property: rm Properties/Ns.name
            await self.delete_property(parent, child)
            return
        self.block_deletes(parent.path, f"cannot remove {name!r}: files in BaseSpace cannot be deleted, only entities moved to the trash")

    @staticmethod
    def _is_property(parent: Node, child: Node) -> bool:
        return parent.kind == FolderKind.PROPERTIES and isinstance(child.data, PropertyRef) and bool(child.data.name)

    async def delete_property(self, parent: Node, child: Node) -> None:
        """``DELETE v2/{collection}/{id}/properties/{name}``: the property is gone from BaseSpace."""
        if not isinstance(child.data, PropertyRef):
            raise self.fail(parent.path, errno.EINVAL, f"{child.name} is not a property")
        collection, entity_id = child.data.owner.collection, child.data.owner.entity_id
        name = child.data.name
        self._check_delete_guard(parent.path)
        with self._api_write(parent.path, f"deleting property {name}"):
            await self.api.delete_property(collection, entity_id, name)
        log.info("deleted property %s of %s %s", name, collection, entity_id)
        self._drop_properties(collection, entity_id)
        self._drop_listing(parent.path, prefix=True)
        self.layout.write_errors.pop(parent.path, None)

    # -- trash / restore / app sessions (also used by the commands) ------------------------------------

    async def move_to_trash(self, node: Node) -> None:
        folder = node.path[:-1]
        self._check_delete_guard(folder)
        if node.kind not in TRASHABLE_FOLDERS:
            raise self.fail(node.path, errno.EINVAL, "move-to-trash works on a project, sample, app result, app session or run folder")
        ref = _entity(node)
        with self._api_write(folder, f"moving {node.name!r} to the trash"):
            await self.api.move_to_trash(ref.collection, ref.id)
        log.info("moved %s %s (%s) to the trash", ref.collection, ref.id, node.name)
        # An app session takes its samples and app results with it: refresh the whole project.
        self.tree.refresh(folder[:-1] if node.kind == FolderKind.APPSESSION else folder)
        self._drop_listing((".Trash",), prefix=True)
        self.layout.write_errors.pop(folder, None)

    async def restore(self, node: Node) -> None:
        if node.kind != FolderKind.TRASHITEM:
            raise self.fail(node.path, errno.EINVAL, "restore-from-trash works on a .Trash/<item> folder")
        with self._api_write(node.path, f"restoring {node.name!r}"):
            await self.api.restore_from_trash(_entity(node).id)
        log.info("restored %s from the trash", node.name)
        self.tree.refresh(())

    async def _session_of(self, node: Node) -> dict:
        entity = node.data.item if isinstance(node.data, EntityRef) else {}
        if node.kind == FolderKind.APPSESSION:
            return entity
        if node.kind == FolderKind.SAMPLE and "AppSession" not in entity and entity.get("Id") is not None:
            # real sample list items carry no AppSession: GET samples/{id} does
            entity = await self.layout.entity_detail("samples", str(entity["Id"]))
        if node.kind in (FolderKind.APPRESULT, FolderKind.SAMPLE) and isinstance(entity.get("AppSession"), dict):
            return entity["AppSession"]
        raise self.fail(node.path, errno.EINVAL, "this folder is not an app result, sample or app session with an app session")

    async def mark_complete(self, node: Node) -> None:
        session = await self._session_of(node)
        if str(session.get("Status", "")).lower() == "complete":
            raise self.fail(node.path, errno.EINVAL, f"app session {session.get('Name', session.get('Id'))!r} is already Complete")
        owner = _entity(node).id if node.kind == FolderKind.APPRESULT else None

        def waiting() -> list[SpoolEntry]:
            return [e for e in self.unfinished() if e.kind == FILE and (owner is None or e.owner_id == owner)]

        # Its files must be on BaseSpace first (a Complete app result takes no more): upload what
        # is pending now and wait a while; refuse if that is not enough.
        with trio.move_on_after(COMPLETE_WAIT_SECONDS):
            # (not for a file still open or failed for good: waiting would not help)
            while not any(e.state in (OPEN, FAILED) for e in waiting()):
                busy = [e for e in waiting() if e.state in (PENDING, UPLOADING)]
                if not busy:
                    break
                await self.uploader.wait_attempt(busy[0])
        left = waiting()
        if left:
            names = ", ".join(e.display for e in left[:3]) + (" ..." if len(left) > 3 else "")
            raise self.fail(
                node.path,
                errno.EBUSY,
                f"mark-as-complete: {len(left)} upload(s) not committed yet ({names}); wait for them (basemount-py status), or remove or retry the failed ones",
            )
        with self._api_write(node.path, "mark-as-complete"):
            await self.api.update_appsession(str(session["Id"]), status="complete")
        self.tree.refresh(node.path[:2])

    async def rename_appsession(self, node: Node, new_name: str) -> None:
        session = await self._session_of(node)
        if not new_name.strip():
            raise self.fail(node.path, errno.EINVAL, "rename-appsession needs the new name: rename-appsession NEW NAME")
        with self._api_write(node.path, "rename-appsession"):
            await self.api.update_appsession(str(session["Id"]), Name=new_name.strip())
        self.tree.refresh(node.path[:2])

    @contextlib.contextmanager
    def _api_write(self, folder: tuple[str, ...], what: str) -> Iterator[None]:
        """A write call to BaseSpace: its failure becomes a WriteFailure (errno from the one mapping,
        ``errno_for(writing=True)``), logged and added to the folder's ``.error``."""
        try:
            yield
        except WriteFailure as exc:
            raise self._report(folder, exc) from None
        except ApiError as exc:
            raise self.fail(folder, errno_for(exc, writing=True), f"{what} failed: {exc}") from None

    # -- the spool: adopted entries, status, retry ------------------------------------------------------

    async def _resume(self, adopted: list[SpoolEntry]) -> None:
        """Entries a dead or unmounted daemon of this account left: show them, upload them."""
        if not adopted:
            return
        log.info("resuming %d upload(s) left in the spool by an earlier mount", len(adopted))
        for entry in adopted:
            if entry.state == OPEN and entry.error:
                # A write into it failed (the writer was told); its release, which would have
                # kept it failed, did not come before the mount stopped: its bytes are incomplete.
                entry.state = FAILED
            elif entry.state == OPEN and not entry.closed_once:
                entry.state, entry.error = FAILED, "the writer never closed this file before the mount stopped; kept in the spool"
            elif entry.state in (OPEN, PENDING) and entry.attempts == 0 and left_by_rsync(entry):
                # Its rename never came (the mount stopped between rsync's close and rename). Sent,
                # it would stay on BaseSpace under the temp name: the API removes no single file (only
                # the whole app result, to the trash).
                entry.state, entry.error = FAILED, RSYNC_TEMP_KEPT
            elif entry.state in (OPEN, UPLOADING):
                entry.state = PENDING
            await self.run_blocking(self.spool.persist, entry)
            self._show(entry)
            if entry.state == PENDING:
                self.uploader.schedule(entry, delay=0, verify=True)
            elif entry.state == FAILED:
                log.error("upload of %s failed earlier and is kept in the spool: %s", entry.display, entry.error)

    def _show(self, entry: SpoolEntry) -> Node:
        """The entry's node in the tree (and local folders on its way, which BaseSpace lacks)."""
        path = tuple(entry.mount_path)
        if entry.kind == FILE and "Files" in path:
            files_at = len(path) - 2 - (len(entry.directory.split("/")) if entry.directory else 0)
            for i in range(files_at + 1, len(path) - 1):
                folder = self.layout.local.setdefault(path[:i], {})
                if path[i] not in folder:
                    sub = tuple(path[files_at + 1 : i + 1])
                    data = FilesRef(Owner("appresults", entry.owner_id), sub)
                    folder[path[i]] = Node(path=path[: i + 1], type=DIR, kind=FolderKind.FILES, data=data, writable=True, local=True, mtime=entry.created)
                    self._drop_listing(path[:i])
        node = Node(path=path, type=UPLOAD, dynamic=Dynamic.UPLOAD, writable=True, upload=entry, size=entry.size, mtime=entry.created)
        self.layout.local.setdefault(path[:-1], {})[path[-1]] = node
        self._drop_listing(path[:-1])
        self.tree.replace(node)
        return node

    @contextlib.contextmanager
    def folder_activity(self, folder: tuple[str, ...]) -> Iterator[None]:
        """A lookup (or rename) in ``folder``: pending uploads there wait until a moment after it,
        so the rename that follows a lookup of the new name renames the spooled file even when
        the lookup was slow (a listing under faults) and outlasted the write-back delay."""
        self.uploader.busy[folder] = self.uploader.busy.get(folder, 0) + 1
        try:
            yield
        finally:
            left = self.uploader.busy[folder] - 1
            if left:
                self.uploader.busy[folder] = left
            else:
                del self.uploader.busy[folder]
            self.uploader.quiet_from[folder] = trio.current_time() + FOLDER_QUIET_SECONDS

    def entry_at(self, path: tuple[str, ...]) -> SpoolEntry | None:
        for entry in self.spool.entries.values():
            if tuple(entry.mount_path) == path:
                return entry
        return None

    def retry(self, path: tuple[str, ...]) -> SpoolEntry:
        entry = self.entry_at(path)
        if entry is None:
            raise WriteFailure(errno.ENOENT, f"/{'/'.join(path)} is not in the upload spool")
        if entry.state != FAILED:
            self.uploader.flush(entry)
            return entry
        entry.state, entry.attempts, entry.error = PENDING, 0, ""
        self.uploader.schedule(entry, delay=0, verify=True)
        log.info("retrying the upload of %s", entry.display)
        return entry

    def flush_all(self) -> None:
        """Upload every pending entry now (unmount, ``flush`` command): no write-back delay."""
        self.uploader.flush()

    def unfinished(self, owner_id: str | None = None) -> list[SpoolEntry]:
        return [e for e in self.spool.entries.values() if owner_id is None or (e.kind == FILE and e.owner_id == owner_id)]

    def status_text(self) -> str:
        """The hidden ``.uploads`` file and ``basemount-py status``: one line per entry."""
        entries = sorted(self.spool.entries.values(), key=lambda e: e.created)
        counts = {s: sum(1 for e in entries if e.state == s) for s in (OPEN, PENDING, UPLOADING, FAILED)}
        lines = [
            f"spool: {self.unavailable or self.spool.session}",
            "summary: " + " ".join(f"{k}={v}" for k, v in counts.items()) + f" committed-recently={len(self.uploader.recent)}",
        ]
        for e in entries:
            reason = self.uploader.last_error(e)
            what = f"{e.state}\t{e.size}\t{e.display}"
            if e.state == UPLOADING:
                what += f"\tsent {self.uploader.sent(e)} of {e.size} bytes"
            if reason:
                what += f"\tattempt {e.attempts}: {reason}" if e.state != FAILED else f"\t{reason}"
            lines.append(what)
        for e in reversed(self.uploader.recent):
            lines.append(f"committed\t{e.size}\t{e.display}")
        return "\n".join(lines) + "\n"

    def upload_errors(self, folder: tuple[str, ...]) -> str:
        """Lines for ``.error`` of a folder: every failed (or retrying) upload in it."""
        out = []
        for e in self.spool.entries.values():
            if tuple(e.mount_path[:-1]) != folder:
                continue
            reason = self.uploader.last_error(e)
            if e.state == FAILED:
                out.append(f"Error: {e.name}: upload failed for good: {reason} (kept in the spool: basemount-py retry, or rm)\n")
            elif reason:
                out.append(f"Error: {e.name}: upload attempt {e.attempts} failed, retrying: {reason}\n")
        return "".join(out)

    # -- files and properties: create / open / write / close ------------------------------------------

    async def create(self, parent: Node, name: str) -> tuple[SpoolEntry, Node]:
        path = parent.path
        if self.unavailable and parent.kind in (FolderKind.FILES, FolderKind.PROPERTIES):
            raise self.fail(path, errno.EROFS, self.unavailable)
        if parent.kind == FolderKind.FILES and parent.writable:
            files = _files_ref(parent)
            if files.owner.collection != "appresults":
                raise self.fail(path, errno.EROFS, "files can only be uploaded into an app result")
            fields = {"kind": FILE, "owner_id": files.owner.entity_id, "directory": "/".join(files.sub)}
        elif parent.kind == FolderKind.PROPERTIES:
            if "." not in name.strip(".") or name.startswith("."):
                raise self.fail(path, errno.EINVAL, f"property names need a namespace, e.g. Input.{name} (BaseSpace refuses {name!r})")
            owner = _owner(parent)
            fields = {"kind": PROPERTY, "owner_id": owner.entity_id, "collection": owner.collection}
        else:
            raise self.fail(path, errno.EROFS, f"cannot create {name!r} here (read-only)")
        existing = self.layout.local.get(path, {}).get(name)
        if existing is not None and existing.type == UPLOAD:
            await self.unlink(parent, name)  # O_CREAT over a file that was never sent: start again
        entry = await self._spool(self.spool.create, mount_path=list(path + (name,)), name=name, **fields)
        node = self._show(entry)
        self._handles[entry.id] = self._handles.get(entry.id, 0) + 1
        return entry, node

    async def _spool(self, func: Any, *args: Any, **kw: Any) -> Any:
        """Spool file I/O (in a worker thread: ``run_blocking``); a full disk or spool is ENOSPC with the reason."""
        try:
            return await self.run_blocking(functools.partial(func, *args, **kw))
        except SpoolFull as exc:
            raise WriteFailure(errno.ENOSPC, f"{exc.strerror}; waiting uploads: basemount-py status") from None
        except OSError as exc:
            raise WriteFailure(exc.errno or errno.EIO, self.spool.failure(exc)) from None

    async def open_for_write(self, node: Node, truncate: bool) -> SpoolEntry:
        """Opening an existing entry for writing: a file not sent yet, or a string property."""
        parent = self._parent(node)
        folder = node.path[:-1]
        entry = node.upload
        if node.type == UPLOAD and isinstance(entry, SpoolEntry) and entry.kind == PROPERTY and entry.state == UPLOADING:
            # Without O_TRUNC (`>>`) the new value continues the one being sent: the kernel writes
            # at the size it knows, so starting from nothing would leave NULs before the new bytes.
            sent = b"" if truncate else await self._spool(self.spool.read, entry, 0, entry.size)
            await self.uploader.wait_attempt(entry)  # a new value follows the one being sent
            if entry.id not in self.spool.entries:  # sent: the new value is a new entry
                return await self._property_entry(node, parent, sent)
        if node.type == UPLOAD and isinstance(entry, SpoolEntry):
            if entry.state == UPLOADING and entry.kind == FILE and self.uploader.give_way(entry, at_once=True):
                await self.uploader.wait_committing(entry)  # its attempt, before its point of no return, stops
            if entry.state in (UPLOADING, COMMITTED) or entry.id not in self.spool.entries:
                raise self.fail(folder, errno.EBUSY, f"{node.name} is being uploaded; BaseSpace files cannot be changed")
            if self.uploader.may_have_landed(entry):
                with self.folder_activity(folder):  # no attempt starts while the server is asked
                    await self._not_landed(entry, folder, "changed")
            if entry.state in (UPLOADING, COMMITTED) or entry.id not in self.spool.entries:
                raise self.fail(folder, errno.EBUSY, f"{node.name} is being uploaded; BaseSpace files cannot be changed")
            before = (entry.state, entry.error, entry.attempts, entry.closed_once)
            entry.state, entry.error, entry.attempts = OPEN, "", 0  # new bytes: a full set of attempts again
            # Until the writer's next close the bytes are half changed: on disk before any of them
            # is, so that a daemon that dies meanwhile leaves the file failed, never uploaded.
            entry.closed_once = False
            try:
                await self._spool(self.spool.persist, entry)
                if truncate:
                    old_size = entry.size
                    await self._spool(self.spool.truncate, entry, 0)
                    self.uploader.wrote(entry, 0, old_size)  # parts already sent are stale
            except WriteFailure as exc:
                # The open fails, so no release will come for it: the file goes back to what it
                # was (waiting for its upload, or failed) rather than stay open for good.
                await self._restore(entry, before)
                raise self._report(folder, exc) from None
            self._handles[entry.id] = self._handles.get(entry.id, 0) + 1
            node.size = entry.size
            return entry
        if node.type == TEXT and parent is not None and parent.kind == FolderKind.PROPERTIES:
            if self.unavailable:
                raise self.fail(folder, errno.EROFS, self.unavailable)
            return await self._property_entry(node, parent, b"" if truncate else node.content)
        raise self.fail(folder, errno.EROFS, f"{node.name} is read-only (BaseSpace files cannot be changed)")

    async def _property_entry(self, node: Node, parent: Node | None, initial: bytes) -> SpoolEntry:
        """A new value of an existing string property, spooled like a file."""
        if parent is None:
            raise self.fail(node.path[:-1], errno.ENOENT, f"{node.name}: its Properties/ folder is gone")
        name = (node.data.name if isinstance(node.data, PropertyRef) else "") or node.name
        owner = _owner(parent)
        entry = await self._spool(
            self.spool.create,
            kind=PROPERTY,
            mount_path=list(node.path),
            name=name,
            owner_id=owner.entity_id,
            collection=owner.collection,
        )
        if initial:
            await self._spool(self.spool.write, entry, 0, initial)
        self._show(entry)
        self._handles[entry.id] = 1
        return entry

    def _parent(self, node: Node) -> Node | None:
        return self.tree.known(node.path[:-1])

    def accepts_attributes(self, node: Node) -> bool:
        """chmod/chown/utimes on a file of a Running app result succeed and are ignored: tools
        (cp -p, rsync -a, tar -x) set them right after close, maybe after the upload."""
        if node.type == DIR:  # a folder inside a Running app result's Files/ (cp -a, tar, rsync)
            return node.kind == FolderKind.FILES and node.writable
        parent = self._parent(node)
        return parent is not None and parent.kind == FolderKind.FILES and parent.writable

    def _node_of(self, entry: SpoolEntry) -> Node | None:
        return self.layout.local.get(tuple(entry.mount_path[:-1]), {}).get(entry.mount_path[-1])

    def _writable(self, entry: SpoolEntry) -> None:
        if entry.state != OPEN or entry.id not in self.spool.entries:
            raise WriteFailure(errno.EIO, f"{entry.name} was already uploaded; BaseSpace files cannot be changed")

    async def write(self, entry: SpoolEntry, node: Node | None, off: int, data: bytes) -> int:
        try:
            with self._interrupted_spoils(entry):
                self._writable(entry)
                if entry.kind == PROPERTY and off + len(data) > MAX_BYTES:
                    raise WriteFailure(errno.EFBIG, f"property {entry.name}: values are limited to {MAX_BYTES} bytes")
                await self._reopened_by_write(entry)
                await self._spool(self.spool.write, entry, off, data)
        except WriteFailure as exc:
            self._spoiled(entry, exc)
            raise self._report(tuple(entry.mount_path[:-1]), exc) from None
        self.uploader.wrote(entry, off, off + len(data))
        if node is not None:
            node.size = entry.size
        return len(data)

    async def truncate(self, entry: SpoolEntry, node: Node, size: int) -> None:
        try:
            self._writable(entry)
            if entry.kind == PROPERTY and size > MAX_BYTES:
                raise WriteFailure(errno.EFBIG, f"property {entry.name}: values are limited to {MAX_BYTES} bytes")
            old_size = entry.size
            with self._interrupted_spoils(entry):
                await self._reopened_by_write(entry)
                await self._spool(self.spool.truncate, entry, size)
        except WriteFailure as exc:
            self._spoiled(entry, exc)
            raise self._report(tuple(entry.mount_path[:-1]), exc) from None
        self.uploader.wrote(entry, min(old_size, size), max(old_size, size))
        node.size = entry.size

    async def _reopened_by_write(self, entry: SpoolEntry) -> None:
        """Bytes written after a close (one of two descriptors of the file closed, a child writing
        on): until the last close the file is not what the writer meant again. Recorded before
        the bytes land, so that a daemon that dies meanwhile leaves it failed, never uploaded."""
        if entry.closed_once:
            entry.closed_once = False
            try:
                await self._spool(self.spool.persist, entry)
            except BaseException:
                entry.closed_once = True  # not recorded: the next write tries again
                raise

    async def _restore(self, entry: SpoolEntry, before: tuple[str, str, int, bool]) -> None:
        """Put back an entry's state after an open the spool could not record, and upload it again
        if it was waiting for that (its upload's driver stopped when it became open)."""
        entry.state, entry.error, entry.attempts, entry.closed_once = before
        with contextlib.suppress(WriteFailure):  # the spool still holds the old record, or the new one at worst
            await self._spool(self.spool.persist, entry)
        if entry.state == PENDING:
            self.uploader.schedule(entry)

    @contextlib.contextmanager
    def _interrupted_spoils(self, entry: SpoolEntry) -> Iterator[None]:
        """A write or truncate that the end of the mount (or its op timeout) cancels fails for the
        writer (EIO) without a WriteFailure: the file is just as incomplete, so it is spoiled too
        (the writer closes it next; uploaded, it would put a partial file on BaseSpace)."""
        try:
            yield
        except trio.Cancelled:
            self._spoiled(entry, WriteFailure(errno.EIO, "interrupted: the mount was shutting down or the write took too long"))
            raise

    @staticmethod
    def _spoiled(entry: SpoolEntry, exc: WriteFailure) -> None:
        """A write into this file failed: its bytes are not what the writer meant, so it is not
        uploaded at close but kept as failed (rewrite it, retry it or remove it)."""
        if entry.state == OPEN and not entry.error:
            entry.error = f"a write failed ({exc.message}); not uploaded"

    async def open_reader(self, entry: SpoolEntry) -> int:
        """Reading a file not uploaded yet (or failed for good): from the spool."""
        if entry.id not in self.spool.entries:
            raise WriteFailure(errno.ESTALE, f"{entry.name} has just been uploaded: open it again")
        return await self._spool(self.spool.open_reader, entry)

    async def read(self, entry: SpoolEntry, off: int, size: int, fd: int | None = None) -> bytes:
        if fd is not None:
            size = max(0, min(size, entry.size - off))
            return (await self._spool(os.pread, fd, size, off)).ljust(size, b"\0")
        return await self._spool(self.spool.read, entry, off, size)

    async def flush(self, entry: SpoolEntry, node: Node) -> None:
        """close(): the bytes written so far are fsync'd in the spool; the upload follows later."""
        if entry.state != OPEN or entry.id not in self.spool.entries:
            return
        if entry.size == 0 and entry.kind == FILE:
            # A shell's `echo x > f` closes an empty descriptor before writing through its dup:
            # only the writer hears of it here; .error gets it if the file stays empty (release).
            raise WriteFailure(errno.EINVAL, f"{entry.name}: BaseSpace does not accept zero-byte files; nothing was uploaded")
        # Written by the sync: a close that returns is what the writer meant, unless a write into
        # it failed (then it is kept failed, even if its release never comes: _resume).
        entry.closed_once = not entry.error
        try:
            await self._spool(self.spool.sync, entry)
        except WriteFailure as exc:
            # A shell ignores errors from close(): the file must not go on as if it were safe.
            # Kept as failed (the bytes on disk are in doubt), and .error, status and the log say why.
            self._spoiled(entry, exc)
            raise self._report(tuple(entry.mount_path[:-1]), WriteFailure(exc.errno or errno.EIO, f"{entry.name}: {exc.message}")) from None

    async def fsync(self, entry: SpoolEntry, node: Node) -> None:
        """fsync(fd): the file is uploaded now; returns once it is committed, or its error."""
        await self.flush(entry, node)
        folder = tuple(entry.mount_path[:-1])
        if entry.state == OPEN and entry.error:  # a write failed: never uploaded (see release)
            raise self._report(folder, WriteFailure(errno.EIO, f"{entry.name}: {entry.error}"))
        if entry.state == OPEN:
            entry.state = PENDING
            try:
                await self._spool(self.spool.persist, entry)
            except WriteFailure as exc:
                entry.state = OPEN  # still the writer's: its release records it and schedules the upload
                raise self._report(folder, exc) from None
            self.uploader.schedule(entry, delay=0)
        if entry.id in self.spool.entries:
            await self.uploader.wait_attempt(entry)
        if entry.state != COMMITTED and entry.id in self.spool.entries:
            reason = self.uploader.last_error(entry) or entry.state
            raise self._report(folder, WriteFailure(errno.EIO, f"upload of {entry.name} did not complete: {reason}"))

    async def release(self, entry: SpoolEntry, node: Node) -> None:
        """Last close of a handle: the entry is complete locally and waits for its upload."""
        left = self._handles.get(entry.id, 1) - 1
        if left > 0:
            self._handles[entry.id] = left
            return
        self._handles.pop(entry.id, None)
        if entry.state != OPEN or entry.id not in self.spool.entries:
            return
        if entry.size == 0 and entry.kind == FILE:  # touch, or a failed cp: nothing to upload
            self._report(
                tuple(entry.mount_path[:-1]), WriteFailure(errno.EINVAL, f"{entry.name}: BaseSpace does not accept zero-byte files; nothing was uploaded")
            )
            await self._discard(entry)
            return
        if entry.error:  # a write failed: the file is incomplete
            entry.state = FAILED
            self.uploader.forget(entry)  # parts it sent while written: aborted
            await self._spool(self.spool.persist, entry)
            log.error("%s is kept in the spool, not uploaded: %s", entry.display, entry.error)
            self._failed(entry)
            return
        entry.state, entry.closed_once = PENDING, True
        try:
            await self._spool(self.spool.sync, entry)
        except WriteFailure as exc:  # the close's own fsync made the bytes safe: upload them anyway
            self._report(tuple(entry.mount_path[:-1]), WriteFailure(exc.errno or errno.EIO, f"{entry.name}: {exc.message}"))
            log.error("%s: recording it as closed in the spool failed (%s); uploading it anyway", entry.display, exc.message)
        if not self.uploader.streaming(entry):
            self.spool.release_fd(entry)
        # a property is never renamed: no write-back delay
        self.uploader.schedule(entry, delay=0 if entry.kind == PROPERTY else None)

    async def _discard(self, entry: SpoolEntry) -> None:
        node = self._node_of(entry)
        if node is not None:
            self._remove_local(node)
        self.uploader.forget(entry)  # its multipart uploads: owed an abort, written with the removal
        await self.run_blocking(self.spool.remove, entry)

    async def remove_upload(self, parent: Node, child: Node) -> None:
        entry = child.upload
        if isinstance(entry, SpoolEntry):
            if entry.state == UPLOADING:
                raise self.fail(parent.path, errno.EBUSY, f"{child.name} is being uploaded; it cannot be removed now")
            if self.uploader.may_have_landed(entry):  # on BaseSpace already, it could not be removed
                with self.folder_activity(parent.path):
                    await self._not_landed(entry, parent.path, "removed")
                if entry.state == UPLOADING or entry.id not in self.spool.entries:
                    raise self.fail(parent.path, errno.EBUSY, f"{child.name} is being uploaded; it cannot be removed now")
            log.info("removed %s from the upload spool (%s, never uploaded)", entry.display, entry.state)
            await self._discard(entry)
        else:
            self._remove_local(child)

    async def rename(self, old_parent: Node, old_name: str, new_parent: Node, new_name: str) -> None:
        """A file not uploaded yet (the write-back delay) is renamed in the spool; nothing else can be."""
        with self.folder_activity(old_parent.path), self.folder_activity(new_parent.path):
            await self._rename(old_parent, old_name, new_parent, new_name)

    async def _not_landed(self, entry: SpoolEntry, folder: tuple[str, ...], what: str) -> None:
        """Before a rename or a rewrite of a file whose last commit request got no answer: it may be
        on BaseSpace under its name already. Then it is committed, and changing it now would put a
        second file there (or leave the server's bytes different from ours): EROFS. If BaseSpace
        cannot say (an outage): EIO, and nothing changes."""
        try:
            landed = await self.uploader.landed_under_its_name(entry)
        except ApiError as exc:
            raise self.fail(
                folder,
                errno.EIO,
                f"{entry.name} cannot be {what} now: an earlier upload of it may have reached BaseSpace under this name "
                f"and BaseSpace cannot tell ({exc}); try again when it answers",
            ) from None
        if landed:
            raise self.fail(folder, errno.EROFS, f"{entry.name} is already uploaded under that name; it can no longer be {what}")

    async def _rename(self, old_parent: Node, old_name: str, new_parent: Node, new_name: str) -> None:
        child = await self.tree.child(old_parent, old_name)
        entry = child.upload
        folder = old_parent.path
        if child.type != UPLOAD or not isinstance(entry, SpoolEntry) or entry.kind != FILE:
            raise self.fail(folder, errno.EROFS, f"{old_name} cannot be renamed: BaseSpace files and folders keep their names once uploaded")
        if not self.uploader.give_way(entry):  # its upload is committing under the old name: its outcome decides
            await self.uploader.wait_committing(entry)
        if entry.state == COMMITTED or entry.id not in self.spool.entries:
            raise self.fail(folder, errno.EROFS, f"{old_name} is already uploaded under that name; it can no longer be renamed")
        if new_parent.kind != FolderKind.FILES or not new_parent.writable or _files_ref(new_parent).owner.entity_id != entry.owner_id:
            raise self.fail(folder, errno.EXDEV, f"{old_name} can only be renamed within the Files/ folder of its app result")
        await self._not_landed(entry, folder, "renamed")
        try:
            target = await self.tree.child(new_parent, new_name)
        except NotFound:
            target = None
        except FsError as exc:  # the listing failed (API down): only the spool's own names are known;
            # a server file of that name makes the upload fail with 409 later, visibly.
            log.info("rename into /%s: listing failed (%s); going by the local entries", "/".join(new_parent.path), exc)
            target = self.layout.local.get(new_parent.path, {}).get(new_name)
        if target is not None:
            if target.type != UPLOAD or target.upload is entry:
                raise self.fail(new_parent.path, errno.EROFS, f"{new_name} already exists on BaseSpace and cannot be replaced")
            await self.remove_upload(new_parent, target)
        old_path = tuple(entry.mount_path)
        node = self._node_of(entry)
        if node is not None:
            self._remove_local(node)
        self.uploader.forget(entry)  # parts sent under the old name: aborted
        entry.name, entry.directory = new_name, "/".join(_files_ref(new_parent).sub)
        entry.mount_path = list(new_parent.path + (new_name,))
        await self._spool(self.spool.persist, entry)
        fresh = self._show(entry)
        self.tree.move(old_path, fresh)  # the kernel keeps the inode: it now names the new path
        if entry.state == PENDING:
            self.uploader.schedule(entry)  # a new write-back delay: rsync renames, then sets times
        log.info("renamed %s to %s before upload", "/".join(old_path), entry.display)

    # -- after the upload --------------------------------------------------------------------------------

    async def _committed(self, entry: SpoolEntry, result: dict) -> None:
        path = tuple(entry.mount_path)
        node = self._node_of(entry)
        if node is not None:
            self._remove_local(node)
        self._forget_errors(path[:-1], entry.name)
        if entry.kind == PROPERTY:
            log.info("set property %s of %s %s", entry.name, entry.collection, entry.owner_id)
            self._drop_properties(entry.collection, entry.owner_id)
            self._drop_listing(path[:-1], prefix=True)
            return
        self.uploads_committed += 1
        log.info("uploaded %s (%d bytes) as file %s", entry.display, entry.size, result.get("Id"))
        href = f"v1pre3/appresults/{entry.owner_id}/files"
        cached = self.layout.cached_list(href)
        if cached is not None and result.get("Id") is not None and not any(str(i.get("Id")) == str(result["Id"]) for i in cached):
            cached.append(result)  # the listing now holds the file: no re-listing per uploaded file
        else:
            self.layout.drop_api(href)
        depth = len(entry.directory.split("/")) if entry.directory else 0
        files_root = path[: len(path) - 1 - depth]
        self._drop_listing(files_root, files_root[:-1] + ("Files.metadata",), prefix=True)
        if self.tree.inode_of(path) is not None:
            await self.refreshed(Node(path=path, type=UPLOAD))  # the inode becomes the server's file

    def _forget_errors(self, folder: tuple[str, ...], name: str) -> None:
        """An earlier failure of this name in the folder's .error is over: it is uploaded now."""
        text = self.layout.write_errors.get(folder)
        if text:
            kept = "".join(line for line in text.splitlines(keepends=True) if not line.startswith(f"Error: {name}: "))
            if kept:
                self.layout.write_errors[folder] = kept
            else:
                self.layout.write_errors.pop(folder, None)

    def _failed(self, entry: SpoolEntry) -> None:
        self._drop_listing(tuple(entry.mount_path[:-1]))

    async def refreshed(self, node: Node) -> Node:
        """The node as the server lists it now (after a commit); the old one if not listed."""
        parent = self._parent(node)
        if parent is None:
            return node
        try:
            fresh = await self.tree.child(parent, node.name)
        except FsError:
            return node
        self.tree.remember(fresh)
        return fresh

    # -- symlinks under Properties/ -----------------------------------------------------------------------

    async def symlink(self, parent: Node, name: str, target: str) -> Node:
        path = parent.path
        if parent.kind not in (FolderKind.PROPERTIES, FolderKind.PROPITEMS):
            raise self.fail(path, errno.EROFS, "symlinks can only be made under Properties/ (to link an entity)")
        link_dir = path
        entity = await self.resolve(target, link_dir)
        if entity is None or entity.kind not in WITH_PROPERTIES:
            raise self.fail(path, errno.EINVAL, f"{target!r} is not a project, sample, app result or run folder of this mount")
        kind, href = entity_href(entity.data)
        owner = _owner(parent)  # Properties/ and its array folders both know it
        collection, entity_id = owner.collection, owner.entity_id
        if parent.kind == FolderKind.PROPERTIES:
            prop: dict[str, Any] = {"Type": kind, "Name": name, "Description": "", "Content": href}
        else:
            ptype = (parent.data.type if isinstance(parent.data, PropItemsRef) else "") or f"{kind}[]"
            if ptype.rstrip("[]") != kind:
                raise self.fail(path, errno.EINVAL, f"{parent.name} holds {ptype} items, not {kind}")
            # All of them: posting the property replaces its items, so the first 20 alone would drop the rest.
            items = [h for h in (item_href(i) for i in await self.layout.property_items(parent)) if h]
            prop_name = (parent.data.name if isinstance(parent.data, PropertyRef) else "") or parent.name
            prop = {"Type": ptype, "Name": prop_name, "Description": "", "Items": items + [href]}
        with self._api_write(path, f"setting property {prop['Name']}"):
            await self.api.set_properties(collection, entity_id, [prop])
        properties_dir = path if parent.kind == FolderKind.PROPERTIES else path[:-1]
        self._drop_properties(collection, entity_id)
        self._drop_listing(properties_dir, prefix=True)
        if parent.local:
            self._remove_local(parent)
        self.layout.write_errors.pop(path, None)
        folder = parent
        if parent.kind == FolderKind.PROPITEMS:  # its items come from the Properties listing: take the fresh one
            grand = self._parent(parent)
            try:
                folder = await self.tree.child(grand, parent.name) if grand is not None else parent
                self.tree.remember(folder)
            except FsError:
                folder = parent
        try:
            fresh = (await self.tree.children(folder)).get(name)
        except FsError:
            fresh = None
        if fresh is None:  # an array entry the server numbered differently: show the link anyway
            fresh = Node(path=path + (name,), type=SYMLINK, target=target, mtime=time.time())
        return fresh

    async def resolve(self, target: str, link_dir: tuple[str, ...], hops: int = 0) -> Node | None:
        """The node a symlink target names (absolute under the mountpoint, or relative), following
        the mount's own symlinks (``.id.<id>`` links) up to 8 times."""
        if os.path.isabs(target):
            norm = posixpath.normpath(target)
            if norm != self.mountpoint and not norm.startswith(self.mountpoint.rstrip("/") + "/"):
                return None
            parts = [p for p in norm[len(self.mountpoint) :].split("/") if p]
        else:
            parts = []
            for p in list(link_dir) + target.split("/"):
                if p in ("", "."):
                    continue
                if p == "..":
                    if parts:
                        parts.pop()
                    continue
                parts.append(p)
        node = self.tree.root
        for i, part in enumerate(parts):
            try:
                child = await self.tree.child(node, part)
            except FsError:
                return None
            if child.type == SYMLINK:
                if hops >= 8:
                    return None
                rest = "/".join(parts[i + 1 :])
                joined = child.target + ("/" + rest if rest else "")
                return await self.resolve(joined, child.path[:-1], hops + 1)
            node = child
        return node


__all__ = ["WriteManager", "WriteFailure", "UploadConfig", "UPLOAD"]


# -- what a folder stands for (Node.data), for the writes made in it ---------------------------------


def _entity(node: Node) -> EntityRef:
    if not isinstance(node.data, EntityRef):
        raise WriteFailure(errno.EINVAL, f"{node.name}: not an entity folder")
    return node.data


def _entity_id(node: Node) -> str | None:
    return node.data.id if isinstance(node.data, EntityRef) else None


def _files_ref(folder: Node) -> FilesRef:
    if not isinstance(folder.data, FilesRef):
        raise WriteFailure(errno.EROFS, f"{folder.name}: not a Files/ folder")
    return folder.data


def _owner(folder: Node) -> Owner:
    """The entity whose properties a Properties/ folder (or one of its array folders) shows."""
    if not isinstance(folder.data, (PropertiesRef, PropertyRef)):
        raise WriteFailure(errno.EROFS, f"{folder.name}: not a Properties/ folder")
    return folder.data.owner


def _project_id(folder: Node) -> str:
    if not isinstance(folder.data, ProjectScope):
        raise WriteFailure(errno.EROFS, f"{folder.name}: not a folder of a project")
    return folder.data.project_id
