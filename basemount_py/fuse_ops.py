"""The pyfuse3 adapter: translate kernel requests to ``tree``/``read`` calls and back. Nothing else.

Every handler goes through ``_guard``: it bounds the operation's time, and turns any exception
into a ``FUSEError`` (unexpected ones are logged with their traceback and become EIO), because a
non-FUSEError escaping a pyfuse3 handler kills the whole trio loop (pyfuse3 GH#93).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import time
from typing import Any, Callable

import pyfuse3
import trio

from .api.errors import errno_for, expected
from .read.concat import ConcatReader
from .tree import COMMANDS, DIR, REMOTE, TEXT, Node, Tree
from .tree.layout import LAZY

log = logging.getLogger(__name__)

COMMANDS_HELP = (
    b"Write a command to this file, e.g.: echo refresh > .commands\n"
    b"The commands valid in a folder: basemount-cmd --path FOLDER (with no command)\n"
)
SHORT_TTL = 1.0  # generated files whose content can change (.error, .commands): never 0
DIRECT_IO_BLKSIZE = 1024 * 1024  # st_blksize of BaseSpace files under --direct-io (see Operations)
COMMIT_TIMEOUT = 6 * 3600.0  # upper bound of close/fsync of an upload (parts are bounded each)


def _guard(func: Callable, long: bool = False) -> Callable:
    @functools.wraps(func)
    async def wrapper(self: "Operations", *args: Any) -> Any:
        try:
            # Committing an upload (close/fsync) may take longer than one op: every request in it
            # has its own timeout and retry deadline, so it is bounded by COMMIT_TIMEOUT instead.
            with trio.fail_after(COMMIT_TIMEOUT if long else self.op_timeout):
                return await func(self, *args)
        except pyfuse3.FUSEError:
            raise
        except trio.TooSlowError:
            log.error("%s%r took longer than %.0f s; failing it with EIO", func.__name__, args[:2], self.op_timeout)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception as exc:
            if expected(exc):
                log.warning("%s%r: %s", func.__name__, args[:2], exc)
            else:
                log.exception("unexpected error in %s%r", func.__name__, args[:2])
            raise pyfuse3.FUSEError(errno_for(exc)) from None

    return wrapper


def _guard_long(func: Callable) -> Callable:
    return _guard(func, long=True)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        tree: Tree,
        reads: Any,
        commands: Callable[[tuple[str, ...], str], Any],
        *,
        op_timeout: float = 60.0,
        writes: Any = None,
        direct_io: bool = False,
    ):
        super().__init__()
        self.tree = tree
        self.reads = reads  # read.ReadManager
        self.writes = writes  # write.WriteManager (None: everything read-only)
        self._uploads: dict[int, tuple[Any, Node]] = {}  # fh -> (spool entry being written, node)
        self._spooled: dict[int, tuple[Any, int]] = {}  # fh -> (spool entry, its own fd) opened for reading
        self.run_command = commands  # async (dir path, command text) -> None
        self.op_timeout = op_timeout
        # --direct-io: BaseSpace files bypass the page cache. Reads then go from the daemon straight
        # into the reader's buffer; filling fresh page-cache pages was half the daemon's CPU on a
        # VM (docs/performance.md). A 1 MiB st_blksize makes cp, cat, Python and htslib read 1 MiB
        # at a time, since without the page cache there is no kernel readahead to batch small reads.
        self.direct_io = direct_io
        self.uid, self.gid = os.getuid(), os.getgid()
        self._dirs: dict[int, list[tuple[str, Node]]] = {}
        self._files: dict[int, Any] = {}
        self._texts: dict[int, bytes] = {}
        self._command_dirs: dict[int, tuple[str, ...]] = {}
        self._fh = 0
        # Folders the mount makes up (the root, Projects/, Files/ of an undated entity...) have no
        # date of their own: they show the mount's start rather than 1 January 1970.
        self.mounted_at = time.time()

    # -- attributes ---------------------------------------------------------------------------

    def _attrs(self, ino: int, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.generation = 0
        a.st_mode = node.mode
        if node.ctx.get("writable"):  # write mode: mkdir/create/rmdir/ln -s allowed here (owner)
            a.st_mode |= 0o200
        a.st_nlink = 2 if node.type == DIR else 1
        a.st_uid, a.st_gid = self.uid, self.gid
        a.st_size = node.st_size
        bypasses_page_cache = node.type == REMOTE and (self.direct_io or "parts" in node.ctx)
        a.st_blksize = DIRECT_IO_BLKSIZE if bypasses_page_cache else 128 * 1024
        a.st_blocks = (a.st_size + 511) // 512
        ns = int((node.mtime or self.mounted_at) * 1e9)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
        dynamic = node.type == COMMANDS or node.ctx.get("dynamic")
        ttl = SHORT_TTL if dynamic else self.tree.metadata_ttl
        a.attr_timeout = ttl
        a.entry_timeout = ttl
        return a

    def _new_fh(self) -> int:
        self._fh += 1
        return self._fh

    # -- lookups ------------------------------------------------------------------------------

    @_guard
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext = None) -> pyfuse3.EntryAttributes:
        if self.writes is not None:
            # a lookup in a folder with files waiting to upload may be the start of a rename
            # (rsync's temp files): their uploads wait until it is over
            with self.writes.folder_activity(self.tree.node(parent_inode).path):
                ino, node = await self.tree.lookup(parent_inode, os.fsdecode(name))
        else:
            ino, node = await self.tree.lookup(parent_inode, os.fsdecode(name))
        if node.path:  # the kernel never counts lookups of "." / ".." / the root
            self.tree.count_lookup(ino)
        return self._attrs(ino, node)

    @_guard
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext = None) -> pyfuse3.EntryAttributes:
        return self._attrs(inode, await self.tree.ready(inode))

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        try:
            self.tree.forget(inode_list)
        except Exception:
            log.exception("forget failed")

    @_guard
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext = None) -> bytes:
        node = await self.tree.ready(inode)
        if not node.target:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.target)

    # -- directories --------------------------------------------------------------------------

    @_guard
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext = None) -> int:
        # Snapshot the listing: entries added or removed by a refresh mid-`ls` must not cause
        # skipped or repeated names, and the kernel's offsets index into this snapshot.
        entries = await self.tree.readdir(inode)
        fh = self._new_fh()
        self._dirs[fh] = entries
        return fh

    @_guard
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._dirs.get(fh, [])
        for index in range(start_id, len(entries)):
            name, node = entries[index]
            ino = self.tree.remember(node)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(ino, node), index + 1):
                break
            self.tree.count_lookup(ino)  # READDIRPLUS: each accepted entry is a lookup

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files --------------------------------------------------------------------------------

    @_guard
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext = None) -> pyfuse3.FileInfo:
        node = await self.tree.ready(inode)
        writing = flags & (os.O_WRONLY | os.O_RDWR)
        if node.type == COMMANDS:
            fh = self._new_fh()
            helper = getattr(self.run_command, "help", None)
            self._texts[fh] = helper(node.path[:-1]).encode() if helper else COMMANDS_HELP
            self._command_dirs[fh] = node.path[:-1]
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        if writing or flags & os.O_TRUNC:
            if self.writes is None:
                raise pyfuse3.FUSEError(errno.EROFS)
            session = await self.writes.open_for_write(node, truncate=bool(flags & os.O_TRUNC))
            fh = self._new_fh()
            self._uploads[fh] = (session, node)
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        fh = self._new_fh()
        if node.type == REMOTE:
            self.tree.layout.refuse_archived(node)  # EACCES, before any call
            parts = node.ctx.get("parts")
            if parts is not None:
                # A merged FASTQ: each handle reads the parts it was opened with, while a refresh
                # may change the parts behind the same path. The page cache is per file, so it
                # could hand one handle another's bytes: these files always bypass it.
                self._files[fh] = ConcatReader(self.reads, parts)
                return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
            self._files[fh] = self.reads.open(node.file_id, node.size, node.name, node.ctx.get("version"), etag=node.ctx.get("etag"))
            if self.direct_io:
                return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
            # Remote files never change under an id: let the kernel keep their pages. Not under
            # --verify: pages kept from a read that failed the check would be served unchecked.
            return pyfuse3.FileInfo(fh=fh, keep_cache=not self.reads.verify)
        if node.type == TEXT:
            self._texts[fh] = node.content
            # generated late (lazy) or changing (.error): the size the kernel holds may be stale
            late = bool(node.ctx.get("dynamic") or node.ctx.get(LAZY))
            return pyfuse3.FileInfo(fh=fh, direct_io=late, keep_cache=False)
        if node.ctx.get("upload") is not None and self.writes is not None:
            entry = node.ctx["upload"]  # not uploaded yet: read from the spool
            self._spooled[fh] = (entry, await self.writes.open_reader(entry))
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        raise pyfuse3.FUSEError(errno.EISDIR if node.type == DIR else errno.EINVAL)

    @_guard
    async def read(self, fh: int, off: int, size: int) -> bytes:
        reader = self._files.get(fh)
        if reader is not None:
            return await reader.read(off, size)
        spooled = self._spooled.get(fh)
        if spooled is not None:
            return await self.writes.read(spooled[0], off, size, spooled[1])
        if fh in self._uploads:  # O_RDWR
            return await self.writes.read(self._uploads[fh][0], off, size)
        data = self._texts.get(fh)
        if data is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return data[off : off + size]

    @_guard
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        upload = self._uploads.get(fh)
        if upload is not None:
            return await self.writes.write(upload[0], upload[1], off, buf)
        # `.commands`: each written line is a command for the folder holding it.
        path = self._command_dirs.get(fh)
        if path is None:
            raise pyfuse3.FUSEError(errno.EROFS)
        for line in buf.decode("utf-8", "replace").splitlines():
            if line.strip():
                await self.run_command(path, line.strip())
        return len(buf)

    @_guard_long
    async def flush(self, fh: int) -> None:
        # close(): the bytes are fsync'd into the local spool here; the upload follows in the
        # background (docs/writes.md), so close() is fast and an API outage cannot lose the file.
        upload = self._uploads.get(fh)
        if upload is not None:
            await self.writes.flush(*upload)

    @_guard_long
    async def fsync(self, fh: int, datasync: bool) -> None:
        # fsync(fd) waits for the upload of this file and reports its error.
        upload = self._uploads.get(fh)
        if upload is not None:
            await self.writes.fsync(*upload)

    async def release(self, fh: int) -> None:
        upload = self._uploads.pop(fh, None)
        if upload is not None:
            try:
                await self.writes.release(*upload)
            except Exception:
                log.exception("releasing an upload failed")
        reader = self._files.pop(fh, None)
        spooled = self._spooled.pop(fh, None)
        if spooled is not None:
            os.close(spooled[1])
        self._texts.pop(fh, None)
        self._command_dirs.pop(fh, None)
        if reader is not None:
            try:
                await reader.close()
            except Exception:
                log.exception("closing a file reader failed")

    @_guard
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.tree.current(inode)
        # `echo cmd > .commands` truncates first; accept that for the command file only.
        if node.type == COMMANDS and not (fields.update_mode or fields.update_uid or fields.update_gid):
            return self._attrs(inode, node)
        upload = self._uploads.get(fh) if fh is not None else None
        if upload is None and node.ctx.get("upload") is not None:
            upload = (node.ctx["upload"], node)
        if upload is not None and self.writes is not None:
            # A file or property not uploaded yet: sizes go to the spool (ftruncate may grow it:
            # the hole reads as zeros); modes, owners and times are ignored (cp -p, cp -a,
            # install, tar, rsync), as BaseSpace keeps none of them.
            if fields.update_size:
                await self.writes.truncate(upload[0], upload[1], attr.st_size)
            return self._attrs(inode, upload[1])
        if self.writes is not None and not fields.update_size and self.writes.accepts_attributes(node):
            return self._attrs(inode, node)  # a file just uploaded: cp -p / rsync set times after close
        raise pyfuse3.FUSEError(errno.EROFS)

    # -- extended attributes, statfs ------------------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext = None) -> bytes:
        # Hot path: `ls -l` asks for security.selinux and the POSIX ACLs of every entry. Kept
        # free of awaits and of the guard's cancel scope; it cannot raise anything but FUSEError.
        node = self.tree.nodes.get(inode)
        value = node.xattrs.get(name.decode("utf-8", "replace")) if node is not None else None
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_guard
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext = None) -> list[bytes]:
        return [os.fsencode(k) for k in self.tree.node(inode).xattrs]

    async def statfs(self, ctx: pyfuse3.RequestContext = None) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_namemax = 255
        return s

    # -- write mode: the logic lives in write/ ------------------------------------------------------

    def _writes(self) -> Any:
        if self.writes is None:
            raise pyfuse3.FUSEError(errno.EROFS)
        return self.writes

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        ino = self.tree.remember(node)
        self.tree.count_lookup(ino)  # a successful mkdir/create/symlink counts as a lookup
        return self._attrs(ino, node)

    @_guard
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext = None) -> pyfuse3.EntryAttributes:
        node = await self._writes().mkdir(self.tree.node(parent_inode), os.fsdecode(name))
        return self._entry(node)

    @_guard
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext = None) -> None:
        await self._writes().rmdir(self.tree.node(parent_inode), os.fsdecode(name))

    @_guard
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext = None) -> None:
        await self._writes().unlink(self.tree.node(parent_inode), os.fsdecode(name))

    @_guard
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext = None) -> tuple:
        session, node = await self._writes().create(self.tree.node(parent_inode), os.fsdecode(name))
        fh = self._new_fh()
        self._uploads[fh] = (session, node)
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False), self._entry(node)

    @_guard
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext = None) -> pyfuse3.EntryAttributes:
        node = await self._writes().symlink(self.tree.node(parent_inode), os.fsdecode(name), os.fsdecode(target))
        return self._entry(node)

    # -- everything else is read-only ---------------------------------------------------------

    @_guard
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int, ctx: pyfuse3.RequestContext = None) -> None:
        if flags:  # RENAME_NOREPLACE / RENAME_EXCHANGE: not for BaseSpace names
            raise pyfuse3.FUSEError(errno.EINVAL)
        await self._writes().rename(
            self.tree.node(parent_inode_old), os.fsdecode(name_old), self.tree.node(parent_inode_new), os.fsdecode(name_new)
        )

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext = None) -> None:
        node = self.tree.nodes.get(inode)
        if node is not None and self.writes is not None and (node.ctx.get("upload") is not None or self.writes.accepts_attributes(node)):
            raise pyfuse3.FUSEError(errno.ENOTSUP)  # cp -a, shutil.copystat: skipped quietly, then chmod
        raise pyfuse3.FUSEError(errno.EROFS)

    async def _read_only(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    link = mknod = _read_only
    removexattr = _read_only




