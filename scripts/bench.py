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

Listing figures: ``ls -l`` of a 5,000-sample project and ``find MP | wc -l`` of the demo account at
0 and 20 ms emulator latency (wall time and API calls from the emulator's counters).

Secrets: the emulator token travels in the mount's environment and an ``x-access-token`` header
from this process; ``curl`` gets the signed URL (which needs no token) from a 0600 config file
(``curl -K``), so neither appears on a command line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import httpx

from basemount_py.emulator.control import EmulatorProcess
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
PARALLEL_RANGES = 16


def note(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- environment helpers ---------------------------------------------------------------------


def drop_caches() -> bool:
    """Empty the kernel page cache (root only) so no read below is served from memory."""
    if os.geteuid() != 0:
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

    def __init__(self, emulator: EmulatorProcess, mountpoint: Path, *extra: str):
        super().__init__(
            mountpoint,
            *extra,
            api_server=emulator.url,
            access_token=emulator.token,
            env={"HOME": str(mountpoint.parent / "home")},
        )

    def peak_rss(self) -> int:
        """The daemon's VmHWM (peak resident set) in bytes."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc status")

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)


def run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, timeout=timeout, check=True, **kw)


def timed(cmd: list[str], timeout: float, **kw) -> float:
    t0 = time.perf_counter()
    run(cmd, timeout, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t0


def content_counters(em: EmulatorProcess) -> tuple[int, int]:
    c = em.counters()
    return c["requests"].get("GET content", 0), c.get("content_bytes", 0)


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


def sizes_for(args: argparse.Namespace) -> Sizes:
    if args.quick:
        return Sizes(cp=96 * MiB, reader=16 * MiB, random=256 * MiB, bam_reads=40_000, samples=500)
    total = int(args.size * GiB)
    return Sizes(cp=total, reader=max(16 * MiB, total // 4), random=max(total, GiB), bam_reads=400_000, samples=5000)


def synthetic(folder: Path, name: str, size: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.synthetic.json").write_text(json.dumps({"size": size, "seed": seed}))


def build_account(root: Path, sizes: Sizes, profiles: list[str], work: Path) -> dict:
    files = root.joinpath(*SAMPLE_DIR)
    seed = 100
    for profile in profiles:
        synthetic(files, f"cp-{profile}.bin", sizes.cp, seed := seed + 1)
        synthetic(files, f"random-{profile}.bin", sizes.random, seed := seed + 1)
        for i in range(READERS):
            synthetic(files, f"reader-{profile}-{i}.bin", sizes.reader, seed := seed + 1)
    bam_dir = root.joinpath(*BAM_DIR)
    bam_dir.mkdir(parents=True, exist_ok=True)
    contig_len = max(1_000_000, sizes.bam_reads * 25)
    make_bam(bam_dir / "bench.bam", sizes.bam_reads, contig_len, work)
    return {"contig_len": contig_len}


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
import json, os, random, sys, time, urllib.request
path, count, size, seed, counters_url = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def content_requests():
    with urllib.request.urlopen(counters_url, timeout=30) as r:
        return json.load(r)["requests"].get("GET content", 0)
rng = random.Random(seed)
fd = os.open(path, os.O_RDONLY)
latencies, requests = [], []
for _ in range(count):
    offset = rng.randrange(0, size - %(chunk)d)
    before = content_requests()
    t0 = time.perf_counter()
    data = os.pread(fd, %(chunk)d, offset)
    latencies.append(time.perf_counter() - t0)
    requests.append(content_requests() - before)
    if len(data) != %(chunk)d:
        sys.exit(f"short read at {offset}: {len(data)}")
os.close(fd)
print(json.dumps({"latencies": latencies, "requests": requests}))
""" % {"chunk": PREAD_SIZE}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Results:
    rows: dict[str, dict[str, str]] = field(default_factory=dict)  # row -> profile -> text
    listing: dict[str, dict[str, str]] = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    def put(self, row: str, profile: str, value: float, fmt: str = "{:.2f}") -> None:
        self.rows.setdefault(row, {})[profile] = fmt.format(value)
        self.raw.setdefault(profile, {})[row] = value


def bench_profile(profile: str, em: EmulatorProcess, base: Path, work: Path, sizes: Sizes, res: Results, extra: list[str], contig_len: int) -> None:
    em.set_knobs(**PROFILES[profile])
    files = Path(*SAMPLE_DIR)
    cp_name = files / f"cp-{profile}.bin"

    # (a)/(b): direct downloads first (they need the file id, read from the mount's xattr).
    with BenchMount(em, base / f"mnt-{profile}-id", *extra) as m:
        file_id = os.getxattr(m.path(str(cp_name)), "user.basespace.id").decode()
    url = signed_url(em, file_id)
    note(f"{profile}: single-stream curl of {sizes.cp / GiB:.2f} GiB")
    t_single = _timed_curl_single(work, url, sizes.cp)
    note(f"{profile}: {PARALLEL_RANGES} parallel ranged curls")
    t_parallel = curl_parallel(work, url, sizes.cp)

    note(f"{profile}: cp through the mount")
    drop_caches()
    with BenchMount(em, base / f"mnt-{profile}-cp", *extra) as m:
        em.reset_counters()
        t_cp = timed(["cp", str(m.path(str(cp_name))), "/dev/null"], 1800)
        cp_rss = m.peak_rss()
        requests, fetched = content_counters(em)
    if fetched < sizes.cp:
        raise RuntimeError(f"cp fetched only {fetched} of {sizes.cp} bytes: was it served from a cache?")

    note(f"{profile}: cp through a --direct-io mount")
    drop_caches()
    with BenchMount(em, base / f"mnt-{profile}-cp-dio", *extra, "--direct-io") as m:
        em.reset_counters()
        t_cp_dio = timed(["cp", str(m.path(str(cp_name))), "/dev/null"], 1800)
        _, fetched_dio = content_counters(em)
    if fetched_dio < sizes.cp:
        raise RuntimeError(f"cp --direct-io fetched only {fetched_dio} of {sizes.cp} bytes")
    rate = lambda n, t: n / t / MB  # noqa: E731
    res.put("(a) single-stream curl, MB/s", profile, rate(sizes.cp, t_single), "{:.0f}")
    res.put("(b) 16 ranged curls, MB/s", profile, rate(sizes.cp, t_parallel), "{:.0f}")
    res.put("cp through the mount, MB/s", profile, rate(sizes.cp, t_cp), "{:.0f}")
    res.put("(a) cp / single-stream", profile, t_single / t_cp)
    res.put("(b) cp / 16 ranged", profile, t_parallel / t_cp)
    res.put("cp with `--direct-io`, MB/s", profile, rate(sizes.cp, t_cp_dio), "{:.0f}")
    res.put("(a) cp `--direct-io` / single-stream", profile, t_single / t_cp_dio)
    res.put("(b) cp `--direct-io` / 16 ranged", profile, t_parallel / t_cp_dio)
    res.put("cp: ranged GETs (avg MiB each)", profile, fetched / max(1, requests) / MiB, "{:.1f}")
    res.put("cp: daemon peak RSS, MiB", profile, cp_rss / MiB, "{:.0f}")

    note(f"{profile}: {READERS} concurrent readers")
    drop_caches()
    with BenchMount(em, base / f"mnt-{profile}-readers", *extra) as m:
        paths = [m.path(str(files / f"reader-{profile}-{i}.bin")) for i in range(READERS)]
        em.reset_counters()
        t0 = time.perf_counter()
        procs = [subprocess.Popen(["cat", str(p)], stdout=subprocess.DEVNULL) for p in paths]
        for p in procs:
            if p.wait(timeout=1800) != 0:
                raise RuntimeError("cat failed")
        t_readers = time.perf_counter() - t0
        rss = m.peak_rss()
        _, fetched = content_counters(em)
    if fetched < READERS * sizes.reader:
        raise RuntimeError("the readers fetched fewer bytes than they read")
    res.put(f"(c) {READERS} readers aggregate, MB/s", profile, rate(READERS * sizes.reader, t_readers), "{:.0f}")
    res.put(f"(c) {READERS} readers / single-stream", profile, rate(READERS * sizes.reader, t_readers) / rate(sizes.cp, t_single))
    res.put(f"(c) {READERS} readers: daemon peak RSS, MiB", profile, rss / MiB, "{:.0f}")

    note(f"{profile}: {PREADS} random 64 KiB preads")
    drop_caches()
    with BenchMount(em, base / f"mnt-{profile}-pread", *extra) as m:
        target = m.path(str(files / f"random-{profile}.bin"))
        os.stat(target)  # the lookup's API calls are not part of the reads
        em.reset_counters()
        out = subprocess.run(
            [sys.executable, "-c", PREAD_SCRIPT, str(target), str(PREADS), str(sizes.random), "7", urljoin(em.url, "_emulator/counters")],
            capture_output=True, text=True, timeout=1800, check=True,
        )
        _, fetched = content_counters(em)
    data = json.loads(out.stdout)
    lat = [x * 1000 for x in data["latencies"]]
    res.put("(d) pread 64 KiB median, ms", profile, statistics.median(lat))
    res.put("(d) pread 64 KiB p99, ms", profile, percentile(lat, 0.99))
    res.put("(d) ranged GETs per read, median", profile, statistics.median(data["requests"]), "{:.1f}")
    res.put("(d) ranged GETs per read, mean", profile, statistics.mean(data["requests"]), "{:.2f}")
    res.put("(d) bytes fetched / bytes read", profile, fetched / (PREADS * PREAD_SIZE))

    note(f"{profile}: samtools view -c of {REGIONS} regions")
    local_bam = base / "account" / Path(*BAM_DIR) / "bench.bam"
    rng = random.Random(11)
    regions = [f"chr1:{(s := rng.randrange(1, contig_len - 5000))}-{s + rng.randrange(200, 5000)}" for _ in range(REGIONS)]
    drop_caches()
    run(["cat", str(local_bam), str(local_bam) + ".bai"], 120, stdout=subprocess.DEVNULL)  # local copy: warm
    t_local_each, local_counts = _samtools_each(local_bam, regions)
    t_local_all = timed(["samtools", "view", "-c", str(local_bam), *regions], 300)
    with BenchMount(em, base / f"mnt-{profile}-bam-each", *extra) as m:
        mounted = m.path(str(Path(*BAM_DIR) / "bench.bam"))
        os.stat(mounted)
        t_mount_each, mount_counts = _samtools_each(mounted, regions)
    with BenchMount(em, base / f"mnt-{profile}-bam-all", *extra) as m:
        mounted = m.path(str(Path(*BAM_DIR) / "bench.bam"))
        os.stat(mounted)
        t_mount_all = timed(["samtools", "view", "-c", str(mounted), *regions], 300)
    if mount_counts != local_counts:
        raise RuntimeError("samtools counts through the mount differ from the local file")
    res.put(f"(e) samtools, {REGIONS} processes: mount / local", profile, t_mount_each / t_local_each)
    res.put(f"(e) samtools, {REGIONS} processes: mount s", profile, t_mount_each)
    res.put(f"(e) samtools, 1 process {REGIONS} regions: mount / local", profile, t_mount_all / t_local_all)
    res.put(f"(e) samtools, 1 process {REGIONS} regions: mount s", profile, t_mount_all, "{:.3f}")


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


def bench_listing(base: Path, samples: int, res: Results, extra: list[str]) -> None:
    from basemount_py.emulator.demo_data import generate_demo_account

    cohort = base / "listing-account"
    for i in range(samples):
        (cohort / "Projects" / "Cohort" / "Samples" / f"S{i:05d}").mkdir(parents=True)
    demo = base / "demo-account"
    generate_demo_account(demo)
    for latency in (0, 20):
        column = f"{latency} ms"
        with EmulatorProcess(cohort, latency_ms=latency) as em:
            with BenchMount(em, base / f"mnt-ls-{latency}", *extra) as m:
                em.reset_counters()
                t = timed(["ls", "-l", str(m.path("Projects", "Cohort", "Samples"))], 300)
                calls = api_calls(em)
            res.listing.setdefault(f"`ls -l` {samples}-sample project: wall s", {})[column] = f"{t:.2f}"
            res.listing.setdefault(f"`ls -l` {samples}-sample project: API calls", {})[column] = str(calls)
        with EmulatorProcess(demo, latency_ms=latency) as em:
            with BenchMount(em, base / f"mnt-find-{latency}", *extra) as m:
                em.reset_counters()
                t0 = time.perf_counter()
                out = subprocess.run(["find", str(m.mountpoint)], capture_output=True, timeout=600, check=True)
                t = time.perf_counter() - t0
                calls = api_calls(em)
            entries = out.stdout.count(b"\n")
            res.listing.setdefault("`find MP` demo account: wall s", {})[column] = f"{t:.2f}"
            res.listing.setdefault("`find MP` demo account: API calls", {})[column] = str(calls)
            res.listing.setdefault("`find MP` demo account: entries", {})[column] = str(entries)


# -- output ------------------------------------------------------------------------------------

TARGETS = {
    "(a) cp / single-stream": ("lan ≥ 0.7, wan ≥ 3", {"lan": (">=", 0.7), "wan": (">=", 3.0)}),
    "(b) cp / 16 ranged": ("wan ≥ 0.8", {"wan": (">=", 0.8)}),
    "(a) cp `--direct-io` / single-stream": ("lan ≥ 0.7, wan ≥ 3", {"lan": (">=", 0.7), "wan": (">=", 3.0)}),
    "(b) cp `--direct-io` / 16 ranged": ("wan ≥ 0.8", {"wan": (">=", 0.8)}),
    f"(c) {READERS} readers: daemon peak RSS, MiB": ("≤ 300", {"lan": ("<=", 300), "wan": ("<=", 300)}),
    "(d) ranged GETs per read, median": ("wan ≤ 2", {"wan": ("<=", 2)}),
    "(d) bytes fetched / bytes read": ("wan ≤ 4", {"wan": ("<=", 4)}),
    f"(e) samtools, {REGIONS} processes: mount / local": ("lan ≤ 3", {"lan": ("<=", 3)}),
    f"(e) samtools, 1 process {REGIONS} regions: mount / local": ("lan ≤ 3", {"lan": ("<=", 3)}),
}


def markdown(res: Results, profiles: list[str], header: str) -> str:
    lines = [header, "", "| Measure | " + " | ".join(profiles) + " | Target |", "|---|" + "---:|" * len(profiles) + "---|"]
    for row, values in res.rows.items():
        target, checks = TARGETS.get(row, ("", {}))
        cells = []
        for p in profiles:
            text = values.get(p, "–")
            if p in checks and p in res.raw and row in res.raw[p]:
                op, bound = checks[p]
                ok = res.raw[p][row] >= bound if op == ">=" else res.raw[p][row] <= bound
                text += " ✓" if ok else " ✗"
            cells.append(text)
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {target} |")
    if res.listing:
        lines += ["", "| Listing (issue 3) | 0 ms | 20 ms |", "|---|---:|---:|"]
        for row, values in res.listing.items():
            lines.append(f"| {row} | {values.get('0 ms', '–')} | {values.get('20 ms', '–')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=["lan", "wan", "both"], default="both")
    parser.add_argument("--size", type=float, default=2.0, metavar="GiB", help="size of the cp file (default 2)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every row")
    parser.add_argument("--out", metavar="FILE", help="also write the Markdown table here")
    parser.add_argument("--no-listing", action="store_true", help="skip the listing figures")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    parser.add_argument("--mount-option", action="append", default=[], metavar="OPT",
                        help="extra option for basemount-py mount, e.g. --mount-option=--cache-size=128")
    args = parser.parse_args(argv)
    if args.size <= 0:
        parser.error("--size must be > 0")
    for tool in ("curl", "samtools", "cp", "cat", "fusermount3"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not installed (run scripts/setup)", file=sys.stderr)
            return 1
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        print("bench: /dev/fuse is not usable here", file=sys.stderr)
        return 1
    profiles = ["lan", "wan"] if args.profile == "both" else [args.profile]
    sizes = sizes_for(args)
    base = Path(tempfile.mkdtemp(prefix="basemount-bench-"))
    work = base / "work"
    work.mkdir()
    res = Results()
    started = time.perf_counter()
    try:
        note(f"building the account in {base}")
        info = build_account(base / "account", sizes, profiles, work)
        with EmulatorProcess(base / "account") as em:
            for profile in profiles:
                bench_profile(profile, em, base, work, sizes, res, args.mount_option, info["contig_len"])
        if not args.no_listing:
            note("listing figures")
            bench_listing(base, sizes.samples, res, args.mount_option)
    finally:
        if args.keep:
            note(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    header = (
        f"basemount_py benchmark — cp file {sizes.cp / GiB:.2f} GiB, {READERS} readers × {sizes.reader / MiB:.0f} MiB, "
        f"{os.cpu_count()} CPUs, page cache {'dropped' if os.geteuid() == 0 else 'NOT dropped (not root; distinct files)'} "
        f"between runs, {time.perf_counter() - started:.0f} s"
    )
    text = markdown(res, profiles, header)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
