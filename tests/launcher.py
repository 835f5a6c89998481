"""Mount daemons forked from a Python that has already imported the package (tests only).

A ``basemount-py mount --foreground`` process spends about half of the CPU it needs to come up
importing trio, httpx, pyfuse3 and the package; the suite starts over a hundred of them. The
launcher is one Python process per test process that imports them once and then forks a daemon
for each request: the child sets the environment, working folder and log it was given and runs
``cli.main`` with the daemon's arguments, exactly what ``python -m basemount_py ARGS`` runs after
its imports. The daemon is the launcher's child, so the launcher reports its exit status;
:class:`LaunchedProcess` gives the tests the parts of ``subprocess.Popen`` they use (``pid``,
``poll``, ``wait``, ``send_signal``, ``kill``, ``returncode``).

Coverage (``scripts/test --cov``): the launcher is a subprocess like any other, and its forked
children are measured too (``patch = ["fork"]`` in pyproject.toml).
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import threading
import time

PRELOAD = (  # what a daemon and an emulator import
    "basemount_py.cli",
    "basemount_py.mount",
    "basemount_py.api.config",
    "basemount_py.tree.manifest",
    "basemount_py.fuse_ops",
    "basemount_py.emulator.cli",
    "basemount_py.emulator.app",
    "basemount_py.emulator.server",
    # imported at run time: the daemon's first worker thread (anyio's trio backend), uvicorn's loop
    "anyio._backends._trio",
    "anyio._backends._asyncio",
    "encodings.idna",
)


# -- the launcher process ------------------------------------------------------------------------


def _child(request: dict, wakeup: tuple[int, int]) -> None:
    """In the forked child: become the daemon ``request`` describes; never returns."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in wakeup:
        os.close(fd)
    from basemount_py.mount import detach_stdio  # imported already (PRELOAD)

    detach_stdio(os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    os.environ.clear()
    os.environ.update(request["env"])
    if request["cwd"]:
        os.chdir(request["cwd"])
    sys.argv = [request["module"], *request["args"]]
    # What ``python -m MODULE ARGS`` runs after its imports; its __main__ ends in sys.exit, and
    # the interpreter's exit runs the atexit handlers (coverage's among them).
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    sys.exit(0)


def serve() -> None:
    """Read one JSON request a line on stdin; answer ``{"pid": N}`` for each, and ``{"exit": N,
    "code": C}`` (C as Popen's returncode) when a daemon ends. Ends at EOF."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    from basemount_py.cli import build_parser

    build_parser()  # imports what the parser's subcommands import
    wakeup = os.pipe()
    os.set_blocking(wakeup[1], False)
    signal.set_wakeup_fd(wakeup[1])
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select through the wakeup pipe
    out = sys.stdout
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    out.flush()
    pending = b""
    while True:
        readable, _, _ = select.select([0, wakeup[0]], [], [])
        if wakeup[0] in readable:
            os.read(wakeup[0], 4096)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            out.write(json.dumps({"exit": pid, "code": os.waitstatus_to_exitcode(status)}) + "\n")
            out.flush()
        if 0 in readable:
            chunk = os.read(0, 65536)
            if not chunk:
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(request, wakeup)
                out.write(json.dumps({"pid": pid}) + "\n")
                out.flush()


# -- the test process's side ---------------------------------------------------------------------


class LaunchedProcess:
    """A daemon the launcher forked: what the tests use of ``subprocess.Popen``."""

    def __init__(self, launcher: "Launcher", pid: int, args: list[str]):
        self._launcher, self.pid, self.args = launcher, pid, args

    @property
    def returncode(self) -> int | None:
        return self._launcher.exits.get(self.pid)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._launcher.changed:
            while self.pid not in self._launcher.exits:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                if not self._launcher.alive:
                    raise RuntimeError("the daemon launcher ended; its daemons' exit codes are lost")
                self._launcher.changed.wait(left)
            return self._launcher.exits[self.pid]

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Launcher:
    """The launcher process of this test process, and its answers (read by a thread)."""

    def __init__(self) -> None:
        here = os.path.dirname(os.path.abspath(__file__))
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(here, "launcher.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=os.path.dirname(here),
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.owner = os.getpid()
        self.exits: dict[int, int] = {}
        self.alive = True
        self.changed = threading.Condition()
        self.started: list[int] = []
        self.request_lock = threading.Lock()  # one request at a time: answers come in order
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError("the daemon launcher did not start")
        threading.Thread(target=self._read, name="daemon-launcher", daemon=True).start()
        atexit.register(self.close)

    def close(self) -> None:
        """End the launcher (its daemons were stopped by the tests that started them) and wait for
        it, so that its CPU time and its daemons' count in this process's children."""
        if self.owner != os.getpid():
            return
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            message = json.loads(line)
            with self.changed:
                if "pid" in message:
                    self.started.append(message["pid"])
                else:
                    self.exits[message["exit"]] = message["code"]
                self.changed.notify_all()
        with self.changed:
            self.alive = False
            self.changed.notify_all()

    def spawn(self, module: str, args: list[str], env: dict[str, str], cwd: str | None, log: str) -> LaunchedProcess:
        """``python -m MODULE ARGS`` with that environment and working folder, its output (and
        errors) appended to the file ``log``."""
        assert self.proc.stdin is not None
        request = {"module": module, "args": args, "env": env, "cwd": cwd, "log": log}
        with self.request_lock:
            with self.changed:
                count = len(self.started)
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
            with self.changed:
                while len(self.started) == count:
                    if not self.alive:
                        raise RuntimeError("the daemon launcher ended")
                    self.changed.wait(60)
                pid = self.started[count]
        return LaunchedProcess(self, pid, [sys.executable, "-m", module, *args])


_launcher: Launcher | None = None
_launcher_lock = threading.Lock()


def launcher() -> Launcher:
    """This process's launcher, started on first use (a forked test process starts its own)."""
    global _launcher
    with _launcher_lock:
        if _launcher is None or not _launcher.alive or _launcher.owner != os.getpid():
            _launcher = Launcher()
        return _launcher


def spawn_python_module(argv: list[str], log: str, env: dict[str, str] | None = None, cwd: str | None = None) -> LaunchedProcess:
    """``argv`` = ``[sys.executable, "-m", MODULE, *ARGS]``, forked from the launcher (the
    environment and working folder default to this process's, as with ``subprocess.Popen``)."""
    assert argv[0] == sys.executable and argv[1] == "-m", argv
    return launcher().spawn(argv[2], list(argv[3:]), dict(os.environ) if env is None else env, cwd or os.getcwd(), log)


def close() -> None:
    """End this process's launcher, if it started one (conftest: at the end of the session, so
    that its coverage data is written before pytest-cov combines the data files)."""
    global _launcher
    with _launcher_lock:
        if _launcher is not None:
            _launcher.close()
            _launcher = None


if __name__ == "__main__":
    serve()
