"""``basemount-py demo``: a generated demo account, served by the emulator and mounted for real.

The mount runs as its own ``basemount-py mount --foreground`` process; credentials reach it through
the environment (never the command line). Ctrl-C (or SIGTERM) unmounts, stops everything and
deletes the demo's folder, uploads included (the session text says so).

The demo token is written to ``demo.env`` (0600, in the demo's own 0700 folder) for the user to
source, so that ``sh .curl`` works; it is never printed, so it never lands in a terminal
scrollback, a CI log or a screenshot.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

SESSION = """\
The demo account is mounted at {mp}  (served by a local BaseSpace API emulator at {url})

Try, in another terminal:
  ls {mp}/Projects
  ls -l "{mp}/Projects/{p1}/Samples/"*/Files
  cp "{mp}/Projects/{p1}/Samples/NA12878-A/Files/"*R1_001.fastq.gz /tmp/
  zcat "{mp}/Projects/{p1}/Samples/NA12878-A/Files/"*R1_001.fastq.gz | head -4
  samtools view -c "{mp}/Projects/{p2}/AppResults/{ar}/Files/"*.bam
  cat "{mp}/Projects/{p1}/.json" | head
  echo refresh > "{mp}/Projects/.commands"
  . {env_file} && sh "{mp}/Projects/.curl" | head   # .curl needs the demo's token: demo.env has it

basemount-py, basemount and basemount-cmd are in {bin_dir} (not on your PATH).

Press Ctrl-C to unmount and stop. This deletes {workdir} with the demo account,
including anything you wrote into the mount: copy out what you want to keep first.
"""


def write_env_file(path: Path, api_server: str, token: str) -> Path:
    """``export`` lines for the demo's server and token, readable by the user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"export BASESPACE_API_SERVER={shlex.quote(api_server)}\n")
        f.write(f"export BASESPACE_ACCESS_TOKEN={shlex.quote(token)}\n")
    return path


def run_demo(mountpoint: str | None = None, keep_running: bool = True) -> int:
    from .emulator.control import EmulatorProcess
    from .emulator.demo_data import generate_demo_account
    from .mount_process import MountProcess, MountStartError

    workdir = Path(tempfile.mkdtemp(prefix="basemount-demo-"))
    account = workdir / "account"
    mp = os.path.abspath(mountpoint) if mountpoint else str(workdir / "BaseSpace")
    os.makedirs(mp, exist_ok=True)
    print(f"Generating the demo account in {account} ...", flush=True)
    generate_demo_account(account)
    mount: MountProcess | None = None
    stop = {"now": False}

    def on_signal(signum, frame):  # noqa: ARG001
        stop["now"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with EmulatorProcess(account) as emulator:
            mount = MountProcess(
                Path(mp),
                "--log-level",
                "WARNING",
                api_server=emulator.url,
                access_token=emulator.token,
                log=workdir / "mount.log",
            )
            try:
                mount.start()
            except MountStartError as exc:
                print(f"basemount-py: the demo mount did not come up: {exc}", file=sys.stderr)
                return 1
            projects = sorted(p.name for p in (account / "Projects").iterdir())
            p1 = next((p for p in projects if p.startswith("Demo")), projects[0])
            p2 = next((p for p in projects if p != p1), p1)
            results_dir = account / "Projects" / p2 / "AppResults"
            results = sorted(x.name for x in results_dir.iterdir()) if results_dir.is_dir() else ["?"]
            ar = next((r for r in results if "Alignment" in r), results[0])
            env_file = write_env_file(workdir / "demo.env", emulator.url, emulator.token)
            bin_dir = os.path.dirname(sys.executable)
            print(
                SESSION.format(mp=mp, url=emulator.url, p1=p1, p2=p2, ar=ar, env_file=env_file, bin_dir=bin_dir, workdir=workdir),
                flush=True,
            )
            while keep_running and not stop["now"] and mount.process is not None and mount.process.poll() is None:
                time.sleep(0.2)
            return 0
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if mount is not None:
            mount.stop()
        print(f"Demo stopped; unmounted, and {workdir} (the demo account and its uploads) deleted.", flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
