#!/usr/bin/env python3
"""The read-path benchmark (issue 4) and the listing figures (issue 3), measured in one run.

Why one script: the targets are *ratios* against direct downloads from the same emulator on the
same machine in the same run, so CPU speed, loopback speed and the emulator's own cost cancel out.
Everything runs over loopback: a temporary account folder with synthetic multi-GiB files
(``NAME.synthetic.json``, bytes computed on the fly) and a real BAM, served by
:class:`~basemount_py.emulator.control.EmulatorProcess`; each measurement gets a fresh
``basemount-py mount --foreground`` daemon (real CLI, real kernel mount) so no cache carries over.

Profiles switch the emulator's knobs at runtime (``set_knobs``):

* ``lan`` — no latency, no bandwidth cap;
* ``wan`` — ``latency_ms=20`` per request and ``conn_bandwidth=50`` MB/s per connection.

Rows (see docs/performance.md for what each one means and what limits it):

(a) ``cp`` of a multi-GiB file through the mount vs one ``curl`` of the signed content URL;
(b) the same ``cp`` vs 16 concurrent ranged ``curl`` downloads of that URL; (a) and (b) are also
    given for a mount with ``--direct-io`` (no page cache);
(c) 8 concurrent ``cat`` of 8 distinct files: aggregate throughput and the daemon's peak RSS (VmHWM);
(d) 200 random 64 KiB ``pread`` from a separate process: latency percentiles, ranged requests per
    read (emulator counters read between reads) and bytes fetched per byte read;
(e) ``samtools view -c`` of 100 random regions of an indexed BAM, through the mount vs the local file
    (one process per region, and one process for all regions).

(f) re-reading a file after a remount (a second mount of the same cache), vs reading the same bytes
    from local disk with the page cache dropped; the path's lookup (API calls) is timed apart.

(g) ``cp`` of a merged biosample FASTQ (``BioSamples/<b>/Merged/``, four parts) vs one file of the
    same size.

The peer: every read row is also measured with ``rclone mount`` (http backend, ``--vfs-cache-mode
off`` and ``full``, a fresh cache directory per run) reading the same bytes from the same emulator
under the same profile, through the emulator's plain HTTP view of the account
(``/_emulator/http/``, loopback only; basemount_py/emulator/http_listing.py). A second table gives
each figure for basemount_py, ``--direct-io`` and both rclone modes, and how far ahead we are
(the peer's figure over ours where less is better, ours over the peer's where more is better).

Byte-exactness: after every timed whole-file read, 16 random 1 MiB windows and the last window
of the file are read back through the same mount and compared with the source; every random
``pread`` is compared; samtools counts must equal the local file's; the re-read row's file is
compared whole (SHA-256). ``--repeat N`` interleaves N rounds of everything and reports medians;
each round measures the subjects in an order one place further on (``Subjects.in_turn``).

Listing figures: ``ls -l`` of a 5,000-sample project and ``find MP | wc -l`` of the demo account at
0 and 20 ms emulator latency (wall time and API calls from the emulator's counters).

Secrets: the emulator token travels in the mount's environment and an ``x-access-token`` header
from this process; ``curl`` gets the signed URL (which needs no token) from a 0600 config file
(``curl -K``), so neither appears on a command line.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import httpx

from basemount_py.emulator.control import EmulatorProcess
from basemount_py.emulator.synthetic import synthetic_bytes
from basemount_py.mount_process import MountProcess

MiB = 2**20
GiB = 2**30
MB = 10**6

PROFILES = {
    "lan": {"latency_ms": 0, "conn_bandwidth": 0},
    "wan": {"latency_ms": 20, "conn_bandwidth": 50},
}
SAMPLE_DIR = ("Projects", "Bench", "Samples", "Big", "Files")
BAM_DIR = ("Projects", "Bench", "AppResults", "Align", "Files")
READERS = 8
PREADS = 200
PREAD_SIZE = 64 * 1024
REGIONS = 100
SMOKE_REGIONS, SMOKE_PREADS = 10, 20  # --smoke
# The reference of issue 14's streaming target: 16 ranged curls, each one GET of a 16th of the file.
PARALLEL_RANGES = 16
CHECK_WINDOWS = 16  # random 1 MiB windows compared with the source after every whole-file read
CONTENT_ROUTE = "GET content"  # the emulator's counter of the mount's ranged GETs
PEER_ROUTE = "GET http tree"  # ... and of the peer's (emulator/http_listing.py)
# What each subject is: the daemon, the daemon with --direct-io, rclone without and with its cache.
OURS, DIRECT, RCLONE_OFF, RCLONE_FULL = "basemount_py", "`--direct-io`", "rclone, cache off", "rclone, cache full"
PEERS = (RCLONE_OFF, RCLONE_FULL)
# --baseline DIR: the daemon of another checkout (e.g. a worktree of main), measured beside ours
# on the same rows, in the same run, interleaved: a before/after of a change in one table.
BASELINE = "baseline"


def note(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- environment helpers ---------------------------------------------------------------------


# --smoke keeps the page cache: its figures mean nothing, and dropping the whole machine's page
# cache some 20 times slows whatever else runs beside it (the test suite runs it in parallel).
DROP_PAGE_CACHE = True


def drop_caches() -> bool:
    """Empty the kernel page cache (root only) so no read below is served from memory."""
    if os.geteuid() != 0 or not DROP_PAGE_CACHE:
        return False
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


class BenchMount(MountProcess):
    """A real ``basemount-py mount --foreground`` daemon against the bench's emulator."""

    route = CONTENT_ROUTE

    def __init__(self, emulator: EmulatorProcess, mountpoint: Path, *extra: str, source: Path | None = None):
        """``source``: run the daemon of that checkout instead of this one (``--baseline``)."""
        env = {"HOME": str(mountpoint.parent / "home")}
        if source is not None:
            env["PYTHONPATH"] = str(source)
        super().__init__(mountpoint, *extra, api_server=emulator.url, access_token=emulator.token, env=env, cwd=source)

    def peak_rss(self) -> int:
        """The daemon's VmHWM (peak resident set) in bytes."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc status")

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)


class PeerMount(BenchMount):
    """``rclone mount`` (http backend) of the emulator's plain HTTP view of the same account.

    The mount paths are the same as ours (the account folder mirrors the BaseMount layout used
    here). ``mode`` is rclone's ``--vfs-cache-mode`` (off or full); ``cache_dir`` its cache."""

    route = PEER_ROUTE

    def __init__(self, emulator: EmulatorProcess, mountpoint: Path, mode: str, cache_dir: Path):
        super().__init__(emulator, mountpoint)
        config = mountpoint.parent / "rclone.conf"  # empty: the remote is given on the command line
        config.touch()
        self.args = [
            "rclone", "mount", ":http:", str(mountpoint),
            "--http-url", urljoin(emulator.url, "_emulator/http/"),
            "--read-only", "--vfs-cache-mode", mode, "--cache-dir", str(cache_dir),
            "--config", str(config), "--log-level", "NOTICE",
        ]


class NullMount(MountProcess):
    """``scripts/null_fuse.py``: one file of ``size`` bytes served from memory (the ceiling), or
    the bytes of local file ``source``, one ``pread`` per read (the ceiling of a disk-backed daemon)."""

    def __init__(self, mountpoint: Path, size: int, source: Path | None = None):
        super().__init__(mountpoint)
        self.args = [sys.executable, str(Path(__file__).with_name("null_fuse.py")), str(mountpoint), str(size)]
        if source is not None:
            self.args.append(str(source))


PAGE_REPORTING = Path("/sys/module/page_reporting/parameters")


def reported_to_host_kib() -> int | None:
    """KiB of freed guest memory the VM has handed back to its host so far (free page reporting),
    where the kernel counts it; None elsewhere. Memory handed back costs a fault on the host at its
    next touch, so every copy into fresh page-cache pages (a FUSE daemon's replies, not a local
    disk's DMA) is slower while the guest reports at once (docs/performance.md, "Seventh round")."""
    try:
        return int((PAGE_REPORTING / "reported_kib").read_text())
    except (OSError, ValueError):
        return None


def page_reporting_delay() -> str:
    try:
        return f" (min_free_ms {int((PAGE_REPORTING / 'min_free_ms').read_text())})"
    except (OSError, ValueError):
        return ""


def run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, timeout=timeout, check=True, **kw)


def timed(cmd: list[str], timeout: float, **kw) -> float:
    t0 = time.perf_counter()
    run(cmd, timeout, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t0


def content_counters(em: EmulatorProcess, route: str = CONTENT_ROUTE) -> tuple[int, int]:
    c = em.counters()
    return c["requests"].get(route, 0), c.get("content_bytes", 0)


def reset_when_quiet(em: EmulatorProcess) -> None:
    """Zero the emulator's counters once it has stopped sending content. Its ``content_bytes``
    counts every route, and the subject measured before may still be receiving (rclone with its
    full cache downloads on after its reads): with the order rotating between rounds, ours came
    right after it and was charged 13 bytes fetched per byte read instead of 2."""
    deadline = time.monotonic() + 30
    last = em.counters().get("content_bytes", 0)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = em.counters().get("content_bytes", 0)
        if now == last:
            break
        last = now
    em.reset_counters()


def api_calls(em: EmulatorProcess) -> int:
    return sum(n for route, n in em.counters()["requests"].items() if "content" not in route or "v1pre3" in route)


# -- the account folder ------------------------------------------------------------------------


@dataclass
class Sizes:
    cp: int
    reader: int
    random: int
    bam_reads: int
    samples: int
    reread: int
    regions: int = REGIONS
    preads: int = PREADS


def sizes_for(args: argparse.Namespace) -> Sizes:
    if args.smoke:  # every row runs and is checked; the figures mean little (tests/test_bench_smoke.py)
        return Sizes(cp=16 * MiB, reader=4 * MiB, random=256 * MiB, bam_reads=4_000, samples=50, reread=8 * MiB, regions=SMOKE_REGIONS, preads=SMOKE_PREADS)
    if args.quick:
        return Sizes(cp=96 * MiB, reader=16 * MiB, random=256 * MiB, bam_reads=40_000, samples=500, reread=32 * MiB)
    total = int(args.size * GiB)
    return Sizes(
        cp=total, reader=max(16 * MiB, total // 4), random=max(total, GiB), bam_reads=400_000, samples=5000,
        reread=max(16 * MiB, total // 4),
    )


def synthetic(folder: Path, name: str, size: int, seed: int) -> None:
    """A synthetic file, with a multipart-style ETag of its own (``NAME.file.json``): without one
    the emulator computes the content's MD5 for the first listing, minutes for the bench's ~20 GiB,
    longer than a lookup may take."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.synthetic.json").write_text(json.dumps({"size": size, "seed": seed}))
    etag = hashlib.md5(f"synthetic:{seed}:{size}".encode()).hexdigest() + "-1"
    (folder / f"{name}.file.json").write_text(json.dumps({"ETag": etag}))


def build_account(root: Path, sizes: Sizes, profiles: list[str], work: Path) -> dict:
    files = root.joinpath(*SAMPLE_DIR)
    seed = 100
    seeds = {}
    for profile in profiles:
        for name, size in [(f"cp-{profile}.bin", sizes.cp), (f"random-{profile}.bin", sizes.random)] + [
            (f"reader-{profile}-{i}.bin", sizes.reader) for i in range(READERS)
        ]:
            synthetic(files, name, size, seed := seed + 1)
            seeds[name] = (seed, size)
        # (f) needs the same bytes on local disk: a real file, which the emulator serves from disk.
        with open(files / f"reread-{profile}.bin", "wb") as f:
            for _ in range(0, sizes.reread, 16 * MiB):
                f.write(os.urandom(16 * MiB))
            f.truncate(sizes.reread)
    bam_dir = root.joinpath(*BAM_DIR)
    bam_dir.mkdir(parents=True, exist_ok=True)
    contig_len = max(1_000_000, sizes.bam_reads * 25)
    make_bam(bam_dir / "bench.bam", sizes.bam_reads, contig_len, work)
    return {"contig_len": contig_len, "seeds": seeds}


def make_bam(path: Path, reads: int, contig_len: int, work: Path) -> None:
    """A coordinate-sorted, indexed BAM of ``reads`` 150 bp reads on one random contig.

    Written as SAM text into ``samtools view -b`` (much faster than pysam record objects) in
    position order, so no sort is needed; random bases keep it from compressing to nothing."""
    rng = random.Random(4)
    genome = "".join(rng.choice("ACGT") for _ in range(contig_len + 200))
    qual = "F" * 150
    positions = sorted(rng.randrange(1, contig_len - 150) for _ in range(reads))
    with subprocess.Popen(
        ["samtools", "view", "-b", "--no-PG", "-o", str(path), "-"], stdin=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdin is not None
        proc.stdin.write(f"@HD\tVN:1.6\tSO:coordinate\n@SQ\tSN:chr1\tLN:{contig_len}\n")
        batch = []
        for i, pos in enumerate(positions):
            seq = genome[pos - 1 : pos + 149]
            batch.append(f"r{i}\t0\tchr1\t{pos}\t60\t150M\t*\t0\t0\t{seq}\t{qual}\n")
            if len(batch) >= 10_000:
                proc.stdin.write("".join(batch))
                batch.clear()
        proc.stdin.write("".join(batch))
        proc.stdin.close()
        if proc.wait(timeout=300) != 0:
            raise RuntimeError("samtools view -b failed")
    run(["samtools", "index", str(path)], 120)


# -- read measurements -------------------------------------------------------------------------


def signed_url(em: EmulatorProcess, file_id: str) -> str:
    """Resolve the content URL the way the daemon does (token in a header, never on a command line)."""
    response = httpx.get(
        urljoin(em.url, f"v1pre3/files/{file_id}/content"),
        params={"redirect": "meta"},
        headers={"x-access-token": em.token},
        timeout=30,
    )
    response.raise_for_status()
    return urljoin(em.url, response.json()["Response"]["HrefContent"])


def curl_config(work: Path, name: str, url: str, byte_range: str | None = None) -> Path:
    path = work / f"{name}.curlrc"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f'url = "{url}"\noutput = "/dev/null"\nsilent\nfail\n')
        if byte_range:
            f.write(f'range = "{byte_range}"\n')
    return path


def curl_parallel(work: Path, url: str, size: int, parts: int = PARALLEL_RANGES) -> float:
    step = -(-size // parts)
    cfgs = [curl_config(work, f"part{i}", url, f"{a}-{min(size, a + step) - 1}") for i, a in enumerate(range(0, size, step))]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["curl", "-K", str(c)]) for c in cfgs]
    for p in procs:
        if p.wait(timeout=1800) != 0:
            raise RuntimeError("a ranged curl failed")
    return time.perf_counter() - t0


PREAD_SCRIPT = r"""
import hashlib, json, os, random, sys, time, urllib.request
path, count, size, seed, counters_url, route = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
def content_requests():
    with urllib.request.urlopen(counters_url, timeout=30) as r:
        return json.load(r)["requests"].get(route, 0)
rng = random.Random(seed)
fd = os.open(path, os.O_RDONLY)
latencies, requests, offsets, digest = [], [], [], hashlib.sha256()
for _ in range(count):
    offset = rng.randrange(0, size - %(chunk)d)
    before = content_requests()
    t0 = time.perf_counter()
    data = os.pread(fd, %(chunk)d, offset)
    latencies.append(time.perf_counter() - t0)
    requests.append(content_requests() - before)
    if len(data) != %(chunk)d:
        sys.exit(f"short read at {offset}: {len(data)}")
    offsets.append(offset)
    digest.update(data)
os.close(fd)
print(json.dumps({"latencies": latencies, "requests": requests, "offsets": offsets, "sha256": digest.hexdigest()}))
""" % {"chunk": PREAD_SIZE}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Results:
    """Every figure of every round; the tables show the median of the rounds (``--repeat``)."""

    rows: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # row -> profile -> values
    formats: dict[str, str] = field(default_factory=dict)
    peer: dict[tuple[str, str], dict[str, list[float]]] = field(default_factory=dict)  # (profile, workload) -> subject -> values
    listing: dict[str, dict[str, str]] = field(default_factory=dict)

    def put(self, row: str, profile: str, value: float, fmt: str = "{:.2f}") -> None:
        self.rows.setdefault(row, {}).setdefault(profile, []).append(value)
        self.formats[row] = fmt

    def peer_put(self, profile: str, workload: str, subject: str, value: float) -> None:
        self.peer.setdefault((profile, workload), {}).setdefault(subject, []).append(value)

    def value(self, row: str, profile: str) -> float | None:
        values = self.rows.get(row, {}).get(profile)
        return statistics.median(values) if values else None


class Subjects:
    """Fresh mounts of each kind: ours (with the bench's extra options) and the peer's.

    ``keep`` (--smoke): one mount per kind serves every row that needs no fresh one (all but the
    re-read's pair): each row still reads its own files through it and checks the bytes, without
    a daemon start (most of a smoke run's CPU) per row. ``close()`` stops them."""

    def __init__(self, em: EmulatorProcess, base: Path, extra: list[str], baseline: Path | None = None, keep: bool = False):
        self.em, self.base, self.extra, self.baseline = em, base, extra, baseline
        self.count = 0
        self.round = 0  # set by main for each --repeat round (in_turn)
        # Our daemon, then the baseline's right after it on every row (interleaved).
        self.ours = (OURS, BASELINE) if baseline is not None else (OURS,)
        self.keep = keep
        self.kept: dict[str, KeptMount] = {}

    def in_turn(self, kinds: tuple[str, ...]) -> tuple[str, ...]:
        """``kinds`` in the order of this round: each round starts one place further on. On the
        VMs we measure on, the first subject after the page cache is dropped was sometimes much
        slower than the ones after it (the same daemon measured twice: 514 against 837 MB/s in one
        round of four; docs/performance.md, "Sixth round"), so a fixed order biased every row
        against whichever subject came first, which was ours."""
        shift = self.round % len(kinds)
        return kinds[shift:] + kinds[:shift]

    def mount(self, kind: str, cache_dir: Path | None = None) -> "BenchMount | KeptMount":
        """A fresh mount (or, with ``keep``, the kind's running one); ``cache_dir``: a persistent
        cache to share with another mount (always fresh)."""
        if self.keep and cache_dir is None:
            if kind not in self.kept:
                self.kept[kind] = KeptMount(self._fresh(kind).start())
            return self.kept[kind]
        return self._fresh(kind, cache_dir)

    def close(self) -> None:
        for kept in self.kept.values():
            kept.mount.stop()
        self.kept.clear()

    def _fresh(self, kind: str, cache_dir: Path | None = None) -> BenchMount:
        self.count += 1
        mountpoint = self.base / f"mnt-{self.count}"
        if kind in PEERS:
            cache = cache_dir or self.base / f"rclone-cache-{self.count}"
            return PeerMount(self.em, mountpoint, "off" if kind == RCLONE_OFF else "full", cache)
        extra = list(self.extra) + (["--direct-io"] if kind == DIRECT else [])
        source = self.baseline if kind == BASELINE else None
        if cache_dir is not None and supports_cache_dir(source):
            extra += [f"--cache-dir={cache_dir}", "--cache-max=16"]
        return BenchMount(self.em, mountpoint, *extra, source=source)


class KeptMount:
    """A running mount used as ``with subjects.mount(kind) as m:``, left running at the end."""

    def __init__(self, mount: BenchMount):
        self.mount = mount

    def __enter__(self) -> BenchMount:
        return self.mount

    def __exit__(self, *exc: object) -> None:
        pass


def check_windows(path: Path, seed: int, size: int, rng: random.Random) -> None:
    """Compare random 1 MiB windows and the last one, read through the mount, with the source."""
    window = min(MiB, size)
    offsets = [rng.randrange(0, size - window + 1) for _ in range(CHECK_WINDOWS)] + [size - window]
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset in offsets:
            if os.pread(fd, window, offset) != synthetic_bytes(seed, offset, window):
                raise RuntimeError(f"{path}: wrong bytes at offset {offset}")
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def rate(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / MB


def bench_profile(profile: str, subjects: Subjects, base: Path, work: Path, sizes: Sizes, res: Results, info: dict, only: list[str]) -> None:
    subjects.em.set_knobs(**PROFILES[profile])
    ctx = Context(profile, subjects, base, work, sizes, res, info, random.Random(5))
    for name in only:
        if name in MEASUREMENTS:  # "merged" runs once for every profile, after them (bench_merged)
            MEASUREMENTS[name](ctx)


@dataclass
class Context:
    """What every measurement of one profile needs."""

    profile: str
    subjects: Subjects
    base: Path
    work: Path
    sizes: Sizes
    res: Results
    info: dict
    check_rng: random.Random


def _unpack(ctx: Context):
    return ctx.profile, ctx.subjects, ctx.subjects.em, ctx.base, ctx.work, ctx.sizes, ctx.res, ctx.info["seeds"], ctx.check_rng, Path(*SAMPLE_DIR)

def bench_cp(ctx: Context) -> None:
    """(a), (b): curl, then cp through each subject."""
    profile, subjects, em, base, work, sizes, res, seeds, check_rng, files = _unpack(ctx)
    cp_name = files / f"cp-{profile}.bin"
    # (a)/(b): direct downloads first (they need the file id, read from the mount's xattr).
    with subjects.mount(OURS) as m:
        file_id = os.getxattr(m.path(str(cp_name)), "user.basespace.id").decode()
    url = signed_url(em, file_id)
    note(f"{profile}: single-stream curl of {sizes.cp / GiB:.2f} GiB")
    t_single = _timed_curl_single(work, url, sizes.cp)
    note(f"{profile}: {PARALLEL_RANGES} parallel ranged curls")
    t_parallel = curl_parallel(work, url, sizes.cp)
    res.put("(a) single-stream curl, MB/s", profile, rate(sizes.cp, t_single), "{:.0f}")
    res.put("(b) 16 ranged curls, MB/s", profile, rate(sizes.cp, t_parallel), "{:.0f}")

    cp_times = {}
    for kind in subjects.in_turn((*subjects.ours, DIRECT, *PEERS)):
        note(f"{profile}: cp through {kind}")
        drop_caches()
        with subjects.mount(kind) as m:
            reset_when_quiet(em)
            cp_times[kind] = t = timed(["cp", str(m.path(str(cp_name))), "/dev/null"], 1800)
            rss = m.peak_rss()
            requests, fetched = content_counters(em, m.route)
            check_windows(m.path(str(cp_name)), *seeds[cp_name.name], check_rng)
        if fetched < sizes.cp:
            raise RuntimeError(f"{kind}: cp fetched only {fetched} of {sizes.cp} bytes: was it served from a cache?")
        res.peer_put(profile, "cold `cp`, MB/s", kind, rate(sizes.cp, t))
        res.peer_put(profile, "`cp`: peak RSS, MiB", kind, rss / MiB)
        if kind == OURS:
            res.put("cp: ranged GETs (avg MiB each)", profile, fetched / max(1, requests) / MiB, "{:.1f}")
            res.put("cp: daemon peak RSS, MiB", profile, rss / MiB, "{:.0f}")
    t_cp, t_cp_dio = cp_times[OURS], cp_times[DIRECT]
    res.put("cp through the mount, MB/s", profile, rate(sizes.cp, t_cp), "{:.0f}")
    res.put("(a) cp / single-stream", profile, t_single / t_cp)
    res.put("(b) cp / 16 ranged", profile, t_parallel / t_cp)
    res.put("cp / rclone cache off", profile, cp_times[RCLONE_OFF] / t_cp)
    res.put("cp with `--direct-io`, MB/s", profile, rate(sizes.cp, t_cp_dio), "{:.0f}")
    res.put("(a) cp `--direct-io` / single-stream", profile, t_single / t_cp_dio)
    res.put("(b) cp `--direct-io` / 16 ranged", profile, t_parallel / t_cp_dio)


def bench_readers(ctx: Context) -> None:
    """(c) concurrent readers."""
    profile, subjects, em, base, work, sizes, res, seeds, check_rng, files = _unpack(ctx)
    for kind in subjects.in_turn((*subjects.ours, *PEERS)):
        note(f"{profile}: {READERS} concurrent readers through {kind}")
        drop_caches()
        with subjects.mount(kind) as m:
            names = [files / f"reader-{profile}-{i}.bin" for i in range(READERS)]
            reset_when_quiet(em)
            t0 = time.perf_counter()
            procs = [subprocess.Popen(["cat", str(m.path(str(n)))], stdout=subprocess.DEVNULL) for n in names]
            for p in procs:
                if p.wait(timeout=1800) != 0:
                    raise RuntimeError("cat failed")
            t_readers = time.perf_counter() - t0
            rss = m.peak_rss()
            _, fetched = content_counters(em, m.route)
            for n in names:
                check_windows(m.path(str(n)), *seeds[n.name], check_rng)
        if fetched < READERS * sizes.reader:
            raise RuntimeError(f"{kind}: the readers fetched fewer bytes than they read")
        res.peer_put(profile, f"{READERS} readers, MB/s", kind, rate(READERS * sizes.reader, t_readers))
        res.peer_put(profile, f"{READERS} readers: peak RSS, MiB", kind, rss / MiB)
        if kind == OURS:
            res.put(f"(c) {READERS} readers aggregate, MB/s", profile, rate(READERS * sizes.reader, t_readers), "{:.0f}")
            single = res.value("(a) single-stream curl, MB/s", profile)
            if single:  # measured by bench_cp
                res.put(f"(c) {READERS} readers / single-stream", profile, rate(READERS * sizes.reader, t_readers) / single)
            res.put(f"(c) {READERS} readers: daemon peak RSS, MiB", profile, rss / MiB, "{:.0f}")


def bench_pread(ctx: Context) -> None:
    """(d) random 64 KiB preads."""
    profile, subjects, em, base, work, sizes, res, seeds, check_rng, files = _unpack(ctx)
    random_name = files / f"random-{profile}.bin"
    for kind in subjects.in_turn((*subjects.ours, *PEERS)):
        note(f"{profile}: {sizes.preads} random 64 KiB preads through {kind}")
        drop_caches()
        with subjects.mount(kind) as m:
            target = m.path(str(random_name))
            os.stat(target)  # the lookup's API calls are not part of the reads
            reset_when_quiet(em)
            out = subprocess.run(
                [sys.executable, "-c", PREAD_SCRIPT, str(target), str(sizes.preads), str(sizes.random), "7",
                 urljoin(em.url, "_emulator/counters"), m.route],
                capture_output=True, text=True, timeout=1800, check=True,
            )
            _, fetched = content_counters(em, m.route)
        data = json.loads(out.stdout)
        seed, size = seeds[random_name.name]
        expected = hashlib.sha256()
        for offset in data["offsets"]:
            expected.update(synthetic_bytes(seed, offset, PREAD_SIZE))
        if data["sha256"] != expected.hexdigest():
            raise RuntimeError(f"{kind}: the random reads returned wrong bytes")
        lat = [x * 1000 for x in data["latencies"]]
        res.peer_put(profile, "random 64 KiB pread, median ms", kind, statistics.median(lat))
        res.peer_put(profile, "random 64 KiB pread, bytes sent / byte read", kind, fetched / (sizes.preads * PREAD_SIZE))
        if kind == OURS:
            res.put("(d) pread 64 KiB median, ms", profile, statistics.median(lat))
            res.put("(d) pread 64 KiB p99, ms", profile, percentile(lat, 0.99))
            res.put("(d) ranged GETs per read, median", profile, statistics.median(data["requests"]), "{:.1f}")
            res.put("(d) ranged GETs per read, mean", profile, statistics.mean(data["requests"]), "{:.2f}")
            res.put("(d) bytes fetched / bytes read", profile, fetched / (sizes.preads * PREAD_SIZE))


def bench_samtools(ctx: Context) -> None:
    """(e) samtools region queries."""
    profile, subjects, em, base, work, sizes, res, seeds, check_rng, files = _unpack(ctx)
    note(f"{profile}: samtools view -c of {sizes.regions} regions")
    local_bam = base / "account" / Path(*BAM_DIR) / "bench.bam"
    rng = random.Random(11)
    contig_len = ctx.info["contig_len"]
    regions = [f"chr1:{(s := rng.randrange(1, contig_len - 5000))}-{s + rng.randrange(200, 5000)}" for _ in range(sizes.regions)]
    drop_caches()
    run(["cat", str(local_bam), str(local_bam) + ".bai"], 120, stdout=subprocess.DEVNULL)  # local copy: warm
    t_local_each, local_counts = _samtools_each(local_bam, regions)
    t_local_all = timed(["samtools", "view", "-c", str(local_bam), *regions], 300)
    each, together = {}, {}
    for kind in subjects.in_turn((*subjects.ours, *PEERS)):
        note(f"{profile}: samtools through {kind}")
        drop_caches()
        with subjects.mount(kind) as m:
            mounted = m.path(str(Path(*BAM_DIR) / "bench.bam"))
            os.stat(mounted)
            each[kind], counts = _samtools_each(mounted, regions)
        if counts != local_counts:
            raise RuntimeError(f"{kind}: samtools counts differ from the local file")
        drop_caches()
        with subjects.mount(kind) as m:
            mounted = m.path(str(Path(*BAM_DIR) / "bench.bam"))
            os.stat(mounted)
            t0 = time.perf_counter()
            out = subprocess.run(["samtools", "view", "-c", str(mounted), *regions], capture_output=True, text=True, timeout=300, check=True)
            together[kind] = time.perf_counter() - t0
        if int(out.stdout) != sum(local_counts):
            raise RuntimeError(f"{kind}: samtools count of all regions differs from the local file")
        res.peer_put(profile, f"samtools, {sizes.regions} processes, s", kind, each[kind])
        res.peer_put(profile, f"samtools, 1 process {sizes.regions} regions, s", kind, together[kind])
    res.put(f"(e) samtools, {sizes.regions} processes: mount / local", profile, each[OURS] / t_local_each)
    res.put(f"(e) samtools, {sizes.regions} processes: mount s", profile, each[OURS])
    res.put(f"(e) samtools, {sizes.regions} processes: mount / rclone full", profile, each[OURS] / each[RCLONE_FULL])
    res.put(f"(e) samtools, 1 process {sizes.regions} regions: mount / local", profile, together[OURS] / t_local_all)
    res.put(f"(e) samtools, 1 process {sizes.regions} regions: mount s", profile, together[OURS], "{:.3f}")
    res.put(f"(e) samtools, 1 process {sizes.regions} regions: mount / rclone full", profile, together[OURS] / together[RCLONE_FULL])


def bench_reread(ctx: Context) -> None:
    """(f) a second mount re-reads."""
    profile, subjects, em, base, work, sizes, res, seeds, check_rng, files = _unpack(ctx)
    # (f) A second mount re-reads a file the first one read: from the persistent cache when there
    # is one, against the same bytes read from local disk (page cache dropped before each).
    reread = files / f"reread-{profile}.bin"
    local_copy = base / "account" / reread
    local_sha = sha256_of(local_copy)
    drop_caches()
    t_local = timed(["cp", str(local_copy), "/dev/null"], 1800)
    res.put("(f) local disk read, MB/s", profile, rate(sizes.reread, t_local), "{:.0f}")

    def timed_null(source: Path | None) -> float:
        """The same cp through a null pyfuse3 file system (scripts/null_fuse.py), page cache
        dropped first: its file served from memory, or from ``source`` (then its bytes checked)."""
        subjects.count += 1
        with NullMount(subjects.base / f"mnt-{subjects.count}", sizes.reread, source) as m:
            drop_caches()
            t = timed(["cp", str(m.path("null.bin")), "/dev/null"], 1800)
            if source is not None and sha256_of(m.path("null.bin")) != local_sha:
                raise RuntimeError("null FUSE from the local file: wrong bytes")
        return t

    # The ceiling of a Python FUSE daemon here, and of one that reads a disk (one pread per read).
    t_null = timed_null(None)
    res.put("(f) null FUSE file system (ceiling), MB/s", profile, rate(sizes.reread, t_null), "{:.0f}")
    t_file = timed_null(local_copy)
    res.put("(f) null FUSE serving the local file, MB/s", profile, rate(sizes.reread, t_file), "{:.0f}")
    for kind in subjects.in_turn((*subjects.ours, RCLONE_FULL)):
        cache = subjects.base / f"reread-cache-{subjects.count}"
        with subjects.mount(kind, cache) as m:
            run(["cp", str(m.path(str(reread))), "/dev/null"], 1800)
        drop_caches()
        with subjects.mount(kind, cache) as m:
            reset_when_quiet(em)
            # The path's lookup (3 API calls for ours: tens of ms on wan, a sixth of a 256 MiB
            # re-read there) is timed apart, as in the pread and samtools rows: the local read it
            # is compared with looks nothing up remotely.
            t0 = time.perf_counter()
            os.stat(m.path(str(reread)))
            lookup = time.perf_counter() - t0
            t = timed(["cp", str(m.path(str(reread))), "/dev/null"], 1800)
            _, fetched = content_counters(em, m.route)
            if sha256_of(m.path(str(reread))) != local_sha:
                raise RuntimeError(f"{kind}: the re-read returned wrong bytes")
        res.peer_put(profile, "second-mount re-read, MB/s", kind, rate(sizes.reread, t))
        res.peer_put(profile, "second-mount re-read: the path's lookup first, ms", kind, lookup * 1000)
        res.peer_put(profile, "second-mount re-read: bytes fetched again / file", kind, fetched / sizes.reread)
        if kind == OURS:
            res.put("(f) second-mount re-read, MB/s", profile, rate(sizes.reread, t), "{:.0f}")
            res.put("(f) second-mount re-read: the path's lookup first, ms", profile, lookup * 1000, "{:.1f}")
            res.put("(f) re-read / local disk", profile, t_local / t)
            res.put("(f) re-read / null FUSE ceiling", profile, t_null / t)
            res.put("(f) re-read / null FUSE serving the local file", profile, t_file / t)


MEASUREMENTS = {"cp": bench_cp, "readers": bench_readers, "pread": bench_pread, "samtools": bench_samtools, "reread": bench_reread}



@functools.cache
def supports_cache_dir(source: Path | None = None) -> bool:
    """Whether the daemon (ours, or that of checkout ``source``) has a persistent content cache
    (the re-read row then gives it one)."""
    if source is None:  # this checkout: its own parser, without starting another Python
        from basemount_py.cli import build_parser

        return hasattr(build_parser().parse_args(["mount", "MP"]), "cache_max")
    env = {**os.environ, "PYTHONPATH": str(source)}
    usage = subprocess.run([sys.executable, "-m", "basemount_py", "mount", "--help"], capture_output=True, text=True, cwd=source, env=env)
    return "--cache-max" in usage.stdout


def _timed_curl_single(work: Path, url: str, size: int) -> float:
    cfg = curl_config(work, "single", url)
    t0 = time.perf_counter()
    out = subprocess.run(["curl", "-K", str(cfg), "-w", "%{size_download}"], capture_output=True, text=True, timeout=1800, check=True)
    elapsed = time.perf_counter() - t0
    if int(float(out.stdout.strip())) != size:
        raise RuntimeError(f"curl fetched {out.stdout.strip()} of {size} bytes")
    return elapsed


def _samtools_each(bam: Path, regions: list[str]) -> tuple[float, list[int]]:
    counts = []
    t0 = time.perf_counter()
    for region in regions:
        out = subprocess.run(["samtools", "view", "-c", str(bam), region], capture_output=True, text=True, timeout=120, check=True)
        counts.append(int(out.stdout))
    return time.perf_counter() - t0, counts


# -- listing figures (issue 3) -----------------------------------------------------------------


def bench_listing(base: Path, samples: int, res: Results, extra: list[str], demo: Path | None = None, keep: bool = False) -> None:
    """``demo``: an existing demo account folder (read only), else one is generated. ``keep``
    (--smoke): one emulator and one mount per account serve both columns, the latency set for
    each and the mount's listings expired (``refresh``) before the second, so that it lists
    through the API again, instead of a fresh emulator and mount per column."""
    from basemount_py.emulator.demo_data import generate_demo_account

    cohort = base / "listing-account"
    for i in range(samples):
        (cohort / "Projects" / "Cohort" / "Samples" / f"S{i:05d}").mkdir(parents=True)
    if demo is None:
        demo = base / "demo-account"
        generate_demo_account(demo)
    kept: dict[Path, tuple[EmulatorProcess, BenchMount]] | None = {} if keep else None
    try:
        for latency in (0, 20):
            column = f"{latency} ms"
            with _listing_mount(cohort, "ls", latency, base, extra, kept) as (em, m):
                em.reset_counters()
                t = timed(["ls", "-l", str(m.path("Projects", "Cohort", "Samples"))], 300)
                calls = api_calls(em)
            res.listing.setdefault(f"`ls -l` {samples}-sample project: wall s", {})[column] = f"{t:.2f}"
            res.listing.setdefault(f"`ls -l` {samples}-sample project: API calls", {})[column] = str(calls)
            with _listing_mount(demo, "find", latency, base, extra, kept) as (em, m):
                em.reset_counters()
                t0 = time.perf_counter()
                out = subprocess.run(["find", str(m.mountpoint)], capture_output=True, timeout=600, check=True)
                t = time.perf_counter() - t0
                calls = api_calls(em)
            entries = out.stdout.count(b"\n")
            res.listing.setdefault("`find MP` demo account: wall s", {})[column] = f"{t:.2f}"
            res.listing.setdefault("`find MP` demo account: API calls", {})[column] = str(calls)
            res.listing.setdefault("`find MP` demo account: entries", {})[column] = str(entries)
    finally:
        for em, m in (kept or {}).values():
            m.stop()
            em.close()


@contextlib.contextmanager
def _listing_mount(account: Path, name: str, latency: int, base: Path, extra: list[str],
                   kept: dict[Path, tuple[EmulatorProcess, BenchMount]] | None):
    """An emulator of ``account`` at ``latency`` ms and a fresh mount of it; or (``kept``) the
    account's running pair, set to that latency, with the mount's listings expired."""
    if kept is None:
        with EmulatorProcess(account, latency_ms=latency) as em, BenchMount(em, base / f"mnt-{name}-{latency}", *extra) as m:
            yield em, m
        return
    if account in kept:
        em, m = kept[account]
        (m.path(".commands")).write_text("refresh\n")  # the whole mount: its next listings ask the API
    else:
        em = EmulatorProcess(account).start()
        kept[account] = (em, BenchMount(em, base / f"mnt-{name}", *extra))
        em, m = kept[account][0], kept[account][1].start()
    em.set_knobs(latency_ms=latency)
    yield em, m


# -- merged biosample FASTQs (issue 12) ---------------------------------------------------------

MERGED_LANES = 2  # per dataset; two datasets (runs): R1 is the concatenation of four parts


def bench_merged(profiles: list[str], base: Path, size: int, res: Results, extra: list[str]) -> None:
    """(g) ``cp`` of ``BioSamples/<b>/Merged/<b>_R1.fastq.gz`` (four parts: two runs, two lanes)
    vs ``cp`` of one file of the same size, on the same mount, per profile.

    Its own account (synthetic parts: the bytes need not be gzip to measure the read path), so
    the function is self-contained. The merged file always bypasses the page cache (core.py), the
    single file uses it as any BaseSpace file does on a default mount."""
    account = base / "merged-account"
    part = size // (2 * MERGED_LANES)
    fastq_type = {"Id": "illumina.fastq.v1.8", "Name": "Illumina Fastq", "ConformsToIds": ["common.files", "common.fastq"]}
    (account / "BioSamples" / "Bench").mkdir(parents=True)
    seed = 900
    for run in (1, 2):
        dataset = account / "Projects" / "Bench" / "Datasets" / f"Run{run}"
        dataset.mkdir(parents=True)
        (dataset / ".entity.json").write_text(json.dumps(
            {"Name": f"Run{run}", "BioSample": "Bench", "DatasetType": fastq_type, "DateCreated": f"2024-01-0{run}T00:00:00.0000000Z"}))
        for lane in range(1, MERGED_LANES + 1):
            for read in (1, 2):
                synthetic(dataset / "Files", f"Bench_S1_L{lane:03d}_R{read}_001.fastq.gz", part, seed := seed + 1)
    for profile in profiles:
        synthetic(account.joinpath(*SAMPLE_DIR), f"single-{profile}.bin", part * 2 * MERGED_LANES, seed := seed + 1)
    with EmulatorProcess(account) as em:
        for profile in profiles:
            em.set_knobs(**PROFILES[profile])
            note(f"{profile}: cp of a merged FASTQ vs one file of the same size")
            drop_caches()
            with BenchMount(em, base / f"mnt-{profile}-merged", *extra) as m:
                merged = m.path("BioSamples", "Bench", "Merged", "Bench_R1.fastq.gz")
                single = m.path(*SAMPLE_DIR, f"single-{profile}.bin")
                if os.stat(merged).st_size != os.stat(single).st_size:
                    raise RuntimeError("the merged file and the single file differ in size")
                em.reset_counters()
                t_merged = timed(["cp", str(merged), "/dev/null"], 1800)
                _, fetched = content_counters(em)
                t_single = timed(["cp", str(single), "/dev/null"], 1800)
            if fetched < part * 2 * MERGED_LANES:
                raise RuntimeError(f"cp of the merged file fetched only {fetched} bytes")
            total = part * 2 * MERGED_LANES
            res.put("(g) cp merged FASTQ (4 parts), MB/s", profile, total / t_merged / MB, "{:.0f}")
            res.put("(g) cp one file of the same size, MB/s", profile, total / t_single / MB, "{:.0f}")
            res.put("(g) merged / single file", profile, t_single / t_merged)


# -- output ------------------------------------------------------------------------------------

TARGETS = {
    "(a) cp / single-stream": ("lan ≥ 0.7, wan ≥ 3", {"lan": (">=", 0.7), "wan": (">=", 3.0)}),
    "(b) cp / 16 ranged": ("wan ≥ 0.8", {"wan": (">=", 0.8)}),
    "cp / rclone cache off": ("lan ≥ 1", {"lan": (">=", 1.0)}),
    "(a) cp `--direct-io` / single-stream": ("lan ≥ 0.7, wan ≥ 3", {"lan": (">=", 0.7), "wan": (">=", 3.0)}),
    "(b) cp `--direct-io` / 16 ranged": ("wan ≥ 0.8", {"wan": (">=", 0.8)}),
    f"(c) {READERS} readers: daemon peak RSS, MiB": ("≤ 300", {"lan": ("<=", 300), "wan": ("<=", 300)}),
    "(d) ranged GETs per read, median": ("wan ≤ 2", {"wan": ("<=", 2)}),
    "(d) bytes fetched / bytes read": ("wan ≤ 4", {"wan": ("<=", 4)}),
    f"(e) samtools, {REGIONS} processes: mount / local": ("lan ≤ 3, wan ≤ 3.3", {"lan": ("<=", 3), "wan": ("<=", 3.3)}),
    f"(e) samtools, {REGIONS} processes: mount / rclone full": ("wan ≤ 1", {"wan": ("<=", 1)}),
    f"(e) samtools, 1 process {REGIONS} regions: mount / local": ("lan ≤ 3", {"lan": ("<=", 3)}),
    f"(e) samtools, 1 process {REGIONS} regions: mount / rclone full": ("wan ≤ 1", {"wan": ("<=", 1)}),
    "(f) re-read / local disk": ("≥ 0.8", {"lan": (">=", 0.8), "wan": (">=", 0.8)}),
}
SUBJECTS = (OURS, DIRECT, RCLONE_OFF, RCLONE_FULL)


def markdown(res: Results, profiles: list[str], header: str) -> str:
    lines = [header, "", "| Measure | " + " | ".join(profiles) + " | Target |", "|---|" + "---:|" * len(profiles) + "---|"]
    for row in res.rows:
        target, checks = TARGETS.get(row, ("", {}))
        cells = []
        for p in profiles:
            value = res.value(row, p)
            if value is None:
                cells.append("–")
                continue
            text = res.formats[row].format(value)
            if p in checks:
                op, bound = checks[p]
                ok = value >= bound if op == ">=" else value <= bound
                text += " ✓" if ok else " ✗"
            cells.append(text)
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {target} |")
    if res.peer:
        lines += ["", peer_table(res, profiles)]
    if res.listing:
        lines += ["", "| Listing (issue 3) | 0 ms | 20 ms |", "|---|---:|---:|"]
        for row, values in res.listing.items():
            lines.append(f"| {row} | {values.get('0 ms', '–')} | {values.get('20 ms', '–')} |")
    return "\n".join(lines) + "\n"


def peer_table(res: Results, profiles: list[str]) -> str:
    """basemount_py beside rclone (and the --baseline checkout, when measured); "ahead ×" > 1
    means basemount_py is better on that row."""
    baseline = any(BASELINE in by_subject for by_subject in res.peer.values())
    subjects = SUBJECTS + ((BASELINE,) if baseline else ())
    others = PEERS + ((BASELINE,) if baseline else ())
    lines = [
        "| Workload | " + " | ".join(subjects) + " | ahead of rclone off, × | ahead of rclone full, × |"
        + (" ahead of baseline, × |" if baseline else ""),
        "|---|" + "---:|" * (len(subjects) + len(others)),
    ]
    for profile in profiles:
        for (p, workload), by_subject in res.peer.items():
            if p != profile:
                continue
            medians = {k: statistics.median(v) for k, v in by_subject.items()}
            cells = [_figure(medians[k]) if k in medians else "–" for k in subjects]
            more_is_better = workload.endswith("MB/s")
            for peer in others:
                ours, theirs = medians.get(OURS), medians.get(peer)
                if ours is None or theirs is None:
                    cells.append("–")
                elif (ours if more_is_better else theirs) == 0:
                    cells.append("1.00" if (theirs if more_is_better else ours) == 0 else "∞")  # both 0: even
                elif more_is_better:
                    cells.append(f"{ours / theirs:.2f}")
                else:
                    cells.append("∞" if ours == 0 else f"{theirs / ours:.2f}")
            lines.append(f"| {profile} {workload} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _figure(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=["lan", "wan", "both"], default="both")
    parser.add_argument("--size", type=float, default=2.0, metavar="GiB", help="size of the cp file (default 2)")
    parser.add_argument("--quick", action="store_true", help="small sizes: quick figures of every row")
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny sizes, {SMOKE_REGIONS} samtools regions, {SMOKE_PREADS} preads: every row runs "
                        "(and its bytes are checked), its figures mean little")
    parser.add_argument("--out", metavar="FILE", help="also write the Markdown table here")
    parser.add_argument("--no-listing", action="store_true", help="skip the listing figures")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    parser.add_argument("--only", default=",".join([*MEASUREMENTS, "merged"]), metavar="LIST",
                        help=f"comma-separated measurements to run (default: {','.join([*MEASUREMENTS, 'merged'])})")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="interleave N rounds; tables show medians")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also measure the daemon of this checkout (e.g. `git worktree add DIR main`) on every row")
    parser.add_argument("--demo-account", type=Path, metavar="DIR",
                        help="the demo account folder for the find figures (basemount-py demo-data DIR), instead of generating one")
    parser.add_argument("--mount-option", action="append", default=[], metavar="OPT",
                        help="extra option for basemount-py mount, e.g. --mount-option=--cache-size=128")
    args = parser.parse_args(argv)
    if args.size <= 0:
        parser.error("--size must be > 0")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.demo_account is not None and not (args.demo_account / "account.json").is_file():
        parser.error(f"--demo-account: {args.demo_account} is not a demo account folder (basemount-py demo-data DIR makes one)")
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "basemount_py" / "__init__.py").is_file():
            parser.error(f"--baseline: {args.baseline} is not a basemount_py checkout")
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in only if name not in MEASUREMENTS and name != "merged"]
    if unknown:
        parser.error(f"--only: unknown measurement {unknown[0]!r} (known: {', '.join(MEASUREMENTS)}, merged)")
    for tool in ("curl", "samtools", "cp", "cat", "fusermount3", "rclone"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not installed (run scripts/setup)", file=sys.stderr)
            return 1
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        print("bench: /dev/fuse is not usable here", file=sys.stderr)
        return 1
    profiles = ["lan", "wan"] if args.profile == "both" else [args.profile]
    sizes = sizes_for(args)
    global DROP_PAGE_CACHE
    DROP_PAGE_CACHE = not args.smoke
    base = Path(tempfile.mkdtemp(prefix="basemount-bench-"))
    work = base / "work"
    work.mkdir()
    res = Results()
    started = time.perf_counter()
    load_before = os.getloadavg()
    reported_before = reported_to_host_kib()
    try:
        note(f"building the account in {base}")
        info = build_account(base / "account", sizes, profiles, work)
        with EmulatorProcess(base / "account") as em:
            subjects = Subjects(em, base, args.mount_option, args.baseline, keep=args.smoke)
            try:
                for round_ in range(args.repeat):
                    subjects.round = round_
                    for profile in profiles:
                        note(f"round {round_ + 1} of {args.repeat}: {profile}")
                        bench_profile(profile, subjects, base, work, sizes, res, info, only)
            finally:
                subjects.close()
        if "merged" in only:
            bench_merged(profiles, base, READERS // 2 * sizes.reader, res, args.mount_option)
        if not args.no_listing:
            note("listing figures")
            bench_listing(base, sizes.samples, res, args.mount_option, args.demo_account, keep=args.smoke)
    finally:
        if args.keep:
            note(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    header = (
        f"basemount_py benchmark — cp file {sizes.cp / GiB:.2f} GiB, {READERS} readers × {sizes.reader / MiB:.0f} MiB, "
        f"{os.cpu_count()} CPUs, page cache {'dropped' if os.geteuid() == 0 and DROP_PAGE_CACHE else 'NOT dropped (not root, or --smoke; distinct files)'} "
        f"between runs, {args.repeat} round(s) (medians), {time.perf_counter() - started:.0f} s; "
        f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    reported_after = reported_to_host_kib()
    if reported_before is not None and reported_after is not None:
        header += f"; freed memory reported to the VM's host during the run: {(reported_after - reported_before) / 2**20:.1f} GiB{page_reporting_delay()}"
    text = markdown(res, profiles, header)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
