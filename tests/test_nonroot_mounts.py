"""Mounts by users that are not root: pre-mount checks that say what is missing, a plain user
mount through fusermount3, and the fd-passing helper (root mounts, an unprivileged daemon serves
/dev/fd/N). Real mounts, real users (created with useradd when missing)."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import as_user, at_once, fuse_device_mode, user_home, user_python, write_file, write_synthetic

from basemount_py.emulator.control import EmulatorProcess
from basemount_py.emulator.synthetic import synthetic_bytes
from basemount_py.fuse_helper import FuseHelperError, receive_fuse_fd
from basemount_py.mount_table import mount_entry

CLI = [sys.executable, "-m", "basemount_py"]  # as root


def user_cli() -> list[str]:
    return [user_python(), "-m", "basemount_py"]  # as the unprivileged user
FILES = ("Projects", "P", "Samples", "S", "Files")
SIZE = 3 * 2**20 + 17


@pytest.fixture
def scratch():
    """A folder every user can traverse (pytest's temp folders are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="bmpy-nonroot-"))
    path.chmod(0o755)
    yield path
    for entry in path.iterdir():
        if mount_entry(str(entry)) is not None:
            subprocess.run(["umount", "-l", str(entry)], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """One emulator for the module's mounts (none changes the account)."""
    acc = tmp_path_factory.mktemp("nonroot") / "account"
    write_file(acc.joinpath(*FILES, "small.txt"), b"hello from BaseSpace\n")
    write_synthetic(acc.joinpath(*FILES, "big.bin"), SIZE, 5)
    with EmulatorProcess(acc) as emulator:
        yield emulator


def mountpoint_for(scratch: Path, user, name: str = "mnt") -> Path:
    mp = scratch / name
    mp.mkdir()
    os.chown(mp, user.pw_uid, user.pw_gid)
    return mp


def run_as(user, home: Path, *args: str, env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, timeout=timeout, **as_user(user, home, **(env or {})))


def read_as(user, home: Path, path: Path) -> bytes:
    r = run_as(user, home, "cat", str(path))
    assert r.returncode == 0, r.stderr
    return r.stdout


def wait_until(condition, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def one_line(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.decode() if isinstance(r.stderr, bytes) else r.stderr
    assert r.returncode == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_pre_mount_checks_say_exactly_what_is_missing(scratch, unprivileged_user):
    user = unprivileged_user
    home = user_home(scratch, user)
    mp = mountpoint_for(scratch, user)
    creds = {"BASESPACE_API_SERVER": "http://127.0.0.1:9", "BASESPACE_ACCESS_TOKEN": "t"}
    # a root-only /dev/fuse (hardened nodes): what is wrong, and the two usual fixes
    with fuse_device_mode(0o600):
        err = one_line(run_as(user, home, *user_cli(), "mount", str(mp), env=creds))
    assert "/dev/fuse is crw------- root:root" in err and user.pw_name in err
    assert "udev" in err and "fuse-helper" in err and "install fuse3" not in err
    # no fusermount3 / one that is not setuid root / --allow-other without user_allow_other
    fake_bin = scratch / "bin"
    fake_bin.mkdir()
    shutil.copyfile("/usr/bin/fusermount3", fake_bin / "fusermount3")
    (fake_bin / "fusermount3").chmod(0o755)  # executable, but not setuid
    conf_without, conf_with = scratch / "fuse-without.conf", scratch / "fuse-with.conf"
    conf_without.write_text("# user_allow_other\nmount_max = 1000\n")
    conf_with.write_text("mount_max = 1000\nuser_allow_other\n")
    probe = (
        "import sys\n"
        "from basemount_py.fuse_access import FuseAccessError, check_allow_other, check_fusermount\n"
        "for name, call in [('none', lambda: check_fusermount(dirs=(), search_path='/nonexistent')),\n"
        f"                   ('copy', lambda: check_fusermount(dirs=({str(fake_bin)!r},), search_path='')),\n"
        "                   ('real', lambda: check_fusermount()),\n"
        f"                   ('without', lambda: check_allow_other({str(conf_without)!r})),\n"
        f"                   ('with', lambda: check_allow_other({str(conf_with)!r}))]:\n"
        "    try:\n"
        "        call(); print(name, 'OK')\n"
        "    except FuseAccessError as exc:\n"
        "        print(name, exc)\n"
    )
    r = run_as(user, home, user_python(), "-c", probe)
    assert r.returncode == 0, r.stderr
    out = dict(line.split(" ", 1) for line in r.stdout.decode().splitlines())
    assert "fusermount3 is not installed" in out["none"] and "fuse3" in out["none"]
    assert "is not setuid root" in out["copy"]
    assert out["real"] == "OK"
    assert "user_allow_other" in out["without"] and "/fuse-without.conf" in out["without"]
    assert out["with"] == "OK"
    # a /dev/fd/N that is not a FUSE descriptor
    not_fuse, not_open = at_once(
        lambda: run_as(user, home, *user_cli(), "mount", "/dev/fd/0", env=creds),
        lambda: run_as(user, home, *user_cli(), "mount", "/dev/fd/77", env=creds),
    )
    assert "/dev/fd/0 is open but is not /dev/fuse" in one_line(not_fuse)
    assert "/dev/fd/77 is not an open descriptor" in one_line(not_open)


def test_a_user_mounts_reads_and_unmounts_where_dev_fuse_allows_it(scratch, unprivileged_user, emulator):
    user = unprivileged_user
    home = user_home(scratch, user)
    mp = mountpoint_for(scratch, user)
    with fuse_device_mode(0o666):
        creds = {"BASESPACE_API_SERVER": emulator.url, "BASESPACE_ACCESS_TOKEN": emulator.token}
        r = run_as(user, home, *user_cli(), "mount", str(mp), env=creds)
        try:
            assert r.returncode == 0, r.stderr
            entry = mount_entry(str(mp))
            assert entry.is_basemount and f"user_id={user.pw_uid}" in Path("/proc/self/mountinfo").read_text()
            assert read_as(user, home, mp.joinpath(*FILES, "small.txt")) == b"hello from BaseSpace\n"
            assert read_as(user, home, mp.joinpath(*FILES, "big.bin")) == synthetic_bytes(5, 0, SIZE)
            log = home / ".basespace" / "basemount_py.log"
            assert log.stat().st_uid == user.pw_uid and stat.S_IMODE(log.stat().st_mode) == 0o600
        finally:
            u = run_as(user, home, *user_cli(), "unmount", str(mp))
        assert u.returncode == 0, u.stderr
        assert mount_entry(str(mp)) is None


def stop_all(target: Path, *procs: subprocess.Popen | None) -> None:
    """Kill what is still running and clear the mount, whatever state a failed test left."""
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
    if mount_entry(str(target)) is not None:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def wait_serving(user, home: Path, target: Path) -> None:
    small = target.joinpath(*FILES, "small.txt")
    wait_until(lambda: run_as(user, home, "test", "-e", str(small)).returncode == 0, what="the daemon serving")


def start_helper(target: Path, sock: Path, user) -> subprocess.Popen:
    helper = subprocess.Popen(
        [*CLI, "fuse-helper", str(target), "--socket", str(sock), "--user", user.pw_name],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first = helper.stdout.readline()
    assert "waiting on" in first, first + helper.stdout.read()
    return helper


# A user's own wrapper (as a container entrypoint would be): take the descriptor from the helper,
# then run `basemount-py mount /dev/fd/N`, keeping the helper's socket open across the exec.
INHERIT_WRAPPER = """
import os, sys
from basemount_py.fuse_helper import receive_fuse_fd
fd, target, channel = receive_fuse_fd(sys.argv[1])
os.set_inheritable(fd, True)
os.set_inheritable(channel.fileno(), True)
os.execv(sys.executable, [sys.executable, "-m", "basemount_py", "mount", f"/dev/fd/{fd}", "--foreground"])
"""


@pytest.mark.parametrize("handover", ["fuse-socket", "inherited-dev-fd"])
def test_fuse_helper_as_root_serves_an_unprivileged_daemon(scratch, unprivileged_user, emulator, handover):
    user = unprivileged_user
    home = user_home(scratch, user)
    target = mountpoint_for(scratch, user)
    sock = scratch / "fuse.sock"
    with fuse_device_mode(0o600):  # the user cannot open /dev/fuse
        creds = {"BASESPACE_API_SERVER": emulator.url, "BASESPACE_ACCESS_TOKEN": emulator.token}
        helper = start_helper(target, sock, user)
        daemon = None
        try:
            assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and sock.stat().st_uid == user.pw_uid
            # only the named user's daemon gets a descriptor (root here is someone else)
            with pytest.raises(FuseHelperError, match=f"serves uid {user.pw_uid} only"):
                receive_fuse_fd(str(sock))
            if handover == "fuse-socket":
                command = [*user_cli(), "mount", "--fuse-socket", str(sock), "--foreground"]
            else:
                command = [user_python(), "-c", INHERIT_WRAPPER, str(sock)]
            log = open(home / "daemon.log", "wb")
            daemon = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **as_user(user, home, **creds))
            assert "mounted" in helper.stdout.readline()
            wait_serving(user, home, target)
            assert daemon.poll() is None
            assert mount_entry(str(target)).is_basemount
            assert read_as(user, home, target.joinpath(*FILES, "small.txt")) == b"hello from BaseSpace\n"
            assert read_as(user, home, target.joinpath(*FILES, "big.bin")) == synthetic_bytes(5, 0, SIZE)
            # the daemon runs as the user, and never had /dev/fuse open by itself
            assert os.stat(f"/proc/{daemon.pid}").st_uid == user.pw_uid
            # clean unmount, by the user, with our own command
            u = run_as(user, home, *user_cli(), "unmount", str(target))
            assert u.returncode == 0, u.stderr
            assert daemon.wait(30) == 0
            assert helper.wait(30) == 0
            assert mount_entry(str(target)) is None and not sock.exists()
        finally:
            log_text = (home / "daemon.log").read_text(errors="replace") if (home / "daemon.log").exists() else ""
            stop_all(target, daemon, helper)
        assert "Traceback" not in log_text, log_text[-3000:]


def test_fuse_helper_unmounts_when_the_daemon_dies(scratch, unprivileged_user, emulator):
    user = unprivileged_user
    home = user_home(scratch, user)
    target = mountpoint_for(scratch, user)
    sock = scratch / "fuse.sock"
    with fuse_device_mode(0o600):
        creds = {"BASESPACE_API_SERVER": emulator.url, "BASESPACE_ACCESS_TOKEN": emulator.token}
        helper = start_helper(target, sock, user)
        daemon = None
        try:
            daemon = subprocess.Popen(
                [*user_cli(), "mount", "--fuse-socket", str(sock), "--foreground"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                **as_user(user, home, **creds),
            )
            assert "mounted" in helper.stdout.readline()
            wait_serving(user, home, target)
            daemon.send_signal(signal.SIGKILL)  # no unmount from the daemon: the helper must clean up
            daemon.wait(30)
            assert helper.wait(30) == 0
            assert mount_entry(str(target)) is None
            assert os.listdir(target) == []  # the directory is usable again, not a stale mount
        finally:
            stop_all(target, daemon, helper)


def test_fuse_helper_refuses_clearly(scratch, unprivileged_user):
    user = unprivileged_user
    home = user_home(scratch, user)
    target = mountpoint_for(scratch, user)
    sock = scratch / "fuse.sock"
    not_root, no_user, no_helper = at_once(
        lambda: run_as(user, home, *user_cli(), "fuse-helper", str(target), "--socket", str(sock), "--user", user.pw_name),
        lambda: subprocess.run([*CLI, "fuse-helper", str(target), "--socket", str(sock), "--user", "no-such-user-x"], capture_output=True, text=True),
        # a daemon with no helper behind the socket: one line
        lambda: run_as(user, home, *user_cli(), "mount", "--fuse-socket", str(sock), env={"BASESPACE_ACCESS_TOKEN": "t"}),
    )
    assert "must run as root" in one_line(not_root)
    assert "no such user" in one_line(no_user)
    assert "cannot get a FUSE descriptor" in one_line(no_helper)
    (target / "f").write_text("x")
    r = subprocess.run([*CLI, "fuse-helper", str(target), "--socket", str(sock), "--user", user.pw_name], capture_output=True, text=True)
    assert "not empty" in one_line(r)
