"""``EmulatorProcess``: run the emulator as a subprocess (for tests, benchmarks and the demo).

The emulator runs in its own process (asyncio/uvicorn) so that trio-based clients under test
never share an event loop with it, and so a restart or a kill is realistic.  Start-up uses
``--port 0 --ready-file``: the child binds a free port and writes its base URL atomically once
it accepts connections; we wait for that file (bounded) and fail with the child's output if it
exits first.  Output goes to a log file (never a pipe nobody reads, which could block it).

Knobs with a CLI option are passed on the command line; the others (``short_pages``,
``fail_next``) are set through ``/_emulator/knobs`` right after start.  ``restart()`` reuses
the same port and the constructor's knobs (runtime ``set_knobs`` changes are not carried over).
The token is passed to the child but never printed or logged.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import httpx

from .account import resolve_token
from .cli import _KNOB_OPTIONS

__all__ = ["EmulatorProcess", "EmulatorStartError"]

# How the emulator's process is started: None = ``subprocess.Popen`` of ``python -m
# basemount_py.emulator``; the tests set a function (argv, log file path) -> a Popen-like object
# that forks it from a Python which has imported the emulator already (tests/launcher.py).
SPAWN: Callable[[list[str], str], Any] | None = None

START_TIMEOUT = 60.0  # a bound on a condition, never waited out when start-up works (loaded machines took over 15 s)


class EmulatorStartError(RuntimeError):
    pass


class EmulatorProcess:
    def __init__(
        self,
        data_dir: str | os.PathLike,
        token: str | None = None,
        port: int = 0,
        tls: tuple[str, str] | None = None,
        **knob_options: Any,
    ):
        """``tls`` = (certificate, key) PEM files: serve HTTPS; this object's own client trusts
        that certificate."""
        self.data_dir = os.fspath(data_dir)
        self.tls = tls
        self.token = resolve_token(self.data_dir, token)
        self._explicit_token = token
        self.port = port
        self.knob_options = knob_options
        self.url = ""
        self._proc: subprocess.Popen | None = None
        self._workdir = tempfile.mkdtemp(prefix="bs-emulator-")
        self._log_path = os.path.join(self._workdir, "emulator.log")
        self._http: httpx.Client | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> "EmulatorProcess":
        if self._proc is not None:
            raise RuntimeError("emulator already running")
        ready = os.path.join(self._workdir, "ready")
        if os.path.exists(ready):
            os.unlink(ready)
        cmd = [sys.executable, "-m", "basemount_py.emulator", "--data", self.data_dir, "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--ready-file", ready]
        if self._explicit_token:
            cmd += ["--token", self._explicit_token]
        if self.tls:
            cmd += ["--tls-cert", os.fspath(self.tls[0]), "--tls-key", os.fspath(self.tls[1])]
        runtime: dict[str, Any] = {}
        for name, value in self.knob_options.items():
            if name in _KNOB_OPTIONS:
                cmd += [_KNOB_OPTIONS[name][0], str(value)]
            elif name == "fault_scope":
                cmd += ["--fault-scope", str(value)]
            else:
                runtime[name] = value
        if SPAWN is not None:
            self._proc = SPAWN(cmd, self._log_path)
        else:
            log = open(self._log_path, "ab")
            try:
                self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            finally:
                log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(ready):
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise EmulatorStartError(f"emulator exited with status {code}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self._kill()
                raise EmulatorStartError(f"emulator not ready after {START_TIMEOUT:g} s: {self.log_tail()}")
            time.sleep(0.02)
        with open(ready) as f:
            self.url = f.read().strip()
        self.port = int(self.url.rstrip("/").rsplit(":", 1)[1])
        # Without TLS the URL is plain http: no certificate is ever checked, so none is loaded
        # (the CA bundle costs ~50 ms of CPU per start, in every test that starts an emulator).
        verify = ssl.create_default_context(cafile=os.fspath(self.tls[0])) if self.tls else False
        self._http = httpx.Client(base_url=self.url, timeout=10, verify=verify)
        if runtime:
            self.set_knobs(**runtime)
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        if self._http is not None:
            self._http.close()
            self._http = None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def restart(self) -> "EmulatorProcess":
        """Stop and start again on the same port."""
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> "EmulatorProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def log_tail(self, limit: int = 2000) -> str:
        try:
            with open(self._log_path, "rb") as f:
                data = f.read()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", "replace").strip()

    # -- debug endpoints ------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        if self._http is None:
            raise RuntimeError("emulator is not running")
        response = self._http.request(method, path, **kw)
        if response.status_code != 200:
            raise ValueError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def set_knobs(self, **knobs: Any) -> dict[str, Any]:
        return self._call("POST", "_emulator/knobs", json=knobs)

    def knobs(self) -> dict[str, Any]:
        return self._call("GET", "_emulator/knobs")

    def counters(self) -> dict[str, Any]:
        return self._call("GET", "_emulator/counters")

    def reset_counters(self) -> None:
        self._call("POST", "_emulator/counters/reset")

    def rotate_token(self, token: str) -> None:
        """Make the running emulator accept ``token`` instead of the current one (not persisted
        across ``restart()``)."""
        self._call("POST", "_emulator/token", json={"token": token})
        self.token = token

    def reload(self) -> dict[str, Any]:
        return self._call("POST", "_emulator/reload")
