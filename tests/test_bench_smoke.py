"""Smoke run of the benchmark (scripts/bench.py --smoke --profile lan: tiny sizes, every row).

No timing assertions (CI machines vary): the point is that every measurement still runs end to end
against a real emulator and real mounts, and that the table it prints has a number in every row.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, is_mounted, require_fuse

EXPECTED_ROWS = [
    "(a) single-stream curl, MB/s",
    "(b) 16 ranged curls, MB/s",
    "cp through the mount, MB/s",
    "(a) cp / single-stream",
    "(b) cp / 16 ranged",
    "(c) 8 readers aggregate, MB/s",
    "(c) 8 readers: daemon peak RSS, MiB",
    "(d) pread 64 KiB median, ms",
    "(d) pread 64 KiB p99, ms",
    "(d) ranged GETs per read, median",
    "(d) bytes fetched / bytes read",
    "(e) samtools, 10 processes: mount / local",  # --smoke: 10 regions (scripts/bench.py SMOKE_REGIONS)
    "(e) samtools, 1 process 10 regions: mount / local",
    "(e) samtools, 1 process 10 regions: mount / rclone full",
    "cp / rclone cache off",
    "(f) re-read / local disk",
    "(f) null FUSE serving the local file, MB/s",  # the ceiling of a disk-backed daemon
    "(f) re-read / null FUSE serving the local file",
    "(g) cp merged FASTQ (4 parts), MB/s",
    "(g) merged / single file",
    "`ls -l` 50-sample project: wall s",
    "`ls -l` 50-sample project: API calls",
    "`find MP` demo account: wall s",
    "`find MP` demo account: API calls",
]
# The peer table: each workload for basemount_py and rclone, and the ratio columns.
PEER_ROWS = [
    "lan cold `cp`, MB/s",
    "lan `cp`: peak RSS, MiB",
    "lan 8 readers, MB/s",
    "lan random 64 KiB pread, median ms",
    "lan samtools, 10 processes, s",
    "lan samtools, 1 process 10 regions, s",
    "lan second-mount re-read, MB/s",
]
NUMBER = re.compile(r"^\d+(\.\d+)?( [✓✗])?$")


# 12 mounts (ours and rclone's: with --smoke one per subject kind serves the cp, readers, pread and
# samtools rows, and one per account both listing columns) and 40 samtools processes: ~25 s on an
# idle 2-CPU VM, a few minutes when the machine is shared.
@pytest.mark.timeout(900)
def test_bench_quick_prints_every_row_with_numbers(tmp_path, demo_account):
    require_fuse()
    out_file = tmp_path / "bench.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--smoke", "--profile", "lan", "--out", str(out_file),
         "--demo-account", str(demo_account)],  # the session's (built once per run), not a third one
        capture_output=True, text=True, timeout=850, cwd=ROOT,
        # Its temporary folders (and so its mounts) go under this test's own folder, so the
        # leftover check below cannot see another benchmark running on the same machine.
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout
    assert out_file.read_text().strip() == table.strip()
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] and not cells[0].startswith(("Measure", "Listing", "---")):
            rows[cells[0]] = cells[1:]
    for name in EXPECTED_ROWS:
        assert name in rows, f"row {name!r} missing from:\n{table}"
        values = rows[name][:2] if name.startswith("`") else rows[name][:1]  # listing: 0 and 20 ms
        for value in values:
            assert NUMBER.match(value), f"row {name!r} has {value!r}, not a number"
    for name in PEER_ROWS:
        assert name in rows, f"peer row {name!r} missing from:\n{table}"
        ours, _direct, _off, full, _ahead_off, ahead_full = rows[name]
        for value in (ours, full, ahead_full):
            assert NUMBER.match(value) or value == "∞", f"peer row {name!r} has {value!r}"
    # The ratios are real measurements, not placeholders.
    assert float(rows["(d) ranged GETs per read, median"][0].split()[0]) >= 1
    assert float(rows["`ls -l` 50-sample project: API calls"][0]) >= 2
    # Nothing is left mounted under the bench's temporary folders.
    with open("/proc/self/mounts") as mounts:
        assert not [line for line in mounts if str(tmp_path) in line]
    assert not is_mounted(str(tmp_path))
