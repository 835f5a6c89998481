"""Mount lifecycle: checks, daemonising, the trio main loop, kernel tuning, signals, unmount.

``mount()`` returns only once the mount is live (or fails with one clear line): in the background
mode the parent forks *before* anything starts threads or trio, and waits on a pipe for the child's
"mounted" or its error message.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pyfuse3
import trio

from .api.budget import BudgetPolicy, RequestBudget
from .api.client import BaseSpaceClient
from .api.errors import ApiError, CertificateError
from .api.retry import RetryPolicy
from .core import Filesystem
from .fuse_access import FuseAccessError, check_fuse_access, check_fuse_fd, handed_in_fd
from .fuse_helper import FuseHelperError, receive_fuse_fd
from .fuse_ops import Operations, PyfuseKernel
from .malloc import tune_malloc
from .mount_table import FS_NAME, MountBusy, MountEntry, MountLock, mount_entry
from .options import MountOptions, default_cache_dir
from .tasks import never_fatal
from .tree import Layout, Tree
from .tree.manifest import ManifestApi

log = logging.getLogger("basemount_py")


class MountError(Exception):
    """A problem the user can fix; the message is the one line we print."""


def check_mountpoint(path: str) -> None:
    entry = mount_entry(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountError(f"mountpoint {path} does not exist (create it with: mkdir -p {path})") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise MountError(f"{path} is a stale mount (Transport endpoint is not connected); {_clear_hint(entry)}") from None
        raise MountError(f"cannot use mountpoint {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {path} is not a directory")
    if entry is not None:
        if entry.is_basemount:
            raise _already_mounted(path)
        raise MountError(f"{path} is already a mount point ({entry.fstype}); choose an empty directory")
    if os.listdir(path):
        raise MountError(f"mountpoint {path} is not empty; choose an empty directory")


def _already_mounted(path: str) -> MountError:
    return MountError(f"{path} is already mounted; unmount it first with: basemount-py unmount {path}")


def _clear_hint(entry: MountEntry | None) -> str:
    """How to clear a stale mount: ours with our own unmount; someone else's is not ours to clear."""
    if entry is not None and entry.is_basemount:
        return f"clear it with: basemount-py unmount {entry.mountpoint}"
    kind = entry.fstype if entry is not None else "unknown filesystem"
    return f"it is not a basemount_py mount ({kind}); ask whoever mounted it, or choose another directory"


def default_log_file() -> str:
    """Where a background mount logs unless --log-file says otherwise (created 0600, dir 0700)."""
    log_dir = os.path.expanduser("~/.basespace")
    os.makedirs(log_dir, mode=0o700, exist_ok=True)
    return os.path.join(log_dir, "basemount_py.log")


def setup_logging(level: str, log_file: str | None, to_stderr: bool) -> None:
    handlers: list[logging.Handler] = []
    if log_file:
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        handlers.append(logging.StreamHandler(os.fdopen(fd, "a", buffering=1)))
    if to_stderr or not handlers:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    # httpx logs every request URL at INFO; content URLs carry signatures. Keep it quiet.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def _claim_mountpoint(opts: MountOptions) -> MountLock:
    """Every pre-mount check, under the mountpoint's lock (returned held). Raises MountError.

    A handed-in ``/dev/fd/N`` is already mounted by whoever opened it: only the descriptor is
    checked, and there is nothing to lock (the mounter holds the target)."""
    fd = handed_in_fd(opts.mountpoint)
    if fd is not None:
        try:
            check_fuse_fd(fd)
        except FuseAccessError as exc:
            raise MountError(str(exc)) from None
        return MountLock(opts.mountpoint)  # never acquired: release() is a no-op
    try:
        # The lock first: of two mounts started at the same moment, the second stops here
        # instead of passing the "not mounted yet" check and stacking a second daemon.
        lock = MountLock(opts.mountpoint).acquire()
    except MountBusy as exc:
        entry = mount_entry(opts.mountpoint)
        if entry is not None and entry.is_basemount:  # the usual case: mounted a while ago
            raise _already_mounted(opts.mountpoint) from None
        raise MountError(str(exc)) from None
    except OSError as exc:
        raise MountError(f"cannot lock the mountpoint {opts.mountpoint}: {exc}") from None
    try:
        check_mountpoint(opts.mountpoint)
        check_fuse_access(opts.allow_other)
    except (MountError, FuseAccessError) as exc:
        lock.release()
        raise MountError(str(exc)) from None
    return lock


def mount(credentials: object, opts: MountOptions, token_reloader=None) -> int:
    """Mount and return 0 once live (background) or after unmount (foreground); 1 on failure."""
    helper_channel = None  # --fuse-socket: held open for the daemon's life (the helper watches it)
    if opts.fuse_socket:
        try:
            fd, opts.target, helper_channel = receive_fuse_fd(opts.fuse_socket)
        except FuseHelperError as exc:
            print(f"basemount-py: {exc}", file=sys.stderr)
            return 1
        opts.mountpoint = f"/dev/fd/{fd}"
    opts.mountpoint = os.path.abspath(opts.mountpoint)
    try:
        lock = _claim_mountpoint(opts)
    except MountError as exc:
        print(f"basemount-py: {exc}", file=sys.stderr)
        return 1
    if opts.foreground:
        setup_logging(opts.log_level, opts.log_file, to_stderr=True)
        try:
            return _serve(credentials, opts, token_reloader, notify=None)
        finally:
            lock.release()

    opts.log_file = opts.log_file or default_log_file()
    try:
        log_fd = os.open(opts.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        lock.release()
        print(f"basemount-py: cannot open the log file {opts.log_file}: {exc.strerror}", file=sys.stderr)
        return 1
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon: it inherits the lock and holds it until it exits
        os.close(read_end)
        os.setsid()
        lock.record_owner()
        detach_stdio(log_fd)
        setup_logging(opts.log_level, None, to_stderr=True)  # stderr is the log file now
        code = 1
        try:
            code = _serve(credentials, opts, token_reloader, notify=write_end)
        finally:
            os._exit(code)
    os.close(log_fd)
    os.close(write_end)
    lock.release()
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode("utf-8", "replace").strip()
    if helper_channel is not None:
        helper_channel.close()  # the daemon holds its own copy
    if message == "OK":
        print(f"Mounted BaseSpace at {opts.visible_path} (log: {opts.log_file}; unmount with: basemount-py unmount {opts.visible_path})")
        return 0
    print(f"basemount-py: {message or 'the mount daemon exited before mounting'} (log: {opts.log_file})", file=sys.stderr)
    return 1


def detach_stdio(log_fd: int) -> None:
    """stdin from /dev/null; stdout and stderr to the log file (``log_fd``, closed here), so that
    what libfuse or a dying interpreter prints lands there too rather than nowhere."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(devnull)
    os.close(log_fd)


def _notify(fd: int | None, message: str) -> None:
    if fd is None:
        if message != "OK":
            print(f"basemount-py: {message}", file=sys.stderr)
        return
    try:
        os.write(fd, message.encode())
        os.close(fd)
    except OSError:
        pass


def timeouts_for(op_timeout: float) -> tuple[RetryPolicy, float]:
    """Derive the network timeouts from ``--op-timeout`` so that they nest inside it.

    The retry deadline ends a margin before the op timeout (so a failing op reports the real
    network error rather than a bare timeout); one HTTP attempt gets at most half the deadline
    and a stalled body at most a third, so even with a small ``--op-timeout`` a stall or a hung
    connection is abandoned early enough to be retried within the op. With the default 60 s:
    deadline 50 s, request timeout 20 s, stall timeout 10 s."""
    deadline = max(1.0, op_timeout - min(10.0, op_timeout / 4))
    request_timeout = min(20.0, deadline / 2)
    return RetryPolicy(deadline=deadline, request_timeout=request_timeout), min(10.0, deadline / 3)


def _serve(credentials: object, opts: MountOptions, token_reloader, notify: int | None) -> int:
    tune_malloc()
    try:
        return trio.run(_main, credentials, opts, token_reloader, notify)
    except KeyboardInterrupt:
        return 0


async def _main(credentials, opts: MountOptions, token_reloader, notify: int | None) -> int:
    from .read import ContentSource, DiskCache, PrefetchConfig, ReadManager

    policy, stall_timeout = timeouts_for(opts.op_timeout)
    api = BaseSpaceClient(
        credentials.api_server,
        credentials.access_token,
        policy=policy,
        max_connections=opts.max_connections,
        token_reloader=token_reloader,
        budget=RequestBudget(BudgetPolicy.capped(opts.api_max_rate)),
    )
    # The first contact fails fast: a mistyped --api-server, no network or an unknown host is
    # reported within about 3 s, not after the whole retry budget of a file operation (13 s for
    # a name that does not resolve). Once mounted, the full policy applies.
    api.policy = RetryPolicy(attempts=5, base_delay=0.2, request_timeout=policy.request_timeout, deadline=min(policy.deadline, 30.0))
    try:
        user = await api.get_json("v1pre3/users/current")
    except ApiError as exc:
        await api.aclose()
        hint = " (check the token: basemount-py auth)" if exc.status in (401, 403) else ""
        if isinstance(exc, CertificateError):
            hint = " (a private or self-signed certificate? point SSL_CERT_FILE at its CA bundle)"
        _notify(notify, f"cannot use the BaseSpace API at {credentials.api_server}: {exc}{hint}")
        return 1
    api.policy = policy
    user_name = (user.get("Response") or {}).get("Name", "?")
    content = ContentSource(api, policy=policy, max_connections=opts.max_connections, stall_timeout=stall_timeout)
    disk = None
    if opts.cache_max > 0:
        content_dir = os.path.join(opts.cache_dir or default_cache_dir(), "content")
        disk = await trio.to_thread.run_sync(DiskCache.open, content_dir, opts.cache_max, PrefetchConfig().block_size)
    try:
        # The ReadManager's nursery hosts every prefetch task; leaving it cancels them all.
        async with ReadManager(
            content.fetch,
            fetch_blocks=content.fetch_blocks,
            cache_bytes=opts.cache_size,
            prefetch_max=opts.prefetch_max,
            whole_file_max=opts.whole_file_max,
            disk=disk,
            max_parallel=opts.max_connections,
            verify=opts.verify,
        ) as reads:
            listing_api = ManifestApi(api, opts.manifest) if opts.manifest else api
            layout = Layout(listing_api, metadata_ttl=opts.metadata_ttl, max_listings=opts.max_listings)  # type: ignore[arg-type]
            tree = Tree(layout, metadata_ttl=opts.metadata_ttl, max_listings=opts.max_listings)
            from .write import Spool, UploadConfig, WriteManager, account_key

            upload_cfg = UploadConfig.of(opts)
            user_id = str((user.get("Response") or {}).get("Id", ""))
            spool = Spool(Path(opts.cache_dir or default_cache_dir()), account_key(credentials.api_server, user_id), opts.spool_max)
            # The WriteManager's nursery hosts the background uploads; it adopts what an earlier
            # mount of this account left in the spool (an unusable spool leaves the mount read-only
            # for files, with the reason in the log and in .error).
            async with WriteManager(tree, api, spool, upload_cfg, mountpoint=opts.visible_path, fetch=content.fetch) as writes:
                fs = Filesystem(tree, reads, PyfuseKernel(), writes=writes, op_timeout=opts.op_timeout, direct_io=opts.direct_io)
                ops = Operations(fs)
                return await _run_fuse(ops, opts, notify, user_name, credentials.api_server)
    finally:
        with trio.CancelScope(shield=True):
            for closer in (content.aclose, api.aclose):
                with never_fatal(log, "shutdown"), trio.move_on_after(5):
                    await closer()
            if disk is not None:
                disk.close()


async def _run_fuse(ops: Operations, opts: MountOptions, notify: int | None, user_name: str, api_server: str) -> int:
    fuse_options = set(pyfuse3.default_options)  # default_permissions
    fuse_options |= {f"fsname={FS_NAME}", f"subtype={FS_NAME}", "noatime"}
    if opts.allow_other:
        fuse_options.add("allow_other")  # always together with default_permissions
    try:
        pyfuse3.init(ops, opts.mountpoint, fuse_options)
    except RuntimeError as exc:
        _notify(notify, f"mounting {opts.mountpoint} failed: {exc}")
        return 1
    log.info("mounted %s for %s (API %s)", opts.visible_path, user_name, api_server)
    if opts.manifest:
        log.info("--manifest: folders come from a snapshot of /%s", opts.manifest["root"])
    if opts.direct_io:
        log.info("--direct-io: BaseSpace files bypass the kernel page cache (no shared mmap)")
    if opts.verify:
        log.info("--verify: whole-file sequential reads are checked against the files' ETag (MD5)")
    _notify(notify, "OK")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, ops.fs)
            nursery.start_soon(_tune_kernel_after_init, ops, opts)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
    except Exception:  # the daemon's top level: the traceback goes to its log before it ends
        log.exception("the FUSE main loop failed")
        raise
    finally:
        log.info("unmounting %s", opts.visible_path)
        with never_fatal(log, "closing the FUSE session"):
            pyfuse3.close(unmount=True)
    return 0


async def _watch_signals(fs: Filesystem) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            # pyfuse3.main() returns only once every request under way has been answered: without
            # the shutdown, a read retrying a gone server held the exit for its whole retry deadline
            cancelled = fs.shutdown()
            log.info("received %s; unmounting (%d operation(s) under way fail with EIO)", signal.Signals(signum).name, cancelled)
            pyfuse3.terminate()
            return


async def _tune_kernel_after_init(ops: Operations, opts: MountOptions) -> None:
    """Tune the kernel's side of the mount right after it has applied our answer to FUSE_INIT.

    Not before: the kernel sets the mount's readahead from that answer (the smaller of what it
    has and libfuse's max_readahead, 128 KiB), so a tuning done earlier is undone; this race made
    the readahead 128 KiB (READs of 128-256 KiB instead of 1 MiB) in most benchmark runs. And not
    later than needed: a file opened before keeps the readahead it was opened with. The sysfs
    writes are a few bytes and never call into the mount, so they run here, on the loop, at once.
    """
    await ops.initialized.wait()
    _tune_kernel(opts)


def _tune_kernel(opts: MountOptions) -> None:
    """As root: raise the bdi readahead (default 128 KiB) and FUSE's background request limit
    (default 12) so sequential reads arrive in bigger, more parallel requests."""
    if os.geteuid() != 0:
        log.info("not root: kernel readahead and max_background left at their defaults")
        return
    entry = mount_entry(opts.mountpoint)  # not stat(): that would call into ourselves
    if entry is None:
        return
    device = entry.device
    minor = device.split(":")[1]
    for path, value in (
        (f"/sys/class/bdi/{device}/read_ahead_kb", opts.read_ahead_kb),
        (f"/sys/fs/fuse/connections/{minor}/max_background", opts.max_background),
        (f"/sys/fs/fuse/connections/{minor}/congestion_threshold", opts.max_background * 3 // 4),
    ):
        try:
            with open(path, "w") as f:
                f.write(str(value))
            log.info("kernel tuning: %s = %s", path, value)
        except OSError as exc:
            hint = ""
            if path.startswith("/sys/fs/fuse/connections/") and not os.path.isdir(f"/sys/fs/fuse/connections/{minor}"):
                hint = "; fusectl is not mounted (mount -t fusectl none /sys/fs/fuse/connections)"
            log.info("kernel tuning: cannot set %s (%s)%s", path, exc.strerror, hint)


# -- unmount ------------------------------------------------------------------------------------


def blocking_processes(mountpoint: str) -> list[str]:
    """Processes whose cwd, root or open files are under the mountpoint (for a helpful message)."""
    found = []
    prefix = mountpoint.rstrip("/") + "/"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        paths = []
        for link in ("cwd", "root"):
            try:
                paths.append(os.readlink(f"/proc/{pid}/{link}"))
            except OSError:
                pass
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
                except OSError:
                    pass
        except OSError:
            pass
        if any(p == mountpoint or p.startswith(prefix) for p in paths):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = "?"
            found.append(f"{pid} {cmd[:80]}")
    return found


def _is_mounted(path: str) -> bool:
    return mount_entry(path) is not None


def unmount(mountpoint: str, lazy: bool = False) -> int:
    mountpoint = os.path.abspath(mountpoint)
    entry = mount_entry(mountpoint)
    if entry is None:
        print(f"basemount-py: {mountpoint} is not mounted", file=sys.stderr)
        return 1
    if not entry.is_basemount:  # a tmpfs, /, another FUSE filesystem: not ours to unmount
        print(f"basemount-py: {mountpoint} is not a basemount_py mount ({entry.fstype}); refusing to unmount it", file=sys.stderr)
        return 1
    command = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [mountpoint]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode == 0:
        print(f"Unmounted {mountpoint}")
        return 0
    message = result.stderr.strip()
    if "not connected" in message.lower():
        # The daemon died: the kernel mount is stale. A lazy unmount clears it.
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)
        if not _is_mounted(mountpoint):
            print(f"Unmounted {mountpoint} (the daemon had gone away)")
            return 0
    if "busy" in message.lower():
        blockers = blocking_processes(mountpoint)
        listing = "; ".join(blockers) if blockers else "unknown processes"
        print(f"basemount-py: {mountpoint} is busy, in use by: {listing} (or use --lazy)", file=sys.stderr)
        return 1
    print(f"basemount-py: unmounting {mountpoint} failed: {message}", file=sys.stderr)
    return 1
