"""``basemount-py demo``: a generated demo account, served by the emulator and mounted for real.

The mount runs as its own ``basemount-py mount --foreground`` process; credentials reach it through
the environment (never the command line). Ctrl-C (or SIGTERM) unmounts and stops everything.
"""

from __future__ import annotations

import os
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

Press Ctrl-C to unmount and stop.
"""


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
                Path(mp), "--log-level", "WARNING", api_server=emulator.url, access_token=emulator.token,
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
            results = sorted(x.name for x in (account / "Projects" / p2 / "AppResults").iterdir()) if (account / "Projects" / p2 / "AppResults").is_dir() else ["?"]
            ar = next((r for r in results if "Alignment" in r), results[0])
            print(SESSION.format(mp=mp, url=emulator.url, p1=p1, p2=p2, ar=ar), flush=True)
            while keep_running and not stop["now"] and mount.process.poll() is None:
                time.sleep(0.2)
            return 0
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if mount is not None:
            mount.stop()
        print("Demo stopped; unmounted.", flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
