"""Write mode: what mkdir, rmdir, create, write, close, symlink and the write commands do.

``fuse_ops`` stays a thin adapter: it hands nodes from the tree to these methods and maps the
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

import errno
import logging
import os
import posixpath
import time
from typing import Any

import trio

from ..api.client import BaseSpaceClient
from ..tree import DIR, SYMLINK, TEXT, Node, NotFound, Tree
from ..tree.layout import properties_href
from .api import WriteApi
from .properties import ENTITY_KINDS, PropertyWrite, entity_href, item_href, property_failure
from .upload import Upload, UploadConfig, WriteFailure

log = logging.getLogger(__name__)

UPLOAD = "upload"  # Node.type of a file being uploaded (or a property being written)
ENTITY_DIR_KINDS = {"project", "sample", "appresult", "appsession", "run"}
DELETE_GUARD_SECONDS = 5.0


class WriteManager:
    def __init__(self, tree: Tree, client: BaseSpaceClient, cfg: UploadConfig | None = None, mountpoint: str = "/"):
        self.tree = tree
        self.layout = tree.layout
        self.api = WriteApi(client)
        self.cfg = cfg or UploadConfig()
        self.mountpoint = mountpoint.rstrip("/") or "/"
        self._nursery: trio.Nursery | None = None
        self._blocked_until = 0.0
        self.uploads_committed = 0

    async def __aenter__(self) -> "WriteManager":
        self._cm = trio.open_nursery()
        self._nursery = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        return await self._cm.__aexit__(*exc)

    # -- errors and cache invalidation --------------------------------------------------------------

    def fail(self, folder: tuple[str, ...], code: int, message: str) -> WriteFailure:
        self.layout.write_errors[folder] = f"Error: {message}\n"
        log.warning("%s: %s", "/" + "/".join(folder), message)
        return WriteFailure(code, message)

    def _report(self, folder: tuple[str, ...], exc: WriteFailure) -> WriteFailure:
        self.layout.write_errors[folder] = f"Error: {exc.message}\n"
        return exc

    def _drop_listing(self, *paths: tuple[str, ...], prefix: bool = False) -> None:
        for path in paths:
            n = len(path)
            self.tree.listings.invalidate((lambda k, p=path: k[:n] == p) if prefix else (lambda k, p=path: k == p))

    def _drop_api(self, *hrefs: str) -> None:
        wanted = set(hrefs)
        self.layout.lists.invalidate(lambda key: key[0] in wanted)

    def _drop_properties(self, collection: str, entity_id: str) -> None:
        """Forget an entity's properties listing and the item pages of its long arrays."""
        base = properties_href(collection, entity_id)
        self.layout.lists.invalidate(lambda key: key[0] == base or key[0].startswith(base + "/"))

    def _require(self, node: Node, folder: tuple[str, ...], what: str) -> None:
        if not node.ctx.get("writable"):
            raise self.fail(folder, errno.EROFS, f"{what}: this folder is read-only")

    # -- mkdir / rmdir -----------------------------------------------------------------------------------

    async def mkdir(self, parent: Node, name: str) -> Node:
        path = parent.path
        if parent.kind == "projects":
            try:
                created = await self.api.create_project(name)
            except Exception as exc:
                raise self._api_failure(path, f"creating project {name!r}", exc) from None
            self._drop_api("v1pre3/users/current/projects")
            self._drop_listing(path)
            return await self._created_child(parent, name, created)
        if parent.kind == "appresults":
            pid = parent.ctx["project_id"]
            try:
                created = await self.api.create_appresult(pid, name)
            except Exception as exc:
                raise self._api_failure(path, f"creating app result {name!r}", exc) from None
            self._drop_api(f"v1pre3/projects/{pid}/appresults", "v1pre3/users/current/appsessions")
            self._drop_listing(path, path[:-1] + ("AppSessions",))
            return await self._created_child(parent, name, created)
        if parent.kind == "files" and parent.ctx.get("writable"):
            ctx = {"owner": parent.ctx["owner"], "sub": parent.ctx["sub"] + (name,), "writable": True, "local": True}
            return self._add_local(parent, Node(path=path + (name,), type=DIR, kind="files", ctx=ctx, mtime=time.time()))
        if parent.kind == "properties":
            owner = (parent.ctx["collection"], parent.ctx["id"])
            ctx = {"type": "", "items": [], "writable": True, "local": True, "prop_name": name, "owner": owner}
            return self._add_local(parent, Node(path=path + (name,), type=DIR, kind="propitems", ctx=ctx, mtime=time.time()))
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
        if child is None or str((child.ctx.get("entity") or {}).get("Id")) != wanted:
            child = next((c for c in entries.values() if c.type == DIR and str((c.ctx.get("entity") or {}).get("Id")) == wanted), child)
        if child is None:
            raise self.fail(parent.path, errno.EIO, f"{name!r} was created but is not listed yet; try: basemount-cmd refresh")
        self.layout.write_errors.pop(parent.path, None)
        return child

    async def rmdir(self, parent: Node, name: str) -> None:
        path = parent.path
        child = await self.tree.child(parent, name)
        if child.ctx.get("local"):
            if self.layout.local.get(child.path):
                raise self.fail(path, errno.ENOTEMPTY, f"{name}: folder is not empty")
            self._remove_local(child)
            return
        if self._is_property(parent, child):  # an array property: rmdir Properties/Ns.list
            await self.delete_property(parent, child)
            return
        if child.kind not in ENTITY_DIR_KINDS:
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
            session = child.ctx.get("upload")
            self._remove_local(child)
            if isinstance(session, Upload):
                await session.discard()
            return
        if self._is_property(parent, child):  # a string or reference property: rm Properties/Ns.name
            await self.delete_property(parent, child)
            return
        self.block_deletes(parent.path, f"cannot remove {name!r}: files in BaseSpace cannot be deleted, only entities moved to the trash")

    @staticmethod
    def _is_property(parent: Node, child: Node) -> bool:
        return parent.kind == "properties" and bool(child.ctx.get("prop_name")) and bool(child.ctx.get("owner"))

    async def delete_property(self, parent: Node, child: Node) -> None:
        """``DELETE v2/{collection}/{id}/properties/{name}``: the property is gone from BaseSpace."""
        collection, entity_id = child.ctx["owner"]
        name = child.ctx["prop_name"]
        self._check_delete_guard(parent.path)
        try:
            await self.api.delete_property(collection, entity_id, name)
        except Exception as exc:
            raise self._report(parent.path, property_failure(exc, name, "deleting")) from None
        log.info("deleted property %s of %s %s", name, collection, entity_id)
        self._drop_properties(collection, entity_id)
        self._drop_listing(parent.path, prefix=True)
        self.layout.write_errors.pop(parent.path, None)

    # -- trash / restore / app sessions (also used by the commands) ------------------------------------

    async def move_to_trash(self, node: Node) -> None:
        folder = node.path[:-1]
        self._check_delete_guard(folder)
        if node.kind not in ENTITY_DIR_KINDS:
            raise self.fail(node.path, errno.EINVAL, "move-to-trash works on a project, sample, app result, app session or run folder")
        entity, collection = node.ctx["entity"], node.ctx["collection"]
        try:
            await self.api.move_to_trash(collection, str(entity["Id"]))
        except Exception as exc:
            raise self._api_failure(folder, f"moving {node.name!r} to the trash", exc) from None
        log.info("moved %s %s (%s) to the trash", collection, entity.get("Id"), node.name)
        # An app session takes its samples and app results with it: refresh the whole project.
        self.tree.refresh(folder[:-1] if node.kind == "appsession" else folder)
        self._drop_listing((".Trash",), prefix=True)
        self.layout.write_errors.pop(folder, None)

    async def restore(self, node: Node) -> None:
        if node.kind != "trashitem":
            raise self.fail(node.path, errno.EINVAL, "restore-from-trash works on a .Trash/<item> folder")
        try:
            await self.api.restore_from_trash(str(node.ctx["entity"]["Id"]))
        except Exception as exc:
            raise self._api_failure(node.path, f"restoring {node.name!r}", exc) from None
        log.info("restored %s from the trash", node.name)
        self.tree.refresh(())

    async def _session_of(self, node: Node) -> dict:
        entity = node.ctx.get("entity") or {}
        if node.kind == "appsession":
            return entity
        if node.kind == "sample" and "AppSession" not in entity and entity.get("Id") is not None:
            # real sample list items carry no AppSession: GET samples/{id} does
            entity = await self.layout.entity_detail("samples", str(entity["Id"]))
        if node.kind in ("appresult", "sample") and isinstance(entity.get("AppSession"), dict):
            return entity["AppSession"]
        raise self.fail(node.path, errno.EINVAL, "this folder is not an app result, sample or app session with an app session")

    async def mark_complete(self, node: Node) -> None:
        session = await self._session_of(node)
        if str(session.get("Status", "")).lower() == "complete":
            raise self.fail(node.path, errno.EINVAL, f"app session {session.get('Name', session.get('Id'))!r} is already Complete")
        try:
            await self.api.update_appsession(str(session["Id"]), status="complete")
        except Exception as exc:
            raise self._api_failure(node.path, "mark-as-complete", exc) from None
        self.tree.refresh(node.path[:2])

    async def rename_appsession(self, node: Node, new_name: str) -> None:
        session = await self._session_of(node)
        if not new_name.strip():
            raise self.fail(node.path, errno.EINVAL, "rename-appsession needs the new name: rename-appsession NEW NAME")
        try:
            await self.api.update_appsession(str(session["Id"]), Name=new_name.strip())
        except Exception as exc:
            raise self._api_failure(node.path, "rename-appsession", exc) from None
        self.tree.refresh(node.path[:2])

    def _api_failure(self, folder: tuple[str, ...], what: str, exc: Exception) -> WriteFailure:
        if isinstance(exc, WriteFailure):
            return self._report(folder, exc)
        status = getattr(exc, "status", 0)
        code = {400: errno.EINVAL, 409: errno.EINVAL, 401: errno.EACCES, 403: errno.EACCES}.get(status, errno.EIO)
        return self.fail(folder, code, f"{what} failed: {exc}")

    # -- files: create / open / write / commit ----------------------------------------------------------

    async def create(self, parent: Node, name: str) -> tuple[Any, Node]:
        path = parent.path
        if parent.kind == "files" and parent.ctx.get("writable"):
            collection, owner_id, _v2 = parent.ctx["owner"]
            if collection != "appresults":
                raise self.fail(path, errno.EROFS, "files can only be uploaded into an app result")
            assert self._nursery is not None
            session: Any = Upload(self.api, owner_id, name, "/".join(parent.ctx["sub"]), self.cfg, self._nursery)
        elif parent.kind in ("properties",):
            collection, entity_id = parent.ctx["collection"], parent.ctx["id"]
            session = PropertyWrite(self.api, collection, entity_id, name)
        else:
            raise self.fail(path, errno.EROFS, f"cannot create {name!r} here (read-only)")
        node = Node(path=path + (name,), type=UPLOAD, ctx={"dynamic": UPLOAD, "writable": True, "upload": session}, mtime=time.time())
        self._add_local(parent, node)
        return session, node

    async def open_for_write(self, node: Node, truncate: bool) -> Any:
        """Opening an existing entry for writing: only a string property can be rewritten."""
        parent = self._parent(node)
        if node.type == UPLOAD:
            raise self.fail(node.path[:-1], errno.EBUSY, f"{node.name} is being uploaded")
        if node.type == TEXT and parent is not None and parent.kind == "properties":
            session = PropertyWrite(self.api, parent.ctx["collection"], parent.ctx["id"], node.ctx.get("prop_name") or node.name,
                                    b"" if truncate else node.content)
            if truncate:
                session.dirty = True
            return session
        raise self.fail(node.path[:-1], errno.EROFS, f"{node.name} is read-only (BaseSpace files cannot be changed)")

    def _parent(self, node: Node) -> Node | None:
        ino = self.tree.by_path.get(node.path[:-1])
        return self.tree.nodes.get(ino) if ino is not None else None

    async def write(self, session: Any, node: Node | None, off: int, data: bytes) -> int:
        try:
            n = await session.write(off, data)
        except WriteFailure as exc:
            if node is not None:
                self._report(node.path[:-1], exc)
            raise
        if node is not None:
            node.size = session.size
        return n

    def truncate(self, session: Any, node: Node, size: int) -> None:
        if isinstance(session, PropertyWrite):
            session.truncate(size)
        elif size != session.size:
            raise self.fail(node.path[:-1], errno.EINVAL, f"{node.name}: an upload can only be written, not truncated")
        node.size = session.size

    async def commit(self, session: Any, node: Node) -> None:
        """close()/fsync(): returns once the upload (or property) is committed; raises on failure."""
        folder = node.path[:-1]
        if isinstance(session, PropertyWrite):
            try:
                sent = await session.commit()
            except WriteFailure as exc:
                raise self._report(folder, exc) from None
            if sent:
                self._property_written(node, session)
                await self.refreshed(node)
            return
        already = session.result is not None
        try:
            result = await session.commit()
        except WriteFailure as exc:
            if session.error is not None:  # failed for good: unlisted now, not at release
                self._remove_local(node)
            raise self._report(folder, exc) from None
        if not already:
            self._upload_committed(session, node, result)
            await self.refreshed(node)  # the inode becomes the server's file (readable at once)

    async def release(self, session: Any, node: Node) -> None:
        """Last close of a handle (errors cannot reach the writer any more: logged + .error)."""
        folder = node.path[:-1]
        try:
            if isinstance(session, PropertyWrite):
                if await session.commit(force=node.type == UPLOAD):
                    self._property_written(node, session)
            elif session.result is None and session.error is None and session.size > 0:
                await self.commit(session, node)
            elif session.result is None:
                await session.discard()
        except WriteFailure as exc:
            self._report(folder, exc)
        finally:
            if node.type == UPLOAD:
                self._remove_local(node)

    def _upload_committed(self, session: Upload, node: Node, result: dict) -> None:
        self.uploads_committed += 1
        log.info("uploaded %s (%d bytes) as file %s", "/".join(node.path), session.size, result.get("Id"))
        href = f"v1pre3/appresults/{session.appresult_id}/files"
        cached = self.layout.lists.peek((href, (), False))
        if cached is not None and result.get("Id") is not None:
            cached.append(result)  # the listing now holds the file: no re-listing per uploaded file
        else:
            self._drop_api(href)
        self._remove_local(node)
        sub = len(self._files_parent_sub(node))
        root = node.path[: len(node.path) - 1 - sub]
        self._drop_listing(root, root[:-1] + ("Files.metadata",), prefix=True)
        self.layout.write_errors.pop(node.path[:-1], None)

    def _files_parent_sub(self, node: Node) -> tuple[str, ...]:
        parent = self._parent(node)
        return tuple(parent.ctx.get("sub", ())) if parent is not None else ()

    def _property_written(self, node: Node, session: PropertyWrite) -> None:
        self._drop_properties(session.collection, session.entity_id)
        self._drop_listing(node.path[:-1])
        self.layout.write_errors.pop(node.path[:-1], None)

    async def refreshed(self, node: Node) -> Node:
        """The node as the server lists it now (after a commit); the old one if not listed."""
        parent = self._parent(node)
        if parent is None:
            return node
        try:
            fresh = await self.tree.child(parent, node.name)
        except Exception:
            return node
        self.tree.remember(fresh)
        return fresh

    # -- symlinks under Properties/ -----------------------------------------------------------------------

    async def symlink(self, parent: Node, name: str, target: str) -> Node:
        path = parent.path
        if parent.kind not in ("properties", "propitems"):
            raise self.fail(path, errno.EROFS, "symlinks can only be made under Properties/ (to link an entity)")
        link_dir = path
        entity = await self.resolve(target, link_dir)
        if entity is None or entity.kind not in ("project", "sample", "appresult", "run"):
            raise self.fail(path, errno.EINVAL, f"{target!r} is not a project, sample, app result or run folder of this mount")
        kind, href = entity_href(entity.ctx)
        if parent.kind == "properties":
            collection, entity_id = parent.ctx["collection"], parent.ctx["id"]
            prop = {"Type": kind, "Name": name, "Description": "", "Content": href}
        else:
            collection, entity_id = parent.ctx["owner"]
            ptype = parent.ctx.get("type") or f"{kind}[]"
            if ptype.rstrip("[]") != kind:
                raise self.fail(path, errno.EINVAL, f"{parent.name} holds {ptype} items, not {kind}")
            # All of them: posting the property replaces its items, so the first 20 alone would drop the rest.
            items = [h for h in (item_href(i) for i in await self.layout.property_items(parent)) if h]
            prop = {"Type": ptype, "Name": parent.ctx.get("prop_name") or parent.name, "Description": "", "Items": items + [href]}
        try:
            await self.api.set_properties(collection, entity_id, [prop])
        except Exception as exc:
            raise self._report(path, property_failure(exc, prop["Name"])) from None
        properties_dir = path if parent.kind == "properties" else path[:-1]
        self._drop_properties(collection, entity_id)
        self._drop_listing(properties_dir, prefix=True)
        if parent.ctx.get("local"):
            self._remove_local(parent)
        self.layout.write_errors.pop(path, None)
        folder = parent
        if parent.kind == "propitems":  # its items come from the Properties listing: take the fresh one
            grand = self._parent(parent)
            try:
                folder = await self.tree.child(grand, parent.name) if grand is not None else parent
                self.tree.remember(folder)
            except Exception:
                folder = parent
        try:
            fresh = (await self.tree.children(folder)).get(name)
        except Exception:
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
        node = self.tree.nodes[1]
        for i, part in enumerate(parts):
            try:
                child = await self.tree.child(node, part)
            except (NotFound, Exception):
                return None
            if child.type == SYMLINK:
                if hops >= 8:
                    return None
                rest = "/".join(parts[i + 1 :])
                joined = child.target + ("/" + rest if rest else "")
                return await self.resolve(joined, child.path[:-1], hops + 1)
            node = child
        return node


__all__ = ["WriteManager", "WriteFailure", "UploadConfig", "UPLOAD", "ENTITY_KINDS"]
