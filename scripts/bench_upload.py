"""Upload throughput: ``cp`` into a mount vs. a direct multipart upload with httpx.

    .venv/bin/python scripts/bench_upload.py [--size-mib 300] [--latency-ms 20] [--bandwidth 50]

Starts an emulator on a scratch account (the ``wan`` profile by default: 20 ms latency, 50 MB/s
per connection — the emulator paces request bodies of its upload routes too), then times:

* ``mount cp``: ``cp`` of a local file into a new app result of a real mount (the mount's default
  part size and parallelism unless given, ``--write-back 0``): until close() returned (the file is in the local
  spool), and until the upload was committed (the mount's ``.uploads`` status shows nothing left);
* ``httpx multipart``: the same calls made directly (start, parts in parallel with the same
  part size and parallelism, complete), from memory, no FUSE;
* ``httpx 1 stream``: the same, one part at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from basemount_py.emulator.control import EmulatorProcess
from basemount_py.options import MiB, MountOptions


async def direct_upload(url: str, token: str, appresult: str, name: str, data: bytes, part: int, parallel: int) -> None:
    headers = {"x-access-token": token}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=httpx.Limits(max_connections=parallel)) as c:
        r = await c.post(f"v1pre3/appresults/{appresult}/files", params={"name": name, "multipart": "true"})
        r.raise_for_status()
        fid = r.json()["Response"]["Id"]
        sem = asyncio.Semaphore(parallel)

        async def put(n: int, chunk: bytes) -> None:
            async with sem:
                md5 = base64.b64encode(hashlib.md5(chunk).digest()).decode()
                resp = await c.put(f"v1pre3/files/{fid}/parts/{n}", content=chunk, headers={"Content-MD5": md5})
                resp.raise_for_status()

        view = memoryview(data)
        await asyncio.gather(*(put(i + 1, bytes(view[o : o + part])) for i, o in enumerate(range(0, len(data), part))))
        (await c.post(f"v1pre3/files/{fid}", params={"uploadstatus": "complete"})).raise_for_status()


def main() -> int:
    p = argparse.ArgumentParser(prog="scripts/bench_upload.py")
    p.add_argument("--size-mib", type=int, default=300)
    p.add_argument("--latency-ms", type=float, default=20)
    p.add_argument("--bandwidth", type=float, default=50, help="MB/s per connection (emulator conn_bandwidth)")
    p.add_argument("--part-mib", type=int, default=MountOptions.upload_part_size // MiB)
    p.add_argument("--parallel", type=int, default=MountOptions.upload_parallel)
    args = p.parse_args()
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="upload-bench-"))
    try:
        (work / "account" / "Projects").mkdir(parents=True)
        src = work / "source.bin"
        data = os.urandom(size)
        src.write_bytes(data)
        knobs = {"latency_ms": args.latency_ms, "conn_bandwidth": args.bandwidth}
        results = []
        with EmulatorProcess(work / "account", **knobs) as em:
            c = httpx.Client(base_url=em.url, headers={"x-access-token": em.token}, timeout=60)
            pid = c.post("v1pre3/projects", json={"Name": "Bench"}).json()["Response"]["Id"]

            def appresult(name: str) -> str:
                return c.post(f"v1pre3/projects/{pid}/appresults", json={"Name": name}).json()["Response"]["Id"]

            for label, parallel in (("httpx multipart", args.parallel), ("httpx 1 stream", 1)):
                aid = appresult(label)
                t = time.monotonic()
                asyncio.run(direct_upload(em.url, em.token, aid, "x.bin", data, args.part_mib * MiB, parallel))
                results.append((label, time.monotonic() - t))

            mnt = work / "mnt"
            mnt.mkdir()
            env = dict(os.environ, BASESPACE_API_SERVER=em.url, BASESPACE_ACCESS_TOKEN=em.token, HOME=str(work))
            proc = subprocess.Popen(
                [sys.executable, "-m", "basemount_py", "mount", str(mnt), "--foreground",
                 "--upload-part-size", str(args.part_mib), "--upload-parallel", str(args.parallel), "--write-back", "0"],
                env=env, stdout=subprocess.DEVNULL, stderr=open(work / "mount.log", "wb"),
            )
            try:
                deadline = time.monotonic() + 20
                while not os.path.ismount(mnt) and time.monotonic() < deadline:
                    time.sleep(0.05)
                result = mnt / "Projects" / "Bench" / "AppResults" / "mount cp"
                result.mkdir()
                t = time.monotonic()
                subprocess.run(["cp", str(src), str(result / "Files" / "x.bin")], check=True)
                results.append(("mount cp, closed", time.monotonic() - t))
                while any(line.split("\t")[0] in ("open", "pending", "uploading") for line in (mnt / ".uploads").read_text().splitlines()):
                    time.sleep(0.02)
                results.append(("mount cp, committed", time.monotonic() - t))
            finally:
                subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
                proc.wait(timeout=15)
        print(f"{args.size_mib} MiB, latency {args.latency_ms:g} ms, {args.bandwidth:g} MB/s per connection, "
              f"{args.part_mib} MiB parts, {args.parallel} in flight")
        for label, seconds in results:
            print(f"  {label:20} {seconds:6.2f} s  {size / seconds / 1e6:7.1f} MB/s")
        return 0
    finally:  # the source, the account and the spool are large: never left behind
        if not os.path.ismount(work / "mnt"):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
