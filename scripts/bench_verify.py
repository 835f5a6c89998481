#!/usr/bin/env python3
"""What ``--verify`` costs: ``cp`` of one large synthetic file through a fresh mount, with and
without ``--verify``, interleaved runs, medians (docs/performance.md).

Each run mounts anew (nothing cached) against the emulator on loopback with no latency (the lan
profile, where the daemon's CPU is the limit) and reports the ``cp`` throughput and the daemon's CPU
seconds per GiB (user + system, from /proc), which a loaded machine disturbs far less than wall time.

    .venv/bin/python scripts/bench_verify.py --size 2 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from basemount_py.emulator.control import EmulatorProcess
from basemount_py.mount_process import MountProcess

GiB = 2**30
MODES = {"plain": [], "--verify": ["--verify"]}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=float, default=2.0, metavar="GiB", help="file size (default 2)")
    parser.add_argument("--runs", type=int, default=5, help="runs per mode (default 5)")
    args = parser.parse_args()
    size = int(args.size * GiB)
    work = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    try:
        files = work / "account" / "Projects" / "B" / "Samples" / "S" / "Files"
        files.mkdir(parents=True)
        (files / "big.bin.synthetic.json").write_text(json.dumps({"size": size, "seed": 7}))
        speed: dict[str, list[float]] = {mode: [] for mode in MODES}
        cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
        with EmulatorProcess(work / "account") as emulator:
            for run in range(args.runs):
                for mode, options in MODES.items():
                    mountpoint = work / f"mnt-{run}-{len(options)}"
                    mountpoint.mkdir()
                    env = {"HOME": str(work / "home")}
                    mount = MountProcess(mountpoint, *options, api_server=emulator.url, access_token=emulator.token, env=env)
                    mount.start()
                    try:
                        source = mount.path("Projects", "B", "Samples", "S", "Files", "big.bin")
                        os.stat(source)  # the listing (and the emulator's ETag) before the clock starts
                        start, cpu_start = time.monotonic(), cpu_seconds(mount.pid)
                        subprocess.run(["cp", str(source), str(work / "copy")], check=True)
                        elapsed = time.monotonic() - start
                        cpu[mode].append((cpu_seconds(mount.pid) - cpu_start) / (size / GiB))
                        speed[mode].append(size / elapsed / 1e6)
                    finally:
                        mount.stop()
                        (work / "copy").unlink(missing_ok=True)
                    print(f"run {run + 1} {mode:9} {speed[mode][-1]:7.0f} MB/s  daemon CPU {cpu[mode][-1]:.2f} s/GiB", flush=True)
        print(f"\n{args.size:g} GiB, {args.runs} runs each, medians (load average {os.getloadavg()[0]:.1f}):")
        for mode in MODES:
            print(f"  {mode:9} cp {statistics.median(speed[mode]):7.0f} MB/s   daemon CPU {statistics.median(cpu[mode]):.2f} s/GiB")
        ratio = statistics.median(speed["--verify"]) / statistics.median(speed["plain"])
        print(f"  --verify / plain: {ratio:.2f}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
