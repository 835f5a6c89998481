#!/usr/bin/env python3
"""Where a second-mount re-read spends its time: phases and CPU per thread (docs/performance.md,
"Fifth round: the re-read path").

``scripts/bench``'s re-read row (f) gives one figure: ``cp`` of a file through a second mount
sharing the first one's content cache, lookup included. This script splits it, for a real file of
``--size`` MiB on the emulator's disk, in interleaved rounds:

* ``local``: ``cp`` of the same file from local disk, and ``cp``'s CPU;
* ``null``: ``cp`` of a file of the same size from ``scripts/null_fuse.py`` (the ceiling of a
  Python FUSE daemon here), with the daemon's CPU;
* ``null-file``: the same daemon serving the local file itself, one ``pread`` per read (the
  ceiling of a Python FUSE daemon that reads a disk);
* ``ours`` (and ``baseline`` with ``--baseline DIR``, the daemon of another checkout): the cache
  is filled by **two** first mounts (one ``cp`` may leave blocks unwritten when the disk writer
  falls behind, and their refetch would be timed too), the page cache dropped, then a fresh mount:
  the lookup (``stat`` of the path) and the ``cp`` are timed apart, with the daemon's CPU per
  thread (``/proc/PID/task/*/stat``), ``cp``'s CPU, and the content bytes fetched again (should be
  0).

Run as root (the page cache is dropped before each read):
``.venv/bin/python scripts/reread_split.py --profile lan --rounds 3 [--baseline DIR]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import PROFILES, SAMPLE_DIR, BenchMount, NullMount, content_counters, drop_caches  # noqa: E402

from basemount_py.emulator.control import EmulatorProcess  # noqa: E402

MiB = 2**20
TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, tuple[str, float, float]]:
    """tid -> (name, user s, system s) for each thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # the thread ended
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (name, int(fields[11]) / TICK, int(fields[12]) / TICK)
    return out


def split(before: dict, after: dict, pid: int) -> tuple[float, float]:
    """(CPU seconds of the main thread, CPU seconds of all other threads) between two snapshots."""
    main = other = 0.0
    for tid, (name, user, system) in after.items():
        _, user0, system0 = before.get(tid, (name, 0.0, 0.0))
        spent = user - user0 + system - system0
        if tid == pid:
            main += spent
        else:
            other += spent
    return main, other


def timed_cp(path: Path) -> tuple[float, float]:
    """Wall seconds and ``cp``'s CPU seconds for ``cp PATH /dev/null``."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(["cp", str(path), "/dev/null"], check=True, timeout=1800)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="MiB (default 256, the bench's --size 1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="lan")
    parser.add_argument("--baseline", type=Path, metavar="DIR", help="also measure the daemon of this checkout")
    args = parser.parse_args()
    size = args.size * MiB
    base = Path(tempfile.mkdtemp(prefix="reread-split-"))
    rows: dict[str, list[dict]] = {}
    try:
        folder = base.joinpath("account", *SAMPLE_DIR)
        folder.mkdir(parents=True)
        with open(folder / "reread.bin", "wb") as f:
            for _ in range(0, size, 16 * MiB):
                f.write(os.urandom(16 * MiB))
            f.truncate(size)
        rel = Path(*SAMPLE_DIR, "reread.bin")
        kinds = ["local", "null", "null-file", "ours"] + (["baseline"] if args.baseline else [])
        count = 0
        with EmulatorProcess(base / "account") as em:
            em.set_knobs(**PROFILES[args.profile])
            for round_ in range(args.rounds):
                for kind in kinds:
                    count += 1
                    if kind == "local":
                        drop_caches()
                        wall, cp_cpu = timed_cp(folder / "reread.bin")
                        row = {"MB/s": size / wall / 1e6, "cp CPU s": cp_cpu}
                    elif kind in ("null", "null-file"):
                        source = folder / "reread.bin" if kind == "null-file" else None
                        with NullMount(base / f"null-{count}", size, source) as m:
                            drop_caches()
                            before = thread_cpu(m.pid)
                            wall, cp_cpu = timed_cp(m.path("null.bin"))
                            main_cpu, other_cpu = split(before, thread_cpu(m.pid), m.pid)
                        row = {"MB/s": size / wall / 1e6, "cp CPU s": cp_cpu, "FUSE thread CPU s": main_cpu, "other threads CPU s": other_cpu}
                    else:
                        source = args.baseline if kind == "baseline" else None
                        cache = base / f"cache-{count}"
                        options = (f"--cache-dir={cache}", "--cache-max=16")
                        for fill in ("a", "b"):
                            with BenchMount(em, base / f"mnt-{count}{fill}", *options, source=source) as m:
                                subprocess.run(["cp", str(m.path(str(rel))), "/dev/null"], check=True, timeout=1800)
                        drop_caches()
                        with BenchMount(em, base / f"mnt-{count}", *options, source=source) as m:
                            em.reset_counters()
                            start = time.perf_counter()
                            os.stat(m.path(str(rel)))
                            lookup = time.perf_counter() - start
                            lookup_calls = sum(em.counters()["requests"].values())
                            before = thread_cpu(m.pid)
                            wall, cp_cpu = timed_cp(m.path(str(rel)))
                            main_cpu, other_cpu = split(before, thread_cpu(m.pid), m.pid)
                            _, fetched = content_counters(em, m.route)
                        row = {
                            "MB/s": size / wall / 1e6,
                            "MB/s with lookup": size / (wall + lookup) / 1e6,
                            "lookup ms": lookup * 1000,
                            "lookup API calls": lookup_calls,
                            "cp CPU s": cp_cpu,
                            "FUSE thread CPU s": main_cpu,
                            "other threads CPU s": other_cpu,
                            "fetched again / file": fetched / size,
                        }
                    row["load"] = os.getloadavg()[0]
                    rows.setdefault(kind, []).append(row)
                    print(f"{args.profile} round {round_ + 1} {kind}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nmedians of {args.rounds} round(s), {args.size} MiB, {args.profile}:")
    for kind, runs in rows.items():
        print(f"  {kind}: " + ", ".join(f"{k} {statistics.median(r[k] for r in runs):.3g}" for k in runs[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
