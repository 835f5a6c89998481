"""The soak: 16 processes mixing ls, stat, sequential and random reads over a large synthetic tree,
and writer processes copying files into an app result, through a real mount, with the emulator
injecting faults. Shared by ``tests/test_soak.py`` (a short
CI run) and ``scripts/soak`` (the long run that prints the figures for docs/reliability.md).

Why processes, not threads: each worker is a separate client of the kernel, as pipelines are, and a
worker stuck in an uninterruptible FUSE call cannot freeze the others or the monitor. Every worker
checks every byte it reads against ``synthetic_bytes`` (the emulator computes the same function),
times every operation, and prints one JSON summary. The parent samples the daemon's RSS, open fds
and sockets from ``/proc`` while the workers run, and counts a worker that has not reported by the
deadline plus a grace period as hung.

Usage as a module: ``run_soak(workdir, duration=…, workers=16)`` returns a ``SoakResult``.
Usage from the shell: ``scripts/soak [--seconds 120] [--workers 16] [--no-faults] [--json F]``.
Usage as a worker (internal): ``python soak.py worker|writer MANIFEST SEED DEADLINE``.

Writers create files of known (synthetic) bytes in ``Projects/Proj0/AppResults/Soak/Files/``, in
three ways: plain sequential writes, rsync's pattern (a temp name, then ``rename``) and sparse
(``ftruncate`` to the size first, then the parts written in random order). After the deadline
the parent flushes the upload spool, waits for it to drain (faults still on), and then checks
every written file on the server through the API: a file missing is *lost*, a file with other
bytes is *wrong*.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

MiB = 1 << 20

# Faults during the soak: every kind, at rates where retries usually win (so the run measures
# correctness under churn, not a dead server). Stalls last longer than the mount's stall timeout.
SOAK_FAULTS = dict(
    error_rate=0.03,
    throttle_rate=0.01,
    retry_after=0.2,
    reset_rate=0.01,
    truncate_rate=0.01,
    stall_rate=0.003,
    stall_seconds=15.0,
    fault_scope="all",
    fault_seed=1234,
)
SOAK_OP_TIMEOUT = 30.0  # -> retry deadline 22.5 s, stall timeout 7.5 s (mount.timeouts_for)


# -- the account --------------------------------------------------------------------------------


def build_account(root: Path, projects: int = 3, samples: int = 6, empty_samples: int = 400) -> dict:
    """A largish synthetic tree (no disk space: bytes are computed). Returns the manifest:
    ``{"files": {relative mount path: [seed, size]}, "dirs": [relative mount paths]}``."""
    sizes = [0, 1, 4095, 65536, 65537, 300_000, 1 * MiB + 17, 3 * MiB, 8 * MiB + 5, 24 * MiB + 3]
    files: dict[str, list[int]] = {}
    dirs: list[str] = ["Projects"]
    seed = 100
    for p in range(projects):
        pname = f"Proj{p}"
        sroot = root / "Projects" / pname / "Samples"
        dirs += [f"Projects/{pname}", f"Projects/{pname}/Samples"]
        for s in range(samples):
            sname = f"S{p}-{s}"
            fdir = sroot / sname / "Files"
            fdir.mkdir(parents=True, exist_ok=True)
            dirs += [f"Projects/{pname}/Samples/{sname}", f"Projects/{pname}/Samples/{sname}/Files"]
            for i, size in enumerate(sizes):
                if (i + s) % 3 == 0 and size > 4 * MiB:
                    continue  # not every sample has every big file: ~100 files, ~600 MiB in all
                seed += 1
                name = f"f{i}_{size}.bin"
                (fdir / f"{name}.synthetic.json").write_text(json.dumps({"size": size, "seed": seed}))
                files[f"Projects/{pname}/Samples/{sname}/Files/{name}"] = [seed, size]
        for e in range(empty_samples if p == 0 else 0):
            (sroot / f"E{e:04d}").mkdir(parents=True, exist_ok=True)
    return {"files": files, "dirs": dirs}


# -- a worker -----------------------------------------------------------------------------------


@dataclass
class WorkerReport:
    ops: int = 0
    by_kind: dict = field(default_factory=dict)
    bytes_read: int = 0
    bytes_checked: int = 0
    wrong_bytes: int = 0
    wrong_ops: list = field(default_factory=list)
    errors: dict = field(default_factory=dict)  # errno name -> count
    max_latency: float = 0.0  # one whole op (a sequential op is many read calls)
    max_latency_op: str = ""
    max_call: float = 0.0  # one system call (listdir, stat, read, pread): what --op-timeout bounds
    max_call_what: str = ""


def _expected(seed: int, offset: int, length: int) -> bytes:
    from basemount_py.emulator.synthetic import synthetic_bytes

    return synthetic_bytes(seed, offset, length)


def _diff_count(got: bytes, want: bytes) -> int:
    if got == want:
        return 0
    n = sum(1 for a, b in zip(got, want) if a != b)
    return n + abs(len(got) - len(want))


@dataclass
class WriterReport:
    written: list = field(default_factory=list)  # [name, seed, size] of every file closed without error
    bytes_written: int = 0
    errors: dict = field(default_factory=dict)
    max_call: float = 0.0
    max_call_what: str = ""


WRITE_SIZES = [1, 4095, 65536, 300_000, 1 * MiB + 17, 3 * MiB + 5]
WRITER_SEED_BASE = 10_000_000  # writers' content seeds: far from the account's


class Deadline:
    """The end of the run, read from a file the parent may push later (see ``run_soak``'s
    ``min_faults``): a loaded machine gets more time instead of a weaker run."""

    def __init__(self, path: str):
        self.path = path

    @staticmethod
    def write(path: Path, when: float) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(repr(when))
        os.replace(tmp, path)  # workers never read a half-written number

    def passed(self) -> bool:
        return time.time() >= float(Path(self.path).read_text())


def writer(manifest_path: str, seed: int, deadline_path: str) -> WriterReport:
    manifest = json.loads(Path(manifest_path).read_text())
    target = Path(manifest["mount"]) / manifest["upload_dir"]
    rng = random.Random(seed)
    rep = WriterReport()
    n = 0
    deadline = Deadline(deadline_path)
    # At most ``writer_files`` files (0: no limit), spread over the run: a short run's writers
    # otherwise spool more than its upload drain can commit in a short time.
    limit = manifest.get("writer_files", 0)
    started = time.time()
    pace = max(0.0, float(Path(deadline_path).read_text()) - started) / limit if limit else 0.0
    while not deadline.passed() and (not limit or n < limit):
        if time.time() < started + n * pace:
            time.sleep(min(0.1, started + n * pace - time.time()))
            continue
        n += 1
        size = rng.choice(WRITE_SIZES)
        fseed = WRITER_SEED_BASE + seed * 100_000 + n
        name = f"w{seed}_{n}.bin"
        how = rng.choice(["write", "rename", "sparse"])
        data = _expected(fseed, 0, size)
        chunk = rng.choice([4096, 65536, MiB])
        start = time.monotonic()
        try:
            path = target / (f".{name}.tmp" if how == "rename" else name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                offsets = list(range(0, size, chunk))
                if how == "sparse":
                    os.ftruncate(fd, size)
                    rng.shuffle(offsets)
                for off in offsets:
                    os.pwrite(fd, data[off : off + chunk], off)
            finally:
                os.close(fd)
            if how == "rename":
                os.rename(path, target / name)
            rep.written.append([name, fseed, size])
            rep.bytes_written += size
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            rep.errors[code] = rep.errors.get(code, 0) + 1
        took = time.monotonic() - start
        if took > rep.max_call:
            rep.max_call, rep.max_call_what = took, f"{how} {name} ({size} B)"
    return rep


def check_uploads(emulator, appresult_id: str, written: list) -> tuple[int, int, list]:
    """(lost, wrong, examples): every written file must be on the server with its exact bytes."""
    import hashlib

    import httpx

    with httpx.Client(base_url=emulator.url, headers={"x-access-token": emulator.token}, timeout=60, follow_redirects=True) as c:
        items, offset = [], 0
        while True:
            page = c.get(f"v1pre3/appresults/{appresult_id}/files", params={"Limit": 1000, "Offset": offset}).json()["Response"]
            items += page["Items"]
            offset += len(page["Items"])
            if not page["Items"] or offset >= page["TotalCount"]:
                break
        on_server = {i["Path"]: i for i in items}
        lost = wrong = 0
        examples = []
        for name, fseed, size in written:
            item = on_server.get(name)
            if item is None:
                lost += 1
                examples.append(f"lost {name}")
                continue
            body = c.get(f"v1pre3/files/{item['Id']}/content").content
            if len(body) != size or hashlib.md5(body).digest() != hashlib.md5(_expected(fseed, 0, size)).digest():
                wrong += 1
                examples.append(f"wrong {name}: {len(body)} of {size} bytes")
        extra = set(on_server) - {w[0] for w in written}
        wrong += len(extra)  # a file nobody closed (a temp name, a duplicate) must not be there
        examples += [f"unexpected {e}" for e in sorted(extra)[:5]]
    return lost, wrong, examples[:10]


def worker(manifest_path: str, seed: int, deadline_path: str) -> WorkerReport:
    manifest = json.loads(Path(manifest_path).read_text())
    mount = Path(manifest["mount"])
    files = list(manifest["files"].items())
    dirs = manifest["dirs"]
    rng = random.Random(seed)
    rep = WorkerReport()

    def call(what: str, fn, *args):
        start = time.monotonic()
        try:
            return fn(*args)
        finally:
            took = time.monotonic() - start
            if took > rep.max_call:
                rep.max_call, rep.max_call_what = took, what

    def check(what: str, got: bytes, want: bytes) -> None:
        rep.bytes_read += len(got)
        rep.bytes_checked += len(want)
        bad = _diff_count(got, want)
        if bad:
            rep.wrong_bytes += bad
            rep.wrong_ops.append(what)

    def drop_cached_pages(fd: int) -> None:
        # Remote files are opened with keep_cache, so after a while the kernel's page cache
        # would answer most reads by itself; dropping the file's pages now and then keeps the
        # daemon (and the faults) in the path.
        if rng.random() < 0.5:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def op_ls() -> str:
        d = rng.choice(dirs)
        call(f"listdir {d}", os.listdir, mount / d)
        return f"ls {d}"

    def op_stat() -> str:
        rel, (fseed, size) = rng.choice(files)
        st = call(f"stat {rel}", os.stat, mount / rel)
        if st.st_size != size:
            rep.wrong_ops.append(f"stat {rel}: size {st.st_size} != {size}")
            rep.wrong_bytes += 1
        return f"stat {rel}"

    def op_seq() -> str:
        rel, (fseed, size) = rng.choice(files)
        limit = min(size, rng.choice([256 * 1024, 2 * MiB, 8 * MiB, size]))
        chunk = rng.choice([4096, 65536, 131072, MiB])
        with open(mount / rel, "rb", buffering=0) as f:
            drop_cached_pages(f.fileno())
            pos = 0
            while pos < limit:
                data = call(f"read {rel}@{pos}", f.read, min(chunk, limit - pos))
                if not data:
                    break
                check(f"seq {rel}@{pos}", data, _expected(fseed, pos, len(data)))
                pos += len(data)
        if pos != limit:
            rep.wrong_ops.append(f"seq {rel}: short file ({pos} of {limit})")
            rep.wrong_bytes += 1
        return f"seq {rel} {limit}B"

    def op_random() -> str:
        rel, (fseed, size) = rng.choice(files)
        fd = os.open(mount / rel, os.O_RDONLY)
        try:
            drop_cached_pages(fd)
            for _ in range(rng.randint(1, 8)):
                off = rng.randrange(0, size + 10) if size else 0
                length = rng.choice([1, 512, 4096, 65536, 200_000])
                data = call(f"pread {rel}@{off}", os.pread, fd, length, off)
                want = _expected(fseed, off, max(0, min(length, size - off)))
                check(f"pread {rel}@{off}+{length}", data, want)
        finally:
            os.close(fd)
        return f"random {rel}"

    kinds = [("ls", op_ls, 2), ("stat", op_stat, 3), ("seq", op_seq, 2), ("random", op_random, 3)]
    population = [k for k in kinds for _ in range(k[2])]
    deadline = Deadline(deadline_path)
    while not deadline.passed():
        name, op, _ = rng.choice(population)
        start = time.monotonic()
        try:
            what = op()
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            rep.errors[code] = rep.errors.get(code, 0) + 1
            what = f"{name} failed {code}"
        elapsed = time.monotonic() - start
        rep.ops += 1
        rep.by_kind[name] = rep.by_kind.get(name, 0) + 1
        if elapsed > rep.max_latency:
            rep.max_latency, rep.max_latency_op = elapsed, what
    rep.wrong_ops = rep.wrong_ops[:10]
    return rep


# -- the parent ---------------------------------------------------------------------------------


def daemon_usage(pid: int) -> tuple[int, int, int]:
    """(RSS bytes, open fds, open sockets) of a process, from /proc."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    fds = sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        fds += 1
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                sockets += 1
        except OSError:
            pass
    return rss, fds, sockets


@dataclass
class SoakResult:
    duration: float
    workers: int
    ops: int
    ops_per_s: float
    by_kind: dict
    mib_read: float
    mib_per_s: float
    wrong_bytes: int
    wrong_ops: list
    errors: dict
    hung_workers: int
    max_latency: float
    max_latency_op: str
    max_call: float
    max_call_what: str
    faults_injected: dict
    api_requests: int
    content_requests: int
    rss_start_mib: float
    peak_rss_mib: float
    peak_fds: int
    peak_sockets: int
    daemon_alive: bool
    writers: int = 0
    files_written: int = 0
    mib_written: float = 0.0
    write_errors: dict = field(default_factory=dict)
    max_write: float = 0.0  # one whole file written and closed (into the spool)
    max_write_what: str = ""
    drain_seconds: float = 0.0  # from the deadline until every upload was committed
    failed_uploads: int = 0  # failed for good (kept in the spool)
    lost_files: int = 0
    wrong_files: int = 0
    upload_problems: list = field(default_factory=list)

    def summary(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults_injected.items())) or "none"
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.by_kind.items()))
        return "\n".join(
            [
                f"soak: {self.workers} processes for {self.duration:.0f} s",
                f"  ops               {self.ops} ({self.ops_per_s:.1f} ops/s; {kinds})",
                f"  bytes read        {self.mib_read:.0f} MiB ({self.mib_per_s:.1f} MiB/s), every byte checked",
                f"  wrong bytes       {self.wrong_bytes}",
                f"  failed ops        {errors}",
                f"  hung ops          {self.hung_workers}",
                f"  max call latency  {self.max_call:.2f} s ({self.max_call_what})",
                f"  max op latency    {self.max_latency:.2f} s ({self.max_latency_op})",
                f"  faults injected   {faults} (of {self.api_requests} API + {self.content_requests} content requests)",
                f"  daemon RSS        {self.rss_start_mib:.0f} MiB at start, peak {self.peak_rss_mib:.0f} MiB",
                f"  daemon fds        peak {self.peak_fds} open, {self.peak_sockets} sockets",
                f"  daemon alive      {self.daemon_alive}",
            ]
            + (
                [
                    f"  writers           {self.writers}: {self.files_written} files, {self.mib_written:.0f} MiB closed "
                    f"({self.mib_written / max(self.duration, 1e-9):.1f} MiB/s into the spool), errors "
                    + (", ".join(f"{k} {v}" for k, v in sorted(self.write_errors.items())) or "none"),
                    f"  slowest write     {self.max_write:.2f} s ({self.max_write_what})",
                    f"  upload drain      {self.drain_seconds:.1f} s after the deadline, {self.failed_uploads} failed for good",
                    f"  lost files        {self.lost_files}",
                    f"  wrong files       {self.wrong_files}" + (f" ({'; '.join(self.upload_problems)})" if self.upload_problems else ""),
                ]
                if self.writers
                else []
            )
        )


def run_soak(
    workdir: Path,
    duration: float = 120.0,
    workers: int = 16,
    faults: dict | None = None,
    mount_args: tuple[str, ...] = (),
    log=print,
    writers: int = 0,
    min_faults: int = 0,
    scheduled_faults: list[dict] | None = None,
    writer_files: int = 0,
) -> SoakResult:
    """``min_faults``: the run goes on past ``duration`` (up to 4x) until the emulator has injected
    that many faults, so that a slow machine still proves the same thing. ``scheduled_faults``:
    one-shot faults (the emulator's ``fail_next`` entries) queued when the workers start, each
    taken by the next request of its scope: that many faults however few requests a loaded
    machine manages, on top of the seeded random ones. ``writer_files``: files per writer at most
    (0: as many as it can), spread over the run."""
    from conftest import Mount, flush_and_wait, require_fuse, status_lines  # noqa: F401  (same mount harness as the tests)

    from basemount_py.emulator.control import EmulatorProcess

    workdir.mkdir(parents=True, exist_ok=True)
    account = workdir / "account"
    manifest = build_account(account)
    knobs = dict(SOAK_FAULTS if faults is None else faults)
    with EmulatorProcess(account, **knobs) as emulator:
        m = Mount(
            emulator,
            workdir / "mnt",
            "--op-timeout", str(SOAK_OP_TIMEOUT),
            "--cache-size", "64",
            "--metadata-ttl", "5",
            "--upload-threshold", "1", "--upload-part-size", "0.5",  # writers' bigger files go multipart
            *mount_args,
        )
        m.start()
        written: list = []
        writer_reports: list = []
        drain = 0.0
        failed_uploads = 0
        try:
            manifest["mount"] = str(m.mountpoint)
            manifest["upload_dir"] = "Projects/Proj0/AppResults/Soak/Files"
            manifest["writer_files"] = writer_files
            if writers:
                for attempt in range(10):  # under faults even the mkdir may need another go
                    try:
                        m.path("Projects", "Proj0", "AppResults", "Soak").mkdir(exist_ok=True)
                        if m.path(manifest["upload_dir"]).is_dir():
                            break
                    except OSError:
                        pass
                appresult_id = m.path("Projects", "Proj0", "AppResults", "Soak", ".id").read_text().strip()
            manifest_path = workdir / "manifest.json"
            manifest_path.write_text(json.dumps(manifest))
            pid = m.process.pid
            rss0, _, _ = daemon_usage(pid)
            emulator.reset_counters()
            if scheduled_faults:
                emulator.set_knobs(fail_next=scheduled_faults)
            log(f"soak: {len(manifest['files'])} files, {len(manifest['dirs'])} folders, {workers} workers, {duration:.0f} s")
            start = time.time()
            deadline = start + duration
            deadline_path = workdir / "deadline"
            Deadline.write(deadline_path, deadline)
            procs = []
            for kind, count in (("writer", writers), ("worker", workers)):
                for i in range(count):
                    out = open(workdir / f"{kind}{i}.json", "wb")
                    argv = [sys.executable, __file__, kind, str(manifest_path), str(i), str(deadline_path)]
                    procs.append((subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT), out))
            peak_rss, peak_fds, peak_sockets = rss0, 0, 0
            # A worker still running this long after the deadline is stuck in an operation that
            # outlived every bound (the op timeout plus one full sequential read).
            grace = deadline + 2 * SOAK_OP_TIMEOUT + 30
            while any(p.poll() is None for p, _ in procs) and time.time() < grace:
                now = time.time()
                if deadline - 1 <= now < start + 4 * duration and sum(emulator.counters()["faults"].values()) < min_faults:
                    deadline = now + 5
                    grace = deadline + 2 * SOAK_OP_TIMEOUT + 30
                    Deadline.write(deadline_path, deadline)
                try:
                    rss, fds, sockets = daemon_usage(pid)
                    peak_rss, peak_fds, peak_sockets = max(peak_rss, rss), max(peak_fds, fds), max(peak_sockets, sockets)
                except OSError:
                    break  # the daemon died: reported below
                time.sleep(0.25)
            elapsed = time.time() - start
            hung = 0
            for p, out in procs:
                if p.poll() is None:
                    hung += 1
                    p.kill()
                out.close()
            daemon_alive = m.process.poll() is None
            if writers and daemon_alive:
                drain_start = time.time()
                flush_and_wait(m, timeout=600)  # faults still on: the retries must get everything through
                drain = time.time() - drain_start
                failed_uploads = sum(1 for line in status_lines(m) if line[0] == "failed")
            counters = emulator.counters()  # the faults of the whole run, the upload drain included
        finally:
            m.stop()
        for i in range(writers):
            text = (workdir / f"writer{i}.json").read_text(errors="replace").strip()
            try:
                writer_reports.append(WriterReport(**json.loads(text.splitlines()[-1])))
            except (ValueError, IndexError, TypeError):
                writer_reports.append(WriterReport(errors={f"writer {i} crashed: {text[-300:]}": 1}))
        written = [w for r in writer_reports for w in r.written]
        lost = wrong = 0
        problems: list = []
        if writers:
            emulator.set_knobs(**{k: 0.0 for k in ("error_rate", "throttle_rate", "reset_rate", "truncate_rate", "stall_rate")})
            lost, wrong, problems = check_uploads(emulator, appresult_id, written)

    reports = []
    for i in range(workers):
        text = (workdir / f"worker{i}.json").read_text(errors="replace").strip()
        try:
            reports.append(WorkerReport(**json.loads(text.splitlines()[-1])))
        except (ValueError, IndexError, TypeError):
            reports.append(WorkerReport(wrong_ops=[f"worker {i} crashed: {text[-500:]}"], wrong_bytes=0))
    ops = sum(r.ops for r in reports)
    by_kind: dict[str, int] = {}
    errors: dict[str, int] = {}
    for r in reports:
        for k, v in r.by_kind.items():
            by_kind[k] = by_kind.get(k, 0) + v
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
    slowest = max(reports, key=lambda r: r.max_latency)
    slowest_call = max(reports, key=lambda r: r.max_call)
    requests = counters["requests"]
    content_requests = sum(v for k, v in requests.items() if "content" in k.split()[-1] and k.startswith("GET content"))
    mib = sum(r.bytes_read for r in reports) / MiB
    return SoakResult(
        duration=round(elapsed, 1),
        workers=workers,
        ops=ops,
        ops_per_s=ops / max(elapsed, 1e-9),
        by_kind=by_kind,
        mib_read=mib,
        mib_per_s=mib / max(elapsed, 1e-9),
        wrong_bytes=sum(r.wrong_bytes for r in reports),
        wrong_ops=[w for r in reports for w in r.wrong_ops][:20],
        errors=errors,
        hung_workers=hung,
        max_latency=slowest.max_latency,
        max_latency_op=slowest.max_latency_op,
        max_call=slowest_call.max_call,
        max_call_what=slowest_call.max_call_what,
        faults_injected=counters["faults"],
        api_requests=sum(requests.values()) - content_requests,
        content_requests=content_requests,
        rss_start_mib=rss0 / MiB,
        peak_rss_mib=peak_rss / MiB,
        peak_fds=peak_fds,
        peak_sockets=peak_sockets,
        daemon_alive=daemon_alive,
        writers=writers,
        files_written=len(written),
        mib_written=sum(r.bytes_written for r in writer_reports) / MiB,
        write_errors={k: v for r in writer_reports for k, v in r.errors.items()},
        max_write=max((r.max_call for r in writer_reports), default=0.0),
        max_write_what=max(writer_reports, key=lambda r: r.max_call).max_call_what if writer_reports else "",
        drain_seconds=round(drain, 1),
        failed_uploads=failed_uploads,
        lost_files=lost,
        wrong_files=wrong,
        upload_problems=problems,
    )


def result_json(result: SoakResult) -> str:
    return json.dumps(asdict(result), indent=2)


def main(argv: list[str]) -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(prog="scripts/soak", description="Soak a real mount with faults; print the figures.")
    parser.add_argument("--seconds", type=float, default=120.0, help="duration (default 120)")
    parser.add_argument("--workers", type=int, default=16, help="reader processes (default 16)")
    parser.add_argument("--writers", type=int, default=4, help="writer processes (default 4)")
    parser.add_argument("--no-faults", action="store_true", help="run without fault injection")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="basemount-soak-"))
    try:
        result = run_soak(workdir, duration=args.seconds, workers=args.workers, faults={} if args.no_faults else None, writers=args.writers)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory: {workdir}")
    print(result.summary())
    if args.json:
        Path(args.json).write_text(result_json(result))
    ok = result.wrong_bytes == 0 and result.hung_workers == 0 and result.daemon_alive and set(result.errors) <= {"EIO"}
    ok = ok and result.lost_files == 0 and result.wrong_files == 0 and result.failed_uploads == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] in ("worker", "writer"):
        run = worker if sys.argv[1] == "worker" else writer
        print(json.dumps(asdict(run(sys.argv[2], int(sys.argv[3]), sys.argv[4]))))
    else:
        sys.exit(main(sys.argv[1:]))
