"""The filesystem without a kernel: every decision a FUSE request needs, as plain async methods.

``Filesystem`` plays the part of mountpoint-s3's ``S3Filesystem``: it owns the inode table (the
``Tree``), ONE table of open handles (typed: directory snapshot, remote read, generated text,
``.commands``, upload, spooled read), the attributes the kernel sees, and the in-mount commands.
It speaks inode numbers, names as ``str`` and plain data (``Attributes``, ``Opened``); the pyfuse3
adapter (``fuse_ops.py``) only translates. What it needs from the kernel (invalidating cached
names, ending the session) is passed in as a ``Kernel``, so tests drive it in-process.

Failures are raised as the ``api.errors`` hierarchy (``FsError``); the adapter maps them to errno
through ``errno_for``, the one mapping. Each operation is bounded in time (``op_timeout``).
"""

from __future__ import annotations

import contextvars
import errno
import functools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, NoReturn, Protocol, TypeVar

import trio

from .api.errors import Refused, ShuttingDown, TimedOut
from .commands import CommandRunner
from .options import MountOptions
from .read.concat import ConcatReader
from .tasks import never_fatal
from .read.reader import index_names
from .tree import COMMANDS, DIR, REMOTE, TEXT, Node, Tree
from .tree.nodes import MergedRef, RemoteRef

log = logging.getLogger(__name__)

SHORT_TTL = 1.0  # generated files whose content can change (.error, .commands): never 0
DIRECT_IO_BLKSIZE = 1024 * 1024  # st_blksize of BaseSpace files under --direct-io (see Filesystem)
BLKSIZE = 128 * 1024
COMMIT_TIMEOUT = 6 * 3600.0  # upper bound of close/fsync of an upload (parts are bounded each)


class Kernel(Protocol):
    """What the filesystem asks of the kernel side (pyfuse3 in a mount, a recorder in tests)."""

    def invalidate_entry(self, parent_ino: int, name: str) -> None: ...

    def terminate(self) -> None: ...


@dataclass(frozen=True)
class Attributes:
    """What ``stat`` shows of one entry, and how long the kernel may cache it."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    blksize: int
    mtime_ns: int
    ttl: float

    @property
    def blocks(self) -> int:
        return (self.size + 511) // 512


@dataclass(frozen=True)
class Opened:
    """An open file: its handle and how the kernel should cache its pages."""

    fh: int
    direct_io: bool = True
    keep_cache: bool = False


# -- the handle table's entries ----------------------------------------------------------------


class Handle:
    """An open file. Each kind answers the calls it supports; the rest fail as a closed or
    read-only file would."""

    async def read(self, off: int, size: int) -> bytes:
        raise Refused(errno.EBADF, "not open for reading")

    async def write(self, off: int, data: bytes) -> int:
        raise Refused(errno.EROFS, "read-only file")

    async def flush(self) -> None:
        pass

    async def fsync(self) -> None:
        pass

    async def release(self) -> None:
        pass


@dataclass
class DirHandle(Handle):
    """OPENDIR's snapshot: entries added or removed by a refresh mid-``ls`` must not cause skipped
    or repeated names, and the kernel's offsets index into this list."""

    entries: list[tuple[str, Node]]


@dataclass
class TextHandle(Handle):
    """A generated file (``.json``, ``.error``...): its bytes as they were at open."""

    data: bytes

    async def read(self, off: int, size: int) -> bytes:
        return self.data[off : off + size]


@dataclass
class CommandHandle(TextHandle):
    """``DIR/.commands``: reading lists the commands valid in DIR, each written line runs one."""

    folder: tuple[str, ...] = ()
    run: Callable[[tuple[str, ...], str], Awaitable[None]] | None = None

    async def write(self, off: int, data: bytes) -> int:
        assert self.run is not None
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                await self.run(self.folder, line.strip())
        return len(data)


@dataclass
class ReadHandle(Handle):
    """A BaseSpace file (or a merged FASTQ) read through the read path."""

    reader: Any  # read.FileReader, ConcatReader or VerifiedReader

    async def read(self, off: int, size: int) -> bytes:
        return await self.reader.read(off, size)

    async def release(self) -> None:
        await self.reader.close()


@dataclass
class SpooledReadHandle(Handle):
    """A file not uploaded yet (or failed for good), read from the upload spool."""

    writes: Any
    entry: Any
    fd: int

    async def read(self, off: int, size: int) -> bytes:
        return await self.writes.read(self.entry, off, size, self.fd)

    async def release(self) -> None:
        os.close(self.fd)


@dataclass
class UploadHandle(Handle):
    """A file (or property) being written: its bytes go to the spool, the upload follows."""

    writes: Any  # write.WriteManager
    entry: Any  # write.SpoolEntry
    node: Node

    async def read(self, off: int, size: int) -> bytes:  # O_RDWR
        return await self.writes.read(self.entry, off, size)

    async def write(self, off: int, data: bytes) -> int:
        return await self.writes.write(self.entry, self.node, off, data)

    async def flush(self) -> None:
        # close(): the bytes are fsync'd into the local spool here; the upload follows in the
        # background (docs/writes.md), so close() is fast and an API outage cannot lose the file.
        await self.writes.flush(self.entry, self.node)

    async def fsync(self) -> None:
        await self.writes.fsync(self.entry, self.node)  # waits for the upload, reports its error

    async def release(self) -> None:
        await self.writes.release(self.entry, self.node)


# -- the filesystem ------------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
# The cancel scope of the operation this task is running (the one a shutdown it asks for spares)
_current_operation: contextvars.ContextVar[trio.CancelScope | None] = contextvars.ContextVar("current_operation", default=None)


def bounded(long: bool = False, interruptible: bool = True) -> Callable[[F], F]:
    """Bound an operation's time by ``op_timeout``; committing an upload (close/fsync) by
    COMMIT_TIMEOUT instead, since every request in it has its own timeout and retry deadline.
    ``interruptible``: ``Filesystem.shutdown`` cancels it at once (it fails with EIO); only
    operations that never wait on the network (flush: the spool's own fsync) are left to finish."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        async def wrapper(self: "Filesystem", *args: Any, **kwargs: Any) -> Any:
            limit = COMMIT_TIMEOUT if long else self.op_timeout
            scope = trio.CancelScope()
            if interruptible:
                if self.closing:
                    scope.cancel()
                self._in_flight.add(scope)
            token = _current_operation.set(scope)
            try:
                with scope:
                    with trio.fail_after(limit):
                        return await func(self, *args, **kwargs)
            except trio.TooSlowError:
                log.error("%s%r took longer than %.0f s; failing it with EIO", func.__name__, args[:2], limit)
                raise TimedOut(f"{func.__name__} took longer than {limit:.0f} s") from None
            finally:
                _current_operation.reset(token)
                self._in_flight.discard(scope)
            raise ShuttingDown(f"{func.__name__} interrupted: the mount is shutting down")  # only a shutdown cancels the scope

        return wrapper  # type: ignore[return-value]

    return decorate


class _ShutdownFirst:
    """The kernel as the commands see it: `unmount` ends the operations under way, then the session
    (as a signal does, mount._watch_signals)."""

    def __init__(self, fs: "Filesystem", kernel: Kernel):
        self.fs, self.kernel = fs, kernel

    def invalidate_entry(self, parent_ino: int, name: str) -> None:
        self.kernel.invalidate_entry(parent_ino, name)

    def terminate(self) -> None:
        cancelled = self.fs.shutdown()
        log.info("unmounting: %d operation(s) under way fail with EIO", cancelled)
        self.kernel.terminate()


class Filesystem:
    def __init__(
        self,
        tree: Tree,
        reads: Any,
        kernel: Kernel,
        *,
        writes: Any = None,
        op_timeout: float = MountOptions.op_timeout,
        direct_io: bool = MountOptions.direct_io,
    ):
        self.tree = tree
        self.reads = reads  # read.ReadManager
        self.writes = writes  # write.WriteManager (None: everything read-only)
        self.commands = CommandRunner(tree, writes, _ShutdownFirst(self, kernel))
        self.op_timeout = op_timeout
        # --direct-io: BaseSpace files bypass the page cache. Reads then go from the daemon straight
        # into the reader's buffer; filling fresh page-cache pages was half the daemon's CPU on a
        # VM (docs/performance.md). A 1 MiB st_blksize makes cp, cat, Python and htslib read 1 MiB
        # at a time, since without the page cache there is no kernel readahead to batch small reads.
        self.direct_io = direct_io
        self.uid, self.gid = os.getuid(), os.getgid()
        self.handles: dict[int, Handle] = {}
        self._last_fh = 0
        # The cancel scopes of the interruptible operations under way (see shutdown)
        self._in_flight: set[trio.CancelScope] = set()
        self.closing = False
        # Folders the mount makes up (the root, Projects/, Files/ of an undated entity...) have no
        # date of their own: they show the mount's start rather than 1 January 1970.
        self.mounted_at = time.time()

    def shutdown(self) -> int:
        """The mount is going away (SIGTERM/SIGINT/SIGHUP): fail the operations under way with EIO
        at once, and every later one, instead of letting them retry a gone server until their
        deadline (minutes with a large --op-timeout) while the daemon waits for them to end.
        Nothing written is lost: uploads stay in the spool and resume at the next mount, and a
        flush or release (local to the spool) still completes. Returns how many were cancelled."""
        self.closing = True
        asking = _current_operation.get()  # `unmount` written to .commands: that write succeeds
        others = [scope for scope in self._in_flight if scope is not asking]
        for scope in others:
            scope.cancel()
        return len(others)

    # -- attributes and handles -------------------------------------------------------------------

    def attributes(self, ino: int, node: Node) -> Attributes:
        mode = node.mode
        if node.writable:  # write mode: mkdir/create/rmdir/ln -s allowed here (owner)
            mode |= 0o200
        bypasses_page_cache = node.type == REMOTE and (self.direct_io or isinstance(node.data, MergedRef))
        dynamic = node.type == COMMANDS or node.dynamic is not None
        return Attributes(
            ino=ino,
            mode=mode,
            nlink=2 if node.type == DIR else 1,
            uid=self.uid,
            gid=self.gid,
            size=node.st_size,
            blksize=DIRECT_IO_BLKSIZE if bypasses_page_cache else BLKSIZE,
            mtime_ns=int((node.mtime or self.mounted_at) * 1e9),
            ttl=SHORT_TTL if dynamic else self.tree.metadata_ttl,
        )

    def _add(self, handle: Handle) -> int:
        self._last_fh += 1
        self.handles[self._last_fh] = handle
        return self._last_fh

    def _handle(self, fh: int) -> Handle:
        handle = self.handles.get(fh)
        if handle is None:
            raise Refused(errno.EBADF, f"no open file {fh}")
        return handle

    def _entry(self, node: Node) -> Attributes:
        ino = self.tree.remember(node)
        self.tree.count_lookup(ino)  # a successful lookup/mkdir/create/symlink counts as a lookup
        return self.attributes(ino, node)

    def _writes(self) -> Any:
        if self.writes is None:
            raise Refused(errno.EROFS, "read-only mount")
        return self.writes

    # -- lookups ------------------------------------------------------------------------------------

    @bounded()
    async def lookup(self, parent_ino: int, name: str) -> Attributes:
        if self.writes is not None:
            # a lookup in a folder with files waiting to upload may be the start of a rename
            # (rsync's temp files): their uploads wait until it is over
            with self.writes.folder_activity(self.tree.node(parent_ino).path):
                ino, node = await self.tree.lookup(parent_ino, name)
        else:
            ino, node = await self.tree.lookup(parent_ino, name)
        if node.path:  # the kernel never counts lookups of "." / ".." / the root
            self.tree.count_lookup(ino)
        return self.attributes(ino, node)

    @bounded()
    async def getattr(self, ino: int) -> Attributes:
        return self.attributes(ino, await self.tree.ready(ino))

    def forget(self, items: Iterable[tuple[int, int]]) -> None:
        """The kernel dropped names; it hears of no failure (there is no reply), so none is raised."""
        with never_fatal(log, "forget failed", level=logging.ERROR):
            self.tree.forget(items)

    @bounded()
    async def readlink(self, ino: int) -> str:
        node = await self.tree.ready(ino)
        if not node.target:
            raise Refused(errno.EINVAL, f"/{'/'.join(node.path)} is not a symlink")
        return node.target

    def xattr(self, ino: int, name: str) -> bytes | None:
        """Hot path (``ls -l`` asks for security.selinux and the ACLs of every entry): no await."""
        node = self.tree.nodes.get(ino)
        return node.xattrs.get(name) if node is not None else None

    def xattr_names(self, ino: int) -> list[str]:
        return list(self.tree.node(ino).xattrs)

    # -- directories ------------------------------------------------------------------------------

    @bounded()
    async def opendir(self, ino: int) -> int:
        return self._add(DirHandle(await self.tree.readdir(ino)))

    def readdir(self, fh: int, start: int, reply: Callable[[str, Attributes, int], bool]) -> None:
        """Hand entries from ``start`` to ``reply(name, attributes, next offset)`` until it says no
        more fit; each accepted one counts as a lookup (READDIRPLUS)."""
        handle = self.handles.get(fh)
        entries = handle.entries if isinstance(handle, DirHandle) else []
        for index in range(start, len(entries)):
            name, node = entries[index]
            node = self.tree.current_entry(node)
            known = self.tree.inode_of(node.path) is not None
            ino = self.tree.remember(node)
            if not reply(name, self.attributes(ino, node), index + 1):
                if not known:  # the kernel never heard of it, so it will never forget it
                    self.tree.forget([(ino, 0)])
                break
            self.tree.count_lookup(ino)

    def releasedir(self, fh: int) -> None:
        self.handles.pop(fh, None)

    # -- files ------------------------------------------------------------------------------------

    @bounded()
    async def open(self, ino: int, flags: int) -> Opened:
        node = await self.tree.ready(ino)
        if node.type == COMMANDS:
            folder = node.path[:-1]
            help_text = self.commands.help(folder).encode()
            return Opened(self._add(CommandHandle(help_text, folder, self.commands)))
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            entry = await self._writes().open_for_write(node, truncate=bool(flags & os.O_TRUNC))
            return Opened(self._add(UploadHandle(self.writes, entry, node)))
        if node.type == REMOTE:
            self.tree.layout.refuse_archived(node)  # EACCES, before any call
            if isinstance(node.data, MergedRef):
                # A merged FASTQ: each handle reads the parts it was opened with, while a refresh
                # may change the parts behind the same path. The page cache is per file, so it
                # could hand one handle another's bytes: these files always bypass it.
                return Opened(self._add(ReadHandle(ConcatReader(self.reads, node.data.parts))))
            remote = node.data if isinstance(node.data, RemoteRef) else RemoteRef()
            reader = self.reads.open(node.file_id, node.size, node.name, remote.version, etag=remote.etag)
            self._fetch_if_indexed(node, remote)
            fh = self._add(ReadHandle(reader))
            if self.direct_io:
                return Opened(fh)
            # Remote files never change under an id: let the kernel keep their pages. Not under
            # --verify: pages kept from a read that failed the check would be served unchecked.
            return Opened(fh, direct_io=False, keep_cache=not self.reads.verify)
        if node.type == TEXT:
            # generated late (lazy) or changing (.error): the size the kernel holds may be stale
            late = node.dynamic is not None or node.lazy is not None
            return Opened(self._add(TextHandle(node.content)), direct_io=late)
        if node.upload is not None and self.writes is not None:
            entry = node.upload  # not uploaded yet: read from the spool
            return Opened(self._add(SpooledReadHandle(self.writes, entry, await self.writes.open_reader(entry))))
        if node.type == DIR:
            raise Refused(errno.EISDIR, f"/{'/'.join(node.path)} is a folder")
        raise Refused(errno.EINVAL, f"/{'/'.join(node.path)} cannot be opened")

    def _fetch_if_indexed(self, node: Node, remote: RemoteRef) -> None:
        """A file opened with an index beside it (``x.bam`` and ``x.bam.bai``) is about to be
        read by region: start fetching it whole (small files only: ``ReadManager.fetch_indexed``).
        The folder's listing is looked at as cached (it was listed to open the file); nothing is
        listed for this."""
        listing = self.tree.listings.peek(node.path[:-1])
        if listing and any(name in listing for name in index_names(node.name)):
            self.reads.fetch_indexed(node.file_id, node.size, remote.version)

    @bounded()
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self._handle(fh).read(off, size)

    @bounded()
    async def write(self, fh: int, off: int, data: bytes) -> int:
        return await self._handle(fh).write(off, data)

    @bounded(long=True, interruptible=False)
    async def flush(self, fh: int) -> None:
        await self._handle(fh).flush()

    @bounded(long=True)
    async def fsync(self, fh: int) -> None:
        await self._handle(fh).fsync()

    async def release(self, fh: int) -> None:
        """The last close of a handle: never fails (the kernel ignores it); failures are logged."""
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        with never_fatal(log, "releasing %s failed", type(handle).__name__, level=logging.ERROR):
            await handle.release()

    @bounded()
    async def setattr(self, ino: int, fh: int | None, *, size: int | None = None, ownership: bool = False) -> Attributes:
        """``size``: truncate to it; ``ownership``: a chmod/chown. Times are always accepted
        where anything is."""
        node = self.tree.current(ino)
        # `echo cmd > .commands` truncates first; accept that for the command file only.
        if node.type == COMMANDS and not ownership:
            return self.attributes(ino, node)
        handle = self.handles.get(fh) if fh is not None else None
        if isinstance(handle, UploadHandle):
            entry, target = handle.entry, handle.node
        else:
            entry, target = node.upload, node
        if entry is not None and self.writes is not None:
            # A file or property not uploaded yet: sizes go to the spool (ftruncate may grow it:
            # the hole reads as zeros); modes, owners and times are ignored (cp -p, cp -a,
            # install, tar, rsync), as BaseSpace keeps none of them.
            if size is not None:
                await self.writes.truncate(entry, target, size)
            return self.attributes(ino, target)
        if self.writes is not None and size is None and self.writes.accepts_attributes(node):
            return self.attributes(ino, node)  # a file just uploaded: cp -p / rsync set times after close
        raise Refused(errno.EROFS, f"/{'/'.join(node.path)} is read-only")

    def read_only(self) -> NoReturn:
        """link, mknod, removexattr: nothing BaseSpace could keep."""
        raise Refused(errno.EROFS, "read-only")

    def setxattr(self, ino: int) -> None:
        node = self.tree.nodes.get(ino)
        if node is not None and self.writes is not None and (node.upload is not None or self.writes.accepts_attributes(node)):
            raise Refused(errno.ENOTSUP, "extended attributes are not kept")  # cp -a, copystat: skipped quietly
        raise Refused(errno.EROFS, "read-only")

    # -- write mode: the logic lives in write/ ------------------------------------------------------

    @bounded()
    async def mkdir(self, parent_ino: int, name: str) -> Attributes:
        return self._entry(await self._writes().mkdir(self.tree.node(parent_ino), name))

    @bounded()
    async def rmdir(self, parent_ino: int, name: str) -> None:
        await self._writes().rmdir(self.tree.node(parent_ino), name)

    @bounded()
    async def unlink(self, parent_ino: int, name: str) -> None:
        await self._writes().unlink(self.tree.node(parent_ino), name)

    @bounded()
    async def create(self, parent_ino: int, name: str) -> tuple[Opened, Attributes]:
        entry, node = await self._writes().create(self.tree.node(parent_ino), name)
        fh = self._add(UploadHandle(self.writes, entry, node))
        return Opened(fh), self._entry(node)

    @bounded()
    async def symlink(self, parent_ino: int, name: str, target: str) -> Attributes:
        return self._entry(await self._writes().symlink(self.tree.node(parent_ino), name, target))

    @bounded()
    async def rename(self, old_parent: int, old_name: str, new_parent: int, new_name: str, flags: int = 0) -> None:
        if flags:  # RENAME_NOREPLACE / RENAME_EXCHANGE: not for BaseSpace names
            raise Refused(errno.EINVAL, "rename flags are not supported")
        writes = self._writes()
        await writes.rename(self.tree.node(old_parent), old_name, self.tree.node(new_parent), new_name)
