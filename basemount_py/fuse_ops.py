"""The pyfuse3 adapter: kernel requests to ``core.Filesystem`` calls and back. Translation only.

Every decision (what opens how, attributes, handles, commands, time bounds) lives in the core.
Here: bytes names to ``str``, plain results to pyfuse3's structures, and ``_errno_boundary``,
which turns any exception into a ``FUSEError`` through ``errno_for`` (the one mapping), because a
non-FUSEError escaping a pyfuse3 handler kills the whole trio loop (pyfuse3 GH#93).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator, Sequence

import pyfuse3
import trio

from .api.errors import errno_for, expected, quiet
from .core import Attributes, Filesystem, Opened
from .tasks import never_fatal

log = logging.getLogger(__name__)


class PyfuseKernel:
    """``core.Kernel`` for a real mount."""

    def invalidate_entry(self, parent_ino: int, name: str) -> None:
        # ignore_enoent: the kernel has often forgotten the name already, which is normal; pyfuse3
        # would otherwise log it as an ERROR with a traceback. The async variant never blocks.
        with never_fatal(log, "invalidate %s in %d", name, parent_ino, level=logging.DEBUG):
            pyfuse3.invalidate_entry_async(parent_ino, name.encode("utf-8", "surrogateescape"), ignore_enoent=True)

    def terminate(self) -> None:
        pyfuse3.terminate()


@contextlib.contextmanager
def _errno_boundary(op: str, *args: Any) -> Iterator[None]:
    try:
        yield
    except pyfuse3.FUSEError:
        raise
    except Exception as exc:  # THE boundary: whatever an operation raised, the kernel gets an errno
        if not quiet(exc):
            if expected(exc):
                log.warning("%s%r: %s", op, args, exc)
            else:
                log.exception("unexpected error in %s%r", op, args)
        raise pyfuse3.FUSEError(errno_for(exc)) from None


def _entry(a: Attributes) -> pyfuse3.EntryAttributes:
    out = pyfuse3.EntryAttributes()
    out.st_ino, out.generation, out.st_mode, out.st_nlink = a.ino, 0, a.mode, a.nlink
    out.st_uid, out.st_gid, out.st_size, out.st_blksize, out.st_blocks = a.uid, a.gid, a.size, a.blksize, a.blocks
    out.st_atime_ns = out.st_mtime_ns = out.st_ctime_ns = a.mtime_ns
    out.attr_timeout = out.entry_timeout = a.ttl
    return out


def _info(o: Opened) -> pyfuse3.FileInfo:
    return pyfuse3.FileInfo(fh=o.fh, direct_io=o.direct_io, keep_cache=o.keep_cache)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: Filesystem):
        super().__init__()
        self.fs = fs
        self.initialized = trio.Event()  # set while the kernel's FUSE_INIT is answered

    def init(self) -> None:
        # pyfuse3 calls this from the FUSE_INIT handler, before the answer is written: a task
        # waiting on the event runs after it, once the kernel has applied the answer
        # (mount._tune_kernel_after_init).
        self.initialized.set()

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        with _errno_boundary("lookup", parent_inode, name):
            return _entry(await self.fs.lookup(parent_inode, os.fsdecode(name)))

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        with _errno_boundary("getattr", inode):
            return _entry(await self.fs.getattr(inode))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        self.fs.forget(inode_list)

    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        with _errno_boundary("readlink", inode):
            return os.fsencode(await self.fs.readlink(inode))

    async def opendir(self, inode: int, ctx: Any = None) -> int:
        with _errno_boundary("opendir", inode):
            return await self.fs.opendir(inode)

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        def reply(name: str, attrs: Attributes, next_id: int) -> bool:
            return pyfuse3.readdir_reply(token, os.fsencode(name), _entry(attrs), next_id)

        with _errno_boundary("readdir", fh):
            self.fs.readdir(fh, start_id, reply)

    async def releasedir(self, fh: int) -> None:
        self.fs.releasedir(fh)

    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        with _errno_boundary("open", inode):
            return _info(await self.fs.open(inode, flags))

    async def read(self, fh: int, off: int, size: int) -> bytes:
        with _errno_boundary("read", fh, off):
            return await self.fs.read(fh, off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        with _errno_boundary("write", fh, off):
            return await self.fs.write(fh, off, buf)

    async def flush(self, fh: int) -> None:
        with _errno_boundary("flush", fh):
            await self.fs.flush(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        with _errno_boundary("fsync", fh):
            await self.fs.fsync(fh)

    async def release(self, fh: int) -> None:
        await self.fs.release(fh)

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        size = attr.st_size if fields.update_size else None
        ownership = bool(fields.update_mode or fields.update_uid or fields.update_gid)
        with _errno_boundary("setattr", inode):
            return _entry(await self.fs.setattr(inode, fh, size=size, ownership=ownership))

    async def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        # Hot path (``ls -l``): free of awaits and of the boundary; cannot raise but FUSEError.
        value = self.fs.xattr(inode, name.decode("utf-8", "replace"))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    async def listxattr(self, inode: int, ctx: Any = None) -> list[bytes]:
        with _errno_boundary("listxattr", inode):
            return [os.fsencode(k) for k in self.fs.xattr_names(inode)]

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any = None) -> None:
        with _errno_boundary("setxattr", inode):
            self.fs.setxattr(inode)

    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_namemax = 255
        return s

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        with _errno_boundary("mkdir", parent_inode, name):
            return _entry(await self.fs.mkdir(parent_inode, os.fsdecode(name)))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        with _errno_boundary("rmdir", parent_inode, name):
            await self.fs.rmdir(parent_inode, os.fsdecode(name))

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        with _errno_boundary("unlink", parent_inode, name):
            await self.fs.unlink(parent_inode, os.fsdecode(name))

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any = None) -> tuple:
        with _errno_boundary("create", parent_inode, name):
            opened, attrs = await self.fs.create(parent_inode, os.fsdecode(name))
            return _info(opened), _entry(attrs)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        with _errno_boundary("symlink", parent_inode, name):
            return _entry(await self.fs.symlink(parent_inode, os.fsdecode(name), os.fsdecode(target)))

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int, ctx: Any = None) -> None:
        with _errno_boundary("rename", parent_inode_old, name_old):
            await self.fs.rename(parent_inode_old, os.fsdecode(name_old), parent_inode_new, os.fsdecode(name_new), flags)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        with _errno_boundary("link", inode):
            self.fs.read_only()

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        with _errno_boundary("mknod", parent_inode, name):
            self.fs.read_only()

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        with _errno_boundary("removexattr", inode):
            self.fs.read_only()
