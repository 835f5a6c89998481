"""``basemount-py demo``: a generated demo account, served by the emulator and mounted for real.

The mount runs as its own ``basemount-py mount --foreground`` process; credentials reach it through
the environment (never the command line). Ctrl-C (or SIGTERM) unmounts and stops everything.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
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

Press Ctrl-C to unmount and stop.
"""


def wait_for_mount(mountpoint: str, process: subprocess.Popen, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mountpoint):
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def run_demo(mountpoint: str | None = None, keep_running: bool = True) -> int:
    from .emulator.control import EmulatorProcess
    from .emulator.demo_data import generate_demo_account

    workdir = Path(tempfile.mkdtemp(prefix="basemount-demo-"))
    account = workdir / "account"
    mp = os.path.abspath(mountpoint) if mountpoint else str(workdir / "BaseSpace")
    os.makedirs(mp, exist_ok=True)
    print(f"Generating the demo account in {account} ...", flush=True)
    generate_demo_account(account)
    mount_proc: subprocess.Popen | None = None
    stop = {"now": False}

    def on_signal(signum, frame):  # noqa: ARG001
        stop["now"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with EmulatorProcess(account) as emulator:
            env = dict(os.environ, BASESPACE_API_SERVER=emulator.url, BASESPACE_ACCESS_TOKEN=emulator.token)
            mount_proc = subprocess.Popen(
                [sys.executable, "-m", "basemount_py", "mount", mp, "--foreground", "--log-level", "WARNING"],
                env=env,
            )
            if not wait_for_mount(mp, mount_proc):
                print("basemount-py: the demo mount did not come up (see the messages above)", file=sys.stderr)
                return 1
            projects = sorted(p.name for p in (account / "Projects").iterdir())
            p1 = next((p for p in projects if p.startswith("Demo")), projects[0])
            p2 = next((p for p in projects if p != p1), p1)
            results = sorted(x.name for x in (account / "Projects" / p2 / "AppResults").iterdir()) if (account / "Projects" / p2 / "AppResults").is_dir() else ["?"]
            ar = next((r for r in results if "Alignment" in r), results[0])
            print(SESSION.format(mp=mp, url=emulator.url, p1=p1, p2=p2, ar=ar), flush=True)
            while keep_running and not stop["now"] and mount_proc.poll() is None:
                time.sleep(0.2)
            return 0
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if mount_proc is not None and mount_proc.poll() is None:
            mount_proc.send_signal(signal.SIGTERM)
            try:
                mount_proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                mount_proc.kill()
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
        print("Demo stopped; unmounted.", flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
