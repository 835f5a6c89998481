"""The kernel-free filesystem core (``core.Filesystem``) driven in-process: no kernel, no sockets.

The emulator's ASGI app is called through an httpx transport (``inprocess.EmulatorTransport``),
its blocking work (account files, uploads) done inline, so every test runs on trio's MockClock
(``autojump_threshold=0``): timeouts cost no wall time. Bytes read are compared with the account
folder; bytes written with what the emulator stored.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from basemount_py.api.client import BaseSpaceClient
from basemount_py.api.errors import (
    ApiError,
    ArchivedError,
    ForbiddenError,
    NotADirectory,
    NotFound,
    OperationError,
    errno_for,
    quiet,
)
from basemount_py.api.retry import RetryPolicy
from basemount_py.blocking import inline
from basemount_py.core import CommandHandle, Filesystem, ReadHandle, UploadHandle
from basemount_py.emulator.app import Emulator, build_app
from basemount_py.read import ContentSource, ReadManager
from basemount_py.tree import ROOT_INODE, Layout, Tree
from basemount_py.write import Spool, UploadConfig, WriteManager, account_key
from basemount_py.write.upload import WriteFailure

from conftest import write_entity, write_file
from inprocess import Core, EmulatorTransport, Kernel, emulator_app, run_core_on_mock_clock

FASTQ = b"@r\nACGT\n+\nIIII\n"
BIG = os.urandom(3 * 2**20 + 12345)  # several blocks and prefetch windows


@pytest.fixture
def account(tmp_path) -> Path:
    root = tmp_path / "account"
    write_file(root / "Projects" / "P" / "Samples" / "S1" / "Files" / "r1.fastq", FASTQ)
    write_entity(root / "Projects" / "P" / "AppResults" / "Done")
    write_file(root / "Projects" / "P" / "AppResults" / "Done" / "Files" / "big.bin", BIG)
    write_file(root / "Runs" / "Run1" / "Files" / "RunInfo.xml", b"<RunInfo/>\n")
    return root


@pytest.fixture
def emulator(account):
    return emulator_app(account)[0]


class RefusesWrites(httpx.AsyncBaseTransport):
    """The server answers every POST with BaseSpace's 403: what a token without write access gets."""

    def __init__(self, inner: httpx.AsyncBaseTransport):
        self.inner = inner

    async def handle_async_request(self, request):
        if request.method == "POST":
            body = {"ResponseStatus": {"ErrorCode": "Forbidden", "Message": "Sorry, you do not have access"}}
            return httpx.Response(403, json=body, request=request)
        return await self.inner.handle_async_request(request)


def run_core(emulator: Emulator, tmp_path: Path, scenario, *, writes: bool = False, wrap=lambda t: t, op_timeout: float = 60.0):
    """Run ``scenario(core)`` on a fresh Filesystem, on trio's MockClock."""
    transport = wrap(EmulatorTransport(build_app(emulator)))

    async def main():
        api = BaseSpaceClient("http://emulator/", emulator.token, transport=transport,
                              policy=RetryPolicy(attempts=2, deadline=20.0))
        content = ContentSource(api, transport=transport)
        kernel = Kernel()
        try:
            async with ReadManager(content.fetch, fetch_blocks=content.fetch_blocks) as reads:
                tree = Tree(Layout(api))
                if not writes:
                    return await scenario(Core(Filesystem(tree, reads, kernel, op_timeout=op_timeout), kernel, emulator))
                spool = Spool(tmp_path / "cache", account_key("http://emulator/", "u"), 2**30)
                async with WriteManager(tree, api, spool, UploadConfig(write_back=0.0), mountpoint="/mnt", run_blocking=inline) as manager:
                    fs = Filesystem(tree, reads, kernel, writes=manager, op_timeout=op_timeout)
                    return await scenario(Core(fs, kernel, emulator))
        finally:
            await content.aclose()
            await api.aclose()

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- lookup, readdir, attributes ---------------------------------------------------------------


def test_lookup_and_readdir_follow_the_account(emulator, tmp_path):
    async def scenario(core: Core):
        top = await core.names()
        samples = await core.names("Projects", "P", "Samples")
        files = await core.names("Projects", "P", "AppResults", "Done", "Files")
        samples = [n for n in samples if not n.startswith(".")]
        files = [n for n in files if not n.startswith(".")]
        attrs = await core.fs.lookup(await core.ino("Projects", "P", "AppResults", "Done", "Files"), "big.bin")
        folder = await core.fs.getattr(await core.ino("Projects", "P"))
        return top, samples, files, attrs, folder

    top, samples, files, attrs, folder = run_core(emulator, tmp_path, scenario)
    assert {"Projects", "Runs"} <= set(top)
    assert samples == ["S1"]
    assert files == ["big.bin"]
    assert attrs.size == len(BIG) and attrs.mode & 0o777 == 0o444
    assert folder.nlink == 2 and folder.mode & 0o777 == 0o555


def test_missing_names_and_files_used_as_folders_map_to_their_errno(emulator, tmp_path):
    async def scenario(core: Core):
        project = await core.ino("Projects", "P")
        with pytest.raises(NotFound) as missing:
            await core.fs.lookup(project, "NoSuchFolder")
        fastq = await core.ino("Projects", "P", "Samples", "S1", "Files")
        r1 = await core.ino("Projects", "P", "Samples", "S1", "Files", "r1.fastq")
        with pytest.raises(NotADirectory) as not_dir:
            await core.fs.lookup(r1, "x")
        with pytest.raises(OperationError) as is_dir:
            await core.fs.open(fastq, os.O_RDONLY)
        with pytest.raises(OperationError) as not_link:
            await core.fs.readlink(r1)
        with pytest.raises(OperationError) as read_only:
            await core.fs.open(r1, os.O_WRONLY)  # no write manager: a read-only mount
        with pytest.raises(OperationError) as bad_fh:
            await core.fs.read(9999, 0, 10)
        return [errno_for(e.value) for e in (missing, not_dir, is_dir, not_link, read_only, bad_fh)]

    assert run_core(emulator, tmp_path, scenario) == [
        errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EINVAL, errno.EROFS, errno.EBADF]


def test_one_errno_mapping_for_every_layer():
    assert errno_for(NotFound("x")) == errno.ENOENT
    assert errno_for(ForbiddenError("unknown id", 403)) == errno.ENOENT  # reads: BaseSpace's answer to unknown ids
    assert errno_for(ForbiddenError("not yours", 403), writing=True) == errno.EACCES  # writes: the target exists
    assert errno_for(ApiError("bad value", 400), writing=True) == errno.EINVAL
    assert errno_for(ApiError("conflict", 409), writing=True) == errno.EINVAL
    assert errno_for(ApiError("bad value", 400)) == errno.EIO
    assert errno_for(ArchivedError("archived")) == errno.EACCES
    assert errno_for(WriteFailure(errno.ENOSPC, "spool full")) == errno.ENOSPC
    assert errno_for(PermissionError(errno.EACCES, "denied")) == errno.EACCES
    assert errno_for(KeyError("a bug")) == errno.EIO
    assert quiet(NotFound("x")) and not quiet(WriteFailure(errno.EIO, "upload failed"))


# -- open and read -------------------------------------------------------------------------------


def test_reads_return_the_account_bytes(emulator, tmp_path):
    async def scenario(core: Core):
        big = await core.read_all("Projects", "P", "AppResults", "Done", "Files", "big.bin")
        fastq = await core.read_all("Projects", "P", "Samples", "S1", "Files", "r1.fastq")
        ino = await core.ino("Projects", "P", "AppResults", "Done", "Files", "big.bin")
        opened = await core.fs.open(ino, os.O_RDONLY)
        kind = type(core.fs.handles[opened.fh])
        tail = await core.fs.read(opened.fh, len(BIG) - 100, 4096)  # short only at EOF
        await core.fs.release(opened.fh)
        return big, fastq, opened, kind, tail, dict(core.fs.handles)

    big, fastq, opened, kind, tail, left = run_core(emulator, tmp_path, scenario)
    assert big == BIG and fastq == FASTQ
    assert kind is ReadHandle and opened.keep_cache and not opened.direct_io
    assert tail == BIG[-100:]
    assert left == {}  # every handle released


def test_generated_files_are_served_from_the_handle_table(emulator, tmp_path):
    async def scenario(core: Core):
        sample_id = (await core.read_all("Projects", "P", "Samples", "S1", ".id")).decode().strip()
        fh = (await core.fs.open(await core.ino("Projects", "P", ".commands"), os.O_RDONLY)).fh
        kind, help_text = type(core.fs.handles[fh]), await core.fs.read(fh, 0, 4096)
        await core.fs.release(fh)
        return sample_id, kind, help_text

    sample_id, kind, help_text = run_core(emulator, tmp_path, scenario)
    assert sample_id == str(next(s.id for s in emulator.account.samples if s.name == "S1"))
    assert kind is CommandHandle
    assert b"refresh" in help_text and b"move-to-trash" in help_text


# -- commands ------------------------------------------------------------------------------------


def test_commands_run_and_reach_the_kernel_through_its_callbacks(emulator, tmp_path):
    async def scenario(core: Core):
        await core.names("Projects", "P", "Samples")  # the kernel now holds names below P
        await core.command("refresh\n", "Projects", "P")
        invalidated = list(core.kernel.invalidated)
        with pytest.raises(WriteFailure) as unknown:
            await core.command("frobnicate\n", "Projects", "P")
        error = await core.read_all("Projects", "P", ".error")
        with pytest.raises(WriteFailure) as not_here:
            await core.command("unmount\n", "Projects", "P")
        await core.command("unmount\n")
        return invalidated, errno_for(unknown.value), error, errno_for(not_here.value), core.kernel.terminated

    invalidated, unknown, error, not_here, terminated = run_core(emulator, tmp_path, scenario)
    assert any(name == "S1" for _, name in invalidated)
    assert unknown == errno.EINVAL and b"unknown command 'frobnicate'" in error
    assert not_here == errno.EINVAL
    assert terminated


def test_a_write_command_without_write_mode_is_refused_with_erofs(emulator, tmp_path):
    async def scenario(core: Core):
        with pytest.raises(WriteFailure) as refused:
            await core.command("move-to-trash\n", "Projects", "P")
        return errno_for(refused.value), [n for n in await core.names("Projects") if not n.startswith(".")]

    code, projects = run_core(emulator, tmp_path, scenario)
    assert code == errno.EROFS and projects == ["P"]


# -- writes --------------------------------------------------------------------------------------


def test_create_write_fsync_uploads_the_bytes(emulator, tmp_path, account):
    data = os.urandom(200_000)

    async def scenario(core: Core):
        results = await core.ino("Projects", "P", "AppResults")
        await core.fs.mkdir(results, "New")
        files = await core.ino("Projects", "P", "AppResults", "New", "Files")
        made = await core.fs.getattr(files)
        opened, attrs = await core.fs.create(files, "out.bin")
        kind = type(core.fs.handles[opened.fh])
        half = len(data) // 2
        await core.fs.write(opened.fh, half, data[half:])  # out of order: the spool takes it
        await core.fs.write(opened.fh, 0, data[:half])
        await core.fs.flush(opened.fh)
        await core.fs.fsync(opened.fh)  # returns once the upload is committed
        await core.fs.release(opened.fh)
        back = await core.read_all("Projects", "P", "AppResults", "New", "Files", "out.bin")
        return made, kind, attrs, back

    made, kind, attrs, back = run_core(emulator, tmp_path, scenario, writes=True)
    assert made.mode & 0o200  # a Running app result's Files/: writable by its owner
    assert kind is UploadHandle and attrs.size == 0
    stored = list(account.glob("Projects/P/AppResults/New/Files/out.bin"))
    assert len(stored) == 1 and stored[0].read_bytes() == data
    assert back == data


def test_truncate_and_read_back_before_the_upload(emulator, tmp_path):
    async def scenario(core: Core):
        await core.fs.mkdir(await core.ino("Projects", "P", "AppResults"), "T")
        files = await core.ino("Projects", "P", "AppResults", "T", "Files")
        opened, attrs = await core.fs.create(files, "t.txt")
        await core.fs.write(opened.fh, 0, b"hello world\n")
        grown = await core.fs.setattr(attrs.ino, opened.fh, size=20)  # ftruncate grows: a hole of zeros
        content = await core.fs.read(opened.fh, 0, 100)
        times_only = await core.fs.setattr(attrs.ino, opened.fh)  # touch/cp -p: accepted, ignored
        await core.fs.release(opened.fh)
        return grown.size, content, times_only.size

    size, content, after = run_core(emulator, tmp_path, scenario, writes=True)
    assert size == 20 and content == b"hello world\n" + b"\0" * 8 and after == 20


def test_server_refusals_of_writes_follow_the_one_mapping(emulator, tmp_path):
    async def scenario(core: Core):
        with pytest.raises(WriteFailure) as refused:
            await core.fs.mkdir(await core.ino("Projects"), "Forbidden")
        error = await core.read_all("Projects", ".error")
        return errno_for(refused.value), error

    code, error = run_core(emulator, tmp_path, scenario, writes=True, wrap=RefusesWrites)
    assert code == errno.EACCES
    assert b"creating project 'Forbidden' failed" in error


# -- time bounds, on the mock clock ---------------------------------------------------------------


class NeverAnswers(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request):
        await trio.sleep_forever()


def test_an_operation_that_outlives_op_timeout_fails_with_eio_in_virtual_time(emulator, tmp_path):
    async def scenario():
        api = BaseSpaceClient("http://emulator/", emulator.token, transport=NeverAnswers(),
                              policy=RetryPolicy(attempts=100, deadline=10_000.0, request_timeout=10_000.0))
        async with ReadManager(lambda *a: None) as reads:
            fs = Filesystem(Tree(Layout(api)), reads, Kernel(), op_timeout=30.0)
            projects = (await fs.lookup(ROOT_INODE, "Projects")).ino  # made up: no call
            start = trio.current_time()
            with pytest.raises(Exception) as timed_out:
                await fs.opendir(projects)  # lists the projects: the server never answers
            elapsed = trio.current_time() - start
        await api.aclose()
        return timed_out.value, elapsed

    exc, elapsed = trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    assert errno_for(exc) == errno.EIO and quiet(exc)  # logged where it was detected, once
    assert elapsed == pytest.approx(30.0)


def test_rename_before_the_upload_keeps_the_inode_and_uploads_under_the_new_name(emulator, tmp_path, account):
    async def scenario(core: Core):
        core.fs.writes.cfg.write_back = 3600.0  # the upload waits: rsync's rename comes first
        await core.fs.mkdir(await core.ino("Projects", "P", "AppResults"), "R")
        files = await core.ino("Projects", "P", "AppResults", "R", "Files")
        opened, attrs = await core.fs.create(files, ".out.txt.tmp")
        await core.fs.write(opened.fh, 0, b"renamed before upload\n")
        await core.fs.flush(opened.fh)
        await core.fs.release(opened.fh)
        await core.fs.rename(files, ".out.txt.tmp", files, "out.txt")
        renamed = await core.fs.lookup(files, "out.txt")
        with pytest.raises(NotFound):
            await core.fs.lookup(files, ".out.txt.tmp")
        await core.command("flush\n")  # upload now, without the write-back delay
        with trio.fail_after(60):
            while not list(account.glob("Projects/P/AppResults/R/Files/out.txt")):
                await trio.sleep(0.05)
        return attrs.ino, renamed.ino

    created, renamed = run_core(emulator, tmp_path, scenario, writes=True)
    assert created == renamed  # the kernel's inode now names the new path
    assert (account / "Projects" / "P" / "AppResults" / "R" / "Files" / "out.txt").read_bytes() == b"renamed before upload\n"
    assert not list(account.glob("Projects/P/AppResults/R/Files/.out.txt.tmp"))


def test_move_to_trash_tells_the_kernel_to_drop_the_name(emulator, tmp_path):
    async def scenario(core: Core):
        projects = await core.ino("Projects")
        await core.ino("Projects", "P")
        await core.command("move-to-trash\n", "Projects", "P")
        visible = [n for n in await core.names("Projects") if not n.startswith(".")]
        trash = [n for n in await core.names(".Trash") if not n.startswith(".")]
        return projects, list(core.kernel.invalidated), visible, trash

    projects, invalidated, visible, trash = run_core(emulator, tmp_path, scenario, writes=True)
    assert (projects, "P") in invalidated
    assert visible == [] and trash == ["P"]


def test_property_links_are_set_and_removed_and_the_cached_listings_follow(emulator, tmp_path):
    async def scenario(core: Core):
        await core.fs.mkdir(await core.ino("Projects", "P", "AppResults"), "A")
        where = ("Projects", "P", "AppResults", "A", "Properties")
        before = await core.names(*where)  # cached now: the writes must drop it
        props = await core.ino(*where)
        await core.fs.symlink(props, "Input.sample", "/mnt/Projects/P/Samples/S1")
        listed = await core.names(*where)
        target = await core.fs.readlink(await core.ino(*where, "Input.sample"))
        await core.fs.unlink(props, "Input.sample")
        after = await core.names(*where)
        s1 = (await core.read_all("Projects", "P", "Samples", "S1", ".id")).decode().strip()
        return before, listed, target, after, s1

    before, listed, target, after, s1 = run_core(emulator, tmp_path, scenario, writes=True)
    assert "Input.sample" not in before and "Input.sample" in listed and "Input.sample" not in after
    assert target.endswith(f"Samples/.id.{s1}")  # a relative link to the sample, by id


# -- the pyfuse3 adapter, without a kernel -------------------------------------------------------


def test_the_adapter_only_translates_and_maps_every_failure_to_fuse_errors(emulator, tmp_path, caplog):
    import pyfuse3

    from basemount_py.fuse_ops import Operations

    async def scenario(core: Core):
        ops = Operations(core.fs)
        projects = await ops.lookup(ROOT_INODE, b"Projects")
        codes = []
        for call in (lambda: ops.lookup(projects.st_ino, b"NoSuchProject"),  # NotFound
                     lambda: ops.read(4242, 0, 10),  # no such handle
                     lambda: ops.mkdir(projects.st_ino, b"X", 0o755),  # read-only mount
                     lambda: ops.link(projects.st_ino, ROOT_INODE, b"x", None)):
            with pytest.raises(pyfuse3.FUSEError) as failed:
                await call()
            codes.append(failed.value.errno)

        async def bug(*args):
            raise KeyError("a bug in the core")

        core.fs.getattr = bug  # anything outside the error hierarchy: EIO and a traceback
        with pytest.raises(pyfuse3.FUSEError) as broken:
            await ops.getattr(projects.st_ino)
        return projects, codes, broken.value.errno

    projects, codes, broken = run_core(emulator, tmp_path, scenario)
    assert stat.S_ISDIR(projects.st_mode) and projects.st_nlink == 2 and projects.entry_timeout > 0
    assert codes == [errno.ENOENT, errno.EBADF, errno.EROFS, errno.EROFS]
    assert broken == errno.EIO
    assert any(r.exc_info and "unexpected error in getattr" in r.getMessage() for r in caplog.records)
    assert not any("NoSuchProject" in r.getMessage() for r in caplog.records)  # a missing name is not logged


def test_opening_a_file_with_an_index_beside_it_fetches_it_whole(tmp_path):
    # htslib opens the BAM, reads its header, then opens the index and seeks: a BAM with an index
    # beside it is fetched whole in parallel parts (--whole-file-max) from its open on, while the
    # header and the index are read. A BAM without an index is not.
    folder = ("Projects", "P", "AppResults", "Align", "Files")
    bam = bytes(range(256)) * (12 * 1024 + 3)  # 3 MiB and a bit
    index = b"BAI\1" * 2048
    root = tmp_path / "account"
    write_file(root.joinpath(*folder, "x.bam"), bam)
    write_file(root.joinpath(*folder, "x.bam.bai"), index)
    write_file(root.joinpath(*folder, "y.bam"), bam[::-1])  # another BAM: left alone

    async def scenario(core: Core):
        await core.ino(*folder, "x.bam")
        await core.ino(*folder, "y.bam")
        counters = core.emulator.counters
        start = counters.content_bytes
        fh = (await core.fs.open(await core.ino(*folder, "y.bam"), os.O_RDONLY)).fh
        await trio.sleep(60)  # virtual time
        await core.fs.release(fh)
        unindexed = counters.content_bytes - start
        fh = (await core.fs.open(await core.ino(*folder, "x.bam"), os.O_RDONLY)).fh
        for _ in range(6000):  # virtual time: the parts arrive
            if counters.content_bytes - start >= len(bam):
                break
            await trio.sleep(0.01)
        await core.fs.release(fh)
        fetched = counters.content_bytes - start
        got = await core.read_all(*folder, "x.bam")
        return unindexed, fetched, counters.content_bytes - start, got

    unindexed, fetched, after_read, got = run_core_on_mock_clock(root, scenario, whole_file_max=64 << 20)
    assert unindexed == 0  # y.bam has no index: nothing before it is read
    assert fetched == len(bam)  # x.bam, each byte once, before any read
    assert got == bam and after_read == fetched  # then read from memory
