"""Shared fixtures: account folders, the real emulator over loopback, real kernel mounts."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from basemount_py.emulator import control as emulator_control
from basemount_py.mount_process import MountProcess, MountStartError, is_mounted  # noqa: F401 (is_mounted: tests import it)

ROOT = Path(__file__).resolve().parent.parent

# -- parallel runs (pytest-xdist; scripts/test runs the suite so, docs/testing.md says how) ------------

# Test files that use what the machine has once: Slurm's daemons, system users and /dev/fuse's mode
# (non-root mounts, the fuse helper). They run one after another on one worker (one group), never
# at the same time as each other. (The benchmark's smoke run is not one: it asserts no figure.)
MACHINE_WIDE_FILES = frozenset({"tests/test_slurm.py", "tests/test_nonroot_mounts.py"})
MACHINE_WIDE_GROUP = "machine-wide"
DURATIONS = ROOT / "tests" / "durations.json"
UNKNOWN_DURATION = 1.0  # seconds: a test the durations file does not know yet


def test_file(nodeid: str) -> str:
    return nodeid.split("::")[0]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store-durations",
        action="store_true",
        help=f"record each test's time (setup + call + teardown) in {DURATIONS.relative_to(ROOT)}: parallel runs start the longest test files first",
    )


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook (absent with -p no:xdist)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadgroup``, with the machine-wide files as one group. (The group is decided here,
    from the node ids, rather than with xdist_group marks: pytest 9.2 ignores the node id suffix
    through which pytest-xdist 3.8 passes marks to its scheduler, pytest-xdist issue 1386.)"""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class MachineWideAsOneGroup(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return MACHINE_WIDE_GROUP if test_file(nodeid) in MACHINE_WIDE_FILES else super()._split_scope(nodeid)

    return MachineWideAsOneGroup(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: this order is the order tests are handed out in
        items[:] = longest_first(items, recorded_durations())


def recorded_durations() -> dict[str, float]:
    try:
        return json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return {}


def longest_first(items: list[pytest.Item], seconds: dict[str, float]) -> list[pytest.Item]:
    """The machine-wide group (its tests run one after another on one worker), then the test files
    by their recorded time, longest first, so that no long file starts last and holds up the end
    of the run. A file's tests stay together and in order: a worker that moves to another file
    tears down the module's fixtures (its shared emulator, say), which it would set up again."""
    files: dict[str, float] = {}
    for item in items:
        files[test_file(item.nodeid)] = files.get(test_file(item.nodeid), 0.0) + seconds.get(item.nodeid, UNKNOWN_DURATION)

    def key(item: pytest.Item) -> tuple[bool, float]:
        file = test_file(item.nodeid)
        return (file not in MACHINE_WIDE_FILES, -files[file])

    return sorted(items, key=key)  # stable: the collection order within a file


class DurationRecorder:
    """--store-durations: each test's setup + call + teardown time, merged into DURATIONS (tests
    this run did not run keep their entries). In a parallel run the reports reach the controller."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        merged = {**recorded_durations(), **{k: round(v, 2) for k, v in self.seconds.items()}}
        DURATIONS.write_text(json.dumps(dict(sorted(merged.items())), indent=0) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("store_durations") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(DurationRecorder(), "basemount-durations")


def _fork_emulator(argv: list[str], log: str):
    from launcher import spawn_python_module

    return spawn_python_module(argv, log)


# Emulators (EmulatorProcess) and mount daemons (Mount) are forked from this process's launcher
# (tests/launcher.py), which has imported the package once: a Python start is most of their CPU.
emulator_control.SPAWN = _fork_emulator

# Property tests must not depend on the wall clock either: on a loaded machine (or several test
# processes on two cores) one example may take longer than hypothesis's 200 ms deadline, and
# generating inputs longer than its "too slow" health check allows. Tests that set their own
# settings keep them; what they leave unset comes from this profile.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")


def write_entity(folder: Path, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if fields:
        (folder / ".entity.json").write_text(json.dumps(fields))
    return folder


def write_file(path: Path, data: bytes, mtime: float = 1_700_000_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def write_synthetic(path: Path, size: int, seed: int) -> Path:
    """``path`` is the served name; the account folder holds ``path.synthetic.json``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = path.with_name(path.name + ".synthetic.json")
    spec.write_text(json.dumps({"size": size, "seed": seed}))
    return spec


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


# -- write mode: waiting for the upload spool (on conditions, never on the clock) ---------------------


def wait_until(condition, what: str, timeout: float = 180.0, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def status_lines(m) -> list[list[str]]:
    text = m.path(".uploads").read_text()
    return [line.split("\t") for line in text.splitlines() if "\t" in line]


def flush(m) -> None:
    fd = os.open(m.path(".commands"), os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"flush\n")
    os.close(fd)


def flush_and_wait(m, timeout: float = 180.0) -> None:
    """Upload everything pending now and wait until nothing is pending or uploading. The flush is
    repeated: the kernel releases a closed file after close() returns, so a file may become
    pending just after a flush."""

    def done() -> bool:
        if any(line[0] in ("pending", "open") for line in status_lines(m)):
            flush(m)
            return False
        return not any(line[0] == "uploading" for line in status_lines(m))

    wait_until(done, "uploads to commit", timeout, poll=0.2)


def at_once(*calls):
    """Run independent calls (argument-less callables, e.g. lambdas around subprocess.run) at the
    same time, each in a thread of its own; their results in order. Independent CLI runs spend
    most of their time starting Python, so a test that makes several waits for one, not all."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


def cli_in_process(*args: str, env: dict[str, str], entry=None):
    """``basemount-py ARGS`` run in this process (``cli.main``, or the entry point function
    ``entry``) under exactly the environment ``env``, as a subprocess would see it; a
    CompletedProcess with the exit code and what it printed. A CLI subprocess spends most of a
    CPU-second importing; the refusals that never mount need none. A background ``mount`` that
    passes its checks forks its daemon from this process (the daemon's answer comes back through
    its pipe, as from a subprocess). One at a time: not thread-safe."""
    import contextlib
    import io
    import subprocess
    from unittest import mock

    from basemount_py.cli import main

    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env, clear=True), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = (entry or main)(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK)


def require_fuse() -> None:
    # Real-mount tests may skip on a user's machine without FUSE, never in CI.
    if not fuse_available():
        if os.environ.get("CI"):
            pytest.fail("/dev/fuse is not usable, and CI must run the real-mount tests")
        pytest.skip("/dev/fuse is not usable here")


class Mount(MountProcess):
    """A real ``basemount-py mount --foreground`` process against an emulator, HOME in a temp dir.

    The daemon is forked from this test process's launcher (tests/launcher.py: the package
    already imported, about half of a daemon start's CPU); ``fresh_python=True`` starts it as
    ``python -m basemount_py`` instead (a test that looks at the process's own command line)."""

    def __init__(self, emulator, mountpoint: Path, *extra: str, env: dict | None = None, fresh_python: bool = False):
        home = {"HOME": str(mountpoint.parent / "home")}
        super().__init__(
            mountpoint,
            *extra,
            api_server=emulator.url if emulator is not None else None,
            access_token=emulator.token if emulator is not None else None,
            env={**home, **(env or {})},
        )
        self.fresh_python = fresh_python
        mountpoint.mkdir(parents=True, exist_ok=True)

    def _spawn(self, log_file):
        if self.fresh_python:
            return super()._spawn(log_file)
        from launcher import spawn_python_module

        return spawn_python_module(self.args, str(self.log), self.env, None if self.cwd is None else str(self.cwd))

    def start(self, timeout: float = 60) -> "Mount":  # generous: a loaded machine took over 20 s
        try:
            super().start(timeout)
        except MountStartError as exc:
            raise AssertionError(str(exc)) from None
        return self


@pytest.fixture(scope="session", autouse=True)
def daemon_launcher():
    """Ends the session's daemon launcher (tests/launcher.py) with the session, before pytest-cov
    combines the coverage data: the launcher writes its own (the package's import-time lines) as
    it exits."""
    yield
    import launcher

    launcher.close()


@pytest.fixture
def mount_factory(tmp_path):
    require_fuse()
    mounts: list[Mount] = []

    def make(emulator, *extra: str, name: str = "mnt", env: dict | None = None, start: bool = True, fresh_python: bool = False) -> Mount:
        m = Mount(emulator, tmp_path / name, *extra, env=env, fresh_python=fresh_python)
        mounts.append(m)
        return m.start() if start else m

    yield make
    for m in mounts:
        m.stop()


def shared_across_workers(tmp_path_factory, name: str, make) -> Path:
    """``make(path)`` once per test run, even when pytest-xdist runs the tests in several worker
    processes: the first worker builds ``name`` under the run's shared temporary root while the
    others wait on a lock, then all use it (read only). Without xdist: a plain session folder."""
    import fcntl

    if "PYTEST_XDIST_WORKER" not in os.environ:
        path = tmp_path_factory.mktemp(name) / "data"
        make(path)
        return path
    shared = tmp_path_factory.getbasetemp().parent  # the run's root, above each worker's own
    path = shared / name
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (shared / f"{name}.done").exists():
            make(path)
            (shared / f"{name}.done").touch()
    return path


@pytest.fixture(scope="session")
def demo_account(tmp_path_factory):
    """The demo account folder (read only: tests that write make their own account)."""
    from basemount_py.emulator.demo_data import generate_demo_account

    return shared_across_workers(tmp_path_factory, "demo-account", generate_demo_account)


@pytest.fixture(scope="session")
def demo_emulator(demo_account):
    from basemount_py.emulator.control import EmulatorProcess

    with EmulatorProcess(demo_account) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def demo_mount(demo_emulator, tmp_path_factory):
    require_fuse()
    base = tmp_path_factory.mktemp("demo-mount")
    m = Mount(demo_emulator, base / "mnt")
    m.start()
    yield m
    m.stop()


# -- users that are not root, and the FUSE device's permissions (non-root mounts, fuse-helper) --

UNPRIVILEGED_USER = "bmpy-user1"


@pytest.fixture(scope="session")
def unprivileged_user():
    """A system user without privileges (created with useradd when missing): pwd entry."""
    import pwd
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("creating a user and switching to it needs root")
    try:
        return pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        # check=False: another test process (pytest-xdist) may create the same user at the same
        # moment; useradd then fails with "already exists", and getpwnam below finds it.
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", UNPRIVILEGED_USER],
            capture_output=True,
        )
        return pwd.getpwnam(UNPRIVILEGED_USER)


class fuse_device_mode:
    """``with fuse_device_mode(0o666):`` sets /dev/fuse's permission bits and restores them
    afterwards, even when the block fails (the distribution default is 0666; hardened nodes 0600).

    The mode is machine-wide: the block holds an exclusive flock, so two test runs on one machine
    take turns instead of changing the mode under each other."""

    LOCK = "/tmp/basemount_py-tests-dev-fuse.lock"

    def __init__(self, mode: int, device: str = "/dev/fuse"):
        self.mode, self.device = mode, device

    def __enter__(self) -> "fuse_device_mode":
        import fcntl

        self.lock_fd = os.open(self.LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        self.saved = os.stat(self.device).st_mode & 0o7777
        os.chmod(self.device, self.mode)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.chmod(self.device, self.saved)
        finally:
            os.close(self.lock_fd)  # releases the flock


def user_home(tmp_root: Path, user) -> Path:
    """A private HOME for ``user`` outside pytest's root-only temp folders."""
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="bmpy-home-", dir=tmp_root))
    os.chown(home, user.pw_uid, user.pw_gid)
    return home


def _reachable_by_all(path: str) -> bool:
    """Every directory on the way is searchable, and the file executable, by other users."""
    real = Path(os.path.realpath(path))
    return all(os.stat(d).st_mode & 0o001 for d in real.parents) and bool(os.stat(real).st_mode & 0o001)


def user_python() -> str:
    """A Python another user can run with this checkout's packages (``as_user`` sets PYTHONPATH):
    the tests' own, or, when that lives in a private home (a pyenv under /root), the system
    interpreter of the same version."""
    if _reachable_by_all(sys.executable):
        return sys.executable
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if os.path.exists(system) and _reachable_by_all(system):
        return system
    pytest.fail(f"no Python of version {sys.version_info.major}.{sys.version_info.minor} that other users may run")


_STAGED_IMPORT_PATHS: list[str] = []


def user_import_paths() -> list[str]:
    """Where another user's Python finds basemount_py and its dependencies: this checkout and
    the venv's site-packages, or, when a private folder on the way hides them (a clone under
    /root, 0700), a world-readable copy of both made once per test session."""
    import atexit
    import shutil
    import site
    import tempfile

    own = [str(ROOT), *site.getsitepackages()]
    if all(_reachable_by_all(os.path.join(p, ".")) for p in own):
        return own
    if not _STAGED_IMPORT_PATHS:
        stage = Path(tempfile.mkdtemp(prefix="bmpy-imports-", dir="/tmp"))
        atexit.register(shutil.rmtree, stage, True)
        stage.chmod(0o755)
        shutil.copytree(ROOT / "basemount_py", stage / "src" / "basemount_py",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for i, packages in enumerate(site.getsitepackages()):
            shutil.copytree(packages, stage / f"site-{i}", symlinks=True)
        for folder, dirs, files in os.walk(stage):
            for name in dirs + files:
                path = os.path.join(folder, name)
                if not os.path.islink(path):
                    os.chmod(path, os.stat(path).st_mode | 0o444 | (0o111 if name in dirs else 0))
        _STAGED_IMPORT_PATHS.extend([str(stage / "src"), *(str(stage / f"site-{i}") for i in range(len(site.getsitepackages())))])
    return _STAGED_IMPORT_PATHS


def as_user(user, home: Path, **env: str) -> dict:
    """subprocess keyword arguments that run a command as ``user`` with HOME=home, able to import
    basemount_py and its dependencies with ``user_python()``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BASESPACE_", "XDG_"))}
    packages = user_import_paths()
    clean.update(HOME=str(home), USER=user.pw_name, LOGNAME=user.pw_name, PYTHONPATH=os.pathsep.join(packages), **env)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "env": clean, "cwd": str(home)}
