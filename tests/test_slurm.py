"""A real one-node Slurm cluster (munged, slurmctld, slurmd started by hand in a temporary folder:
no systemd, no accounting) running scripts/slurm/basemount-slurm as its Prolog and Epilog.

Two users x an 8-task array against the emulator answering 30 % of API calls with 429: every
task's bytes are compared with the source, at most one daemon per (user, node) is ever seen
(sampled every 20 ms), and nothing is left mounted or running afterwards; then scancel of a job
mid-read and kill -9 of a daemon under a running job. Jobs mount as their (non-root) user, so
/dev/fuse is made world read-write for the test and restored afterwards, even on failure.

Then a Snakemake workflow (two rules reading mounted FASTQs) run by Snakemake's Slurm executor
plugin on the same cluster: its outputs equal the same computation on the source files.

Figures (printed with -s, and in docs/cluster.md): prolog p95, API calls per job, 429s absorbed.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT, fuse_device_mode, user_import_paths, user_python, write_file

from basemount_py.emulator.control import EmulatorProcess
from basemount_py.mount_table import mount_entry

# The tests wait on their own generous bounds (a loaded machine); 600 s covers the cluster start too.
pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

SCRIPT = ROOT / "scripts" / "slurm" / "basemount-slurm"
USERS = ("bmpy-slurm1", "bmpy-slurm2")
TASKS = 8  # per user; 2 users' arrays at once: 16 jobs, each a prolog and an epilog under the per-user lock
SAMPLES = 4
SAMPLE_DIR = ("Projects", "Study", "Samples")
DAEMON_MARK = "basemount_py mount --foreground"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def daemons() -> dict[int, list[int]]:
    """uid -> pids of basemount_py daemons running now. A daemon's own short-lived children
    (libfuse forks to exec fusermount3) carry its command line until they exec: not counted."""
    marked: dict[int, tuple[int, int]] = {}  # pid -> (uid, parent pid)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if DAEMON_MARK not in cmdline:
                continue
            uid = os.stat(f"/proc/{entry}").st_uid
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        marked[int(entry)] = (uid, parent)
    found: dict[int, list[int]] = {}
    for pid, (uid, parent) in marked.items():
        if parent not in marked:
            found.setdefault(uid, []).append(pid)
    return found


class DaemonSampler(threading.Thread):
    """Records the largest number of daemons seen at once per uid."""

    def __init__(self, uids: set[int]):
        super().__init__(daemon=True)
        self.uids = uids
        self.most: dict[int, int] = {}
        self.seen: dict[int, set[int]] = {}  # every daemon pid seen, per uid
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for uid, pids in daemons().items():
                if uid in self.uids:  # root's setpriv, before it becomes the user, is not a daemon
                    self.most[uid] = max(self.most.get(uid, 0), len(pids))
                    self.seen.setdefault(uid, set()).update(pids)
            self.halt.wait(0.02)


def ensure_user(name: str, home: Path) -> pwd.struct_passwd:
    try:
        pwd.getpwnam(name)
        subprocess.run(["usermod", "--home", str(home), name], check=True, capture_output=True)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--home-dir", str(home), "--no-create-home", "--shell", "/bin/sh", name],
            check=True,
            capture_output=True,
        )
    user = pwd.getpwnam(name)
    home.mkdir(parents=True)
    (home / "out").mkdir()
    for path in (home, home / "out"):
        os.chown(path, user.pw_uid, user.pw_gid)
    return user


class SlurmCluster:
    """munged + slurmctld + slurmd in ``base``; the Prolog/Epilog are basemount-slurm."""

    def __init__(self, base: Path, mount_root: Path, daemon_env: str):
        self.base, self.mount_root = base, mount_root
        self.conf = base / "slurm.conf"
        self.timings = base / "timings"
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.daemon_env = daemon_env

    def start(self) -> "SlurmCluster":
        b = self.base
        munge = b / "munge"
        munge.mkdir(mode=0o755)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.socket = munge / "munge.sock"
        self._spawn(["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={self.socket}",
                     f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                     f"--seed-file={munge / 'munged.seed'}"])
        wait_until(self.socket.exists, 30, "munged's socket")
        self.socket.chmod(0o777)  # users authenticate their sbatch through it
        settings = b / "basemount-slurm.conf"
        settings.write_text(
            f"BASEMOUNT_ROOT={self.mount_root}\n"
            f"BASEMOUNT_CMD='{user_python()} -m basemount_py'\n"
            f"BASEMOUNT_ENV='{self.daemon_env}'\n"
            f"BASEMOUNT_TIMINGS={self.timings}\n"
        )
        for mode in ("prolog", "epilog"):
            wrapper = b / mode
            wrapper.write_text(f"#!/bin/sh\nBASEMOUNT_SLURM_CONF={settings} exec {SCRIPT} {mode}\n")
            wrapper.chmod(0o755)
        host = socket.gethostname().split(".")[0]
        (b / "state").mkdir()
        (b / "spool").mkdir()
        self.conf.write_text(
            f"""ClusterName=bmpytest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
StateSaveLocation={b / 'state'}
SlurmdSpoolDir={b / 'spool'}
SlurmctldPidFile={b / 'slurmctld.pid'}
SlurmdPidFile={b / 'slurmd.pid'}
SlurmctldLogFile={b / 'slurmctld.log'}
SlurmdLogFile={b / 'slurmd.log'}
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=2
MinJobAge=300
Prolog={b / 'prolog'}
Epilog={b / 'epilog'}
NodeName={host} NodeAddr=127.0.0.1 CPUs=40 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )
        self.conf.chmod(0o644)
        self._spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn(["slurmd", "-D", "-f", str(self.conf)])
        wait_until(lambda: self.run("sinfo", "-h", "-o", "%T").stdout.strip() in ("idle", "mixed"), 60, "the node to be idle", 0.5)
        return self

    def _spawn(self, argv: list[str]) -> None:
        log = open(self.base / f"{Path(argv[0]).name}.out", "wb")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env))

    def run(self, *argv: str, user: pwd.struct_passwd | None = None, extra_env: dict | None = None, **kw) -> subprocess.CompletedProcess:
        extra = {}
        if user is not None:
            extra = dict(user=user.pw_uid, group=user.pw_gid, extra_groups=[], cwd=user.pw_dir,
                         env={"SLURM_CONF": str(self.conf), "PATH": os.environ["PATH"], "HOME": user.pw_dir,
                              "USER": user.pw_name, **(extra_env or {})})
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, **({"env": self.env} | extra), **kw)

    def submit(self, user: pwd.struct_passwd, script: str, *options: str, output: str = "/dev/null", **env: str) -> str:
        path = Path(user.pw_dir) / f"job-{time.monotonic_ns()}.sh"
        path.write_text("#!/bin/sh\n" + script)
        os.chown(path, user.pw_uid, user.pw_gid)
        r = self.run("sbatch", "--parsable", "-o", output, *options, str(path), user=user, extra_env=env)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip().split(";")[0]

    def bin_dir(self) -> Path:
        """sbatch, squeue, scancel, srun, scontrol, sinfo that find this cluster's slurm.conf: the
        Slurm executor plugin deletes every SLURM_* variable (SLURM_CONF too) when it runs inside
        a job. A real cluster has its slurm.conf at the default path and needs none of this."""
        folder = self.base / "bin"
        if not folder.exists():
            folder.mkdir(mode=0o755)
            for tool in ("sbatch", "squeue", "scancel", "srun", "scontrol", "sinfo"):
                wrapper = folder / tool
                wrapper.write_text(f"#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which(tool)} \"$@\"\n")
                wrapper.chmod(0o755)
        return folder

    def queued(self, user: pwd.struct_passwd | None = None) -> list[str]:
        argv = ["squeue", "-h", "-o", "%i %T"] + (["-u", user.pw_name] if user else [])
        return [line for line in self.run(*argv).stdout.splitlines() if line.strip()]

    def stop(self) -> None:
        for user in USERS:
            self.run("scancel", "--quiet", f"--user={user}")
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def leftovers(mount_root: Path, user: pwd.struct_passwd | None = None) -> tuple[list[str], dict[int, list[int]], list[str]]:
    """Mounts under the root, daemons of the test users, per-user state still on disk (of
    ``user`` only, if given)."""
    uids = {user.pw_uid} if user is not None else {pwd.getpwnam(u).pw_uid for u in USERS}
    names = {pwd.getpwuid(uid).pw_name for uid in uids}
    mounts = [
        str(p) for p in mount_root.iterdir() if not p.name.startswith(".") and (user is None or p.name in names) and mount_entry(str(p)) is not None
    ] if mount_root.exists() else []
    state = mount_root / ".state"
    dirs = [p.name for p in state.iterdir() if p.is_dir() and (user is None or p.name in {str(u) for u in uids})] if state.exists() else []
    return mounts, {u: p for u, p in daemons().items() if u in uids}, dirs


def fastq_gz(seed: int, reads: int) -> bytes:
    """A gzipped FASTQ of ``reads`` random 100-base reads (deterministic: gzip without a date)."""
    rng = random.Random(seed)
    records = []
    for n in range(reads):
        bases = "".join(rng.choices("ACGT", k=100))
        quals = "".join(rng.choices("#+5?FIJ", k=100))
        records.append(f"@S{seed}:{n} 1:N:0:1\n{bases}\n+\n{quals}\n")
    return gzip.compress("".join(records).encode(), mtime=0)


@pytest.fixture(scope="module")
def cluster_env(tmp_path_factory):
    """One cluster for the module (starting one takes a while): the array test, then Snakemake."""
    tmp_path = tmp_path_factory.mktemp("slurm")
    if os.geteuid() != 0:
        pytest.skip("a Slurm cluster with users and a prolog needs root")
    for tool in ("munged", "slurmctld", "slurmd", "sbatch", "setpriv", "fusermount3"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: scripts/setup installs slurm-wlm, munge, fuse3")
    base = Path(tempfile.mkdtemp(prefix="bmpy-slurm-"))
    base.chmod(0o755)
    mount_root = base / "run"
    account = tmp_path / "account"
    sources, reads = {}, {}
    for i in range(SAMPLES):
        reads[i] = 1500 + 97 * i
        data = fastq_gz(i, reads[i])
        path = account.joinpath(*SAMPLE_DIR, f"S{i}", "Files", f"S{i}_R1.fastq.gz")
        write_file(path, data)
        sources[i] = hashlib.sha256(data).hexdigest()
    packages = os.pathsep.join(user_import_paths())
    cluster = None
    with fuse_device_mode(0o666), EmulatorProcess(account) as emulator:
        users = [ensure_user(name, base / "home" / name) for name in USERS]
        try:
            manifests = []  # one per user, made at once (each is a Python start-up and an API walk)
            for user in users:
                home = Path(user.pw_dir)
                config = home / ".basespace"
                config.mkdir(mode=0o700)
                cfg = config / "default.cfg"
                cfg.write_text(f"apiServer   = {emulator.url}\naccessToken = {emulator.token}\n")
                cfg.chmod(0o600)
                manifests.append(subprocess.Popen(
                    [user_python(), "-m", "basemount_py", "manifest", "/".join(SAMPLE_DIR)],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    env={**os.environ, "PYTHONPATH": packages, "HOME": str(home)},
                ))
            for user, manifest in zip(users, manifests):
                config = Path(user.pw_dir) / ".basespace"
                out, err = manifest.communicate(timeout=120)
                assert manifest.returncode == 0, err
                (config / "slurm-manifest.json").write_text(out)
                for path in (config, config / "default.cfg", config / "slurm-manifest.json"):
                    os.chown(path, user.pw_uid, user.pw_gid)
            cluster = SlurmCluster(base, mount_root, f"PYTHONPATH={packages}").start()
            yield SimpleNamespace(cluster=cluster, emulator=emulator, users=users, sources=sources, reads=reads,
                                  mount_root=mount_root, packages=packages)
        finally:
            if cluster is not None:
                print("squeue:", cluster.queued())
                cluster.stop()
                for log in ("slurmctld.log", "slurmd.log"):
                    for line in (base / log).read_text(errors="replace").splitlines()[-15:]:
                        print(log, line)
                for log in mount_root.glob(".state/*/*log"):
                    print(log, log.read_text(errors="replace")[-1500:])
            for entry in mount_root.iterdir() if mount_root.exists() else []:
                if mount_entry(str(entry)) is not None:
                    subprocess.run(["umount", "-l", str(entry)], capture_output=True)
            for uid, pids in daemons().items():
                if uid in {u.pw_uid for u in users}:
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
            shutil.rmtree(base, ignore_errors=True)


def reader_script(mount_root: Path, out: str) -> str:
    files = "/".join(SAMPLE_DIR)
    return (
        f'i=$((SLURM_ARRAY_TASK_ID % {SAMPLES}))\n'
        f'sha256sum < "{mount_root}/$SLURM_JOB_USER/{files}/S$i/Files/S${{i}}_R1.fastq.gz" | cut -d" " -f1 > "$HOME/out/.{out}$SLURM_ARRAY_TASK_ID"\n'
        f'mv "$HOME/out/.{out}$SLURM_ARRAY_TASK_ID" "$HOME/out/{out}$SLURM_ARRAY_TASK_ID"\n'  # whole, or not there
    )


def holder_script(mount_root: Path, marker: str) -> str:
    """Opens a file, reads part of it, says so, and keeps it open (a job cancelled mid-read)."""
    path = f"{mount_root}/$SLURM_JOB_USER/{'/'.join(SAMPLE_DIR)}/S0/Files/S0_R1.fastq.gz"
    return f'exec 3< "{path}" && head -c 1000 <&3 >/dev/null && touch "$HOME/out/{marker}" && sleep 600\n'


def test_slurm_array_scancel_and_kill_9(cluster_env):
    cluster, emulator, users = cluster_env.cluster, cluster_env.emulator, cluster_env.users
    sources, mount_root = cluster_env.sources, cluster_env.mount_root
    emulator.set_knobs(throttle_rate=0.3, fault_scope="api", retry_after=0.5, fault_seed=7)
    emulator.reset_counters()
    sampler = DaemonSampler({u.pw_uid for u in users})
    sampler.start()
    try:
        # -- 2 users x 16 array tasks -------------------------------------------------------------
        for user in users:
            cluster.submit(user, reader_script(mount_root, "task"), f"--array=0-{TASKS - 1}")
        wait_until(lambda: not cluster.queued(), 150, "both arrays to finish", 0.5)
        wait_until(lambda: leftovers(mount_root) == ([], {}, []), 60, "the epilogs to clean up", 0.2)
        counters = emulator.counters()
        for user in users:
            out = Path(user.pw_dir) / "out"
            got = {i: (out / f"task{i}").read_text().strip() if (out / f"task{i}").exists() else None for i in range(TASKS)}
            assert got == {i: sources[i % SAMPLES] for i in range(TASKS)}, (user.pw_name, got)
        timings = [line.split() for line in cluster.timings.read_text().splitlines()]
        prologs = sorted(float(t[3]) for t in timings if t[0] == "prolog")
        api_calls = sum(n for route, n in counters["requests"].items() if route != "GET content")
        jobs = len(users) * TASKS
        assert len(prologs) == jobs
        p95 = prologs[int(0.95 * (len(prologs) - 1))]
        print(f"\nSlurm: {jobs}/{jobs} byte-identical; prolog p50 {prologs[len(prologs) // 2]:.2f} s, p95 {p95:.2f} s; "
              f"{api_calls} API calls = {api_calls / jobs:.2f} per job; 429s absorbed: {counters['faults'].get('429', 0)}; "
              f"most daemons per user at once: {max(sampler.most.values())}")
        assert api_calls / jobs <= 2.0, counters["requests"]
        assert counters["faults"].get("429", 0) > 0  # the 429s were there, and absorbed

        # The next two run at once, one user each (each user has a daemon and a state of its own).
        emulator.set_knobs(throttle_rate=0)
        cancelled, killed = users
        job = cluster.submit(cancelled, holder_script(mount_root, "holding"))
        holder = cluster.submit(killed, holder_script(mount_root, "holding2"))

        # -- scancel mid-read: the epilog unmounts a mount a killed job was reading -----------------
        wait_until((Path(cancelled.pw_dir) / "out" / "holding").exists, 120, "the job to be mid-read")
        assert cluster.run("scancel", job).returncode == 0

        # -- kill -9 of the daemon under a running job; the next job gets a fresh one ----------------
        wait_until((Path(killed.pw_dir) / "out" / "holding2").exists, 120, "the job to be mid-read")
        (pid,) = daemons()[killed.pw_uid]
        os.kill(pid, signal.SIGKILL)
        cluster.submit(killed, reader_script(mount_root, "after-kill"), "--array=0")

        wait_until(lambda: not cluster.queued(cancelled), 120, "the cancelled job to end", 0.5)
        wait_until(lambda: leftovers(mount_root, cancelled) == ([], {}, []), 60, "the epilog to clean up after scancel", 0.2)
        wait_until((Path(killed.pw_dir) / "out" / "after-kill0").exists, 120, "a job after kill -9")
        assert (Path(killed.pw_dir) / "out" / "after-kill0").read_text().strip() == sources[0]
        assert cluster.run("scancel", holder).returncode == 0
        wait_until(lambda: not cluster.queued(), 120, "the jobs to end", 0.5)
        wait_until(lambda: leftovers(mount_root) == ([], {}, []), 60, "the epilog to clean up after kill -9", 0.2)
    finally:
        sampler.halt.set()
        sampler.join()
    assert sampler.most and max(sampler.most.values()) == 1, sampler.most


# x 2 rules = 2 Slurm jobs besides the driver's own, sharing its daemon. One sample: each rule job
# starts Snakemake twice (seconds of CPU each), and a second sample added CPU, not coverage.
SNAKE_SAMPLES = (0,)
SNAKEFILE = """
SAMPLES = {samples!r}
FASTQ = config["mnt"] + "/S{{s}}/Files/S{{s}}_R1.fastq.gz"

rule all:
    input: expand("sha256/{{s}}.txt", s=SAMPLES), expand("reads/{{s}}.txt", s=SAMPLES)

rule sha256:
    input: FASTQ
    output: "sha256/{{s}}.txt"
    shell: "sha256sum < {{input}} | cut -d' ' -f1 > {{output}}"

rule reads:
    input: FASTQ
    output: "reads/{{s}}.txt"
    shell: "gzip -dc < {{input}} | awk 'END {{{{ print NR / 4 }}}}' > {{output}}"
"""


def test_snakemake_workflow_through_the_slurm_executor(cluster_env):
    """Two rules reading mounted FASTQs; Snakemake's Slurm executor submits each rule job.

    The driver runs as a Slurm job itself, on the node: the prolog has mounted the user's stable
    path before Snakemake checks that its inputs exist, and the rule jobs share that one daemon.
    (A driver on a node without the mount, e.g. a login node, finds no inputs at that path:
    MissingInputException.) No accounting daemon here, so job states come from squeue
    (--slurm-status-command squeue, with MinJobAge=300 keeping finished jobs visible)."""
    try:
        import snakemake  # noqa: F401
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"{exc.name} is missing: scripts/setup installs the 'cluster' extra (pyproject.toml)")
    env = cluster_env
    cluster, user = env.cluster, env.users[0]
    env.emulator.set_knobs(throttle_rate=0.3, fault_scope="api", retry_after=0.5, fault_seed=11)
    work = Path(user.pw_dir) / "workflow"
    work.mkdir()
    (work / "Snakefile").write_text(SNAKEFILE.format(samples=SNAKE_SAMPLES))
    for path in (work, work / "Snakefile"):
        os.chown(path, user.pw_uid, user.pw_gid)
    mnt = f"{env.mount_root}/{user.pw_name}/{'/'.join(SAMPLE_DIR)}"
    driver = (
        f"export PATH={cluster.bin_dir()}:$PATH\n"
        f"cd {work} && {user_python()} -m snakemake --executor slurm --jobs 4 --slurm-status-command squeue "
        "--default-resources slurm_partition=debug runtime=10 mem_mb=100 "
        "--slurm-init-seconds-before-status-checks 1 --slurm-keep-successful-logs --latency-wait 10 "
        f"--config mnt={mnt} > driver.log 2>&1; echo $? > driver.rc\n"
    )
    sampler = DaemonSampler({user.pw_uid})
    sampler.start()
    started = time.monotonic()
    try:
        driver_job = cluster.submit(user, driver, PYTHONPATH=env.packages)
        wait_until((work / "driver.rc").exists, 300, "the Snakemake driver job")
        elapsed = time.monotonic() - started
        assert (work / "driver.rc").read_text().strip() == "0"
        for i in SNAKE_SAMPLES:  # the same computation on the source files
            assert (work / "sha256" / f"{i}.txt").read_text().strip() == env.sources[i]
            assert (work / "reads" / f"{i}.txt").read_text().strip() == str(env.reads[i])
        wait_until(lambda: not cluster.queued(), 120, "the driver job to end", 0.5)
        wait_until(lambda: leftovers(env.mount_root) == ([], {}, []), 60, "the epilog to clean up", 0.2)
    finally:
        sampler.halt.set()
        sampler.join()
        rc = work / "driver.rc"
        if not rc.exists() or rc.read_text().strip() != "0":
            for log in [work / "driver.log", *sorted(work.glob(".snakemake/slurm_logs/*/*/*.log"))]:
                if log.exists():
                    print(log, log.read_text(errors="replace")[-3000:])
    # every rule job was a Slurm job of this user, after the driver's, and completed
    states = [line.split() for line in cluster.run("squeue", "-h", "-t", "all", "-u", user.pw_name, "-o", "%A %T").stdout.splitlines()]
    rule_jobs = [state for job, state in states if int(job) > int(driver_job)]
    assert rule_jobs == ["COMPLETED"] * 2 * len(SNAKE_SAMPLES), states
    # and all of them read through the one daemon the driver's prolog started
    assert len(sampler.seen.get(user.pw_uid, ())) == 1, sampler.seen
    print(f"\nSnakemake through the Slurm executor: {len(rule_jobs)} rule jobs, outputs equal to the source's, "
          f"one daemon; {elapsed:.0f} s from submitting the driver to its end")
