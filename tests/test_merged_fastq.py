"""Biosample-level merged FASTQs (``BioSamples/<b>/Merged/``) through a real mount.

The demo biosample ``NA12878-rep`` has two datasets (two runs, two lanes each); further accounts
are built here for unpairable files and for a top-up run that arrives after mounting. Bytes read
through the mount are compared with the parts on disk, with `seqkit stats` and with `minimap2`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import write_entity, write_file

BIOSAMPLE = "NA12878-rep"
FASTQ_TYPE = {"Id": "illumina.fastq.v1.8", "Name": "Illumina Fastq", "ConformsToIds": ["common.files", "common.fastq"]}
REFERENCE = Path("Projects/Tumor-Normal Study/AppResults/Alignment & Variant Calling/Files/reference/demo_reference.fa")


def manifest(merged: Path) -> dict[str, list[dict]]:
    """``.manifest`` rows per merged file, in order."""
    rows: dict[str, list[dict]] = {}
    for line in (merged / ".manifest").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, number, path, file_id, size, dataset_id, dataset_date = line.split("\t")
        rows.setdefault(name, []).append(
            {"number": int(number), "path": merged / path, "relative": path, "file_id": file_id, "size": int(size), "dataset": dataset_id, "date": dataset_date}
        )
    return rows


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)


def visible(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def md5_of(paths: list[Path]) -> str:
    digest = hashlib.md5()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def read_names(path: Path) -> list[str]:
    with gzip.open(path, "rt") as f:
        return [line.split()[0] for i, line in enumerate(f) if i % 4 == 0]


def seqkit_stats(*paths: Path) -> list[dict]:
    out = subprocess.run(["seqkit", "stats", "-T", "-j", "1", *map(str, paths)], capture_output=True, text=True, check=True).stdout
    header, *lines = out.splitlines()
    keys = header.split("\t")
    return [dict(zip(keys, line.split("\t"))) for line in lines]


def on_disk(account: Path, row: dict) -> Path:
    """The account folder file behind a manifest row (its dataset found by date and file path)."""
    up, datasets, _dataset, files, *rest = Path(row["relative"]).parts
    assert (up, datasets, files) == ("..", "Datasets", "Files")
    matches = [
        d.joinpath("Files", *rest)
        for d in account.glob("Projects/*/Datasets/*")
        if _meta(d).get("DateCreated") == row["date"] and d.joinpath("Files", *rest).is_file()
    ]
    assert len(matches) == 1, matches
    return matches[0]


def _meta(folder: Path) -> dict:
    meta = folder / ".entity.json"
    return json.loads(meta.read_text()) if meta.exists() else {}


# -- the demo biosample ------------------------------------------------------------------------------


def test_demo_biosample_has_a_merged_pair_equal_to_its_parts(demo_mount, demo_account):
    merged = demo_mount.path("BioSamples", BIOSAMPLE, "Merged")
    assert sorted(os.listdir(merged)) == [".error", ".manifest", f"{BIOSAMPLE}_R1.fastq.gz", f"{BIOSAMPLE}_R2.fastq.gz"]
    names = visible(merged)
    parts = manifest(merged)
    assert sorted(parts) == names
    for name in names:
        rows = parts[name]
        # two datasets (two runs), two lanes each, in dataset-date then lane order
        assert [r["number"] for r in rows] == [1, 2, 3, 4]
        assert [r["date"] for r in rows] == sorted(r["date"] for r in rows) and len({r["dataset"] for r in rows}) == 2
        assert ["_L001_" in r["path"].name for r in rows] == [True, False, True, False]
        assert os.stat(merged / name).st_size == sum(r["size"] for r in rows) == sum(os.stat(r["path"]).st_size for r in rows)
        # md5 through the mount == md5 of cat of the parts (read through the mount, and on disk)
        assert md5_of([merged / name]) == md5_of([r["path"] for r in rows])
        assert md5_of([merged / name]) == md5_of([on_disk(demo_account, r) for r in rows])
        assert (merged / ".error").read_text() == ""
    # mates: record i of R1 and record i of R2 have the same read name
    r1, r2 = (read_names(merged / name) for name in names)
    assert len(r1) == len(r2) == 2 * 2500 and r1 == r2
    assert len(set(r1)) == len(r1)


def test_seqkit_stats_of_the_merged_file_is_the_sum_over_its_parts(demo_mount, tmp_path):
    merged = demo_mount.path("BioSamples", BIOSAMPLE, "Merged")
    for name, rows in manifest(merged).items():
        [whole] = seqkit_stats(merged / name)
        each = seqkit_stats(*(r["path"] for r in rows))
        assert int(whole["num_seqs"]) == sum(int(p["num_seqs"]) for p in each) == 5000
        assert int(whole["sum_len"]) == sum(int(p["sum_len"]) for p in each)
        assert int(whole["min_len"]) == min(int(p["min_len"]) for p in each)
        assert int(whole["max_len"]) == max(int(p["max_len"]) for p in each)
        assert float(whole["avg_len"]) == round(int(whole["sum_len"]) / int(whole["num_seqs"]), 1)
        # and every column equals seqkit's view of a local concatenation
        local = tmp_path / name
        with open(local, "wb") as out:
            for r in rows:
                out.write(r["path"].read_bytes())
        [concatenated] = seqkit_stats(local)
        assert {k: v for k, v in whole.items() if k != "file"} == {k: v for k, v in concatenated.items() if k != "file"}


def test_minimap2_on_the_merged_pair_equals_a_local_concatenation(demo_mount, demo_account, tmp_path):
    merged = demo_mount.path("BioSamples", BIOSAMPLE, "Merged")
    parts = manifest(merged)
    reference = tmp_path / "ref.fa"
    shutil.copyfile(demo_account / REFERENCE, reference)
    local = {}
    for read in ("R1", "R2"):
        name = f"{BIOSAMPLE}_{read}.fastq.gz"
        local[read] = tmp_path / name
        with open(local[read], "wb") as out:
            for r in parts[name]:
                out.write(on_disk(demo_account, r).read_bytes())

    def align(r1: Path, r2: Path) -> list[str]:
        out = subprocess.run(
            ["minimap2", "-a", "-x", "sr", "-t", "1", str(reference), str(r1), str(r2)],
            capture_output=True, text=True, check=True,
        ).stdout
        return [line for line in out.splitlines() if not line.startswith("@PG")]  # @PG holds the paths

    through_mount = align(merged / f"{BIOSAMPLE}_R1.fastq.gz", merged / f"{BIOSAMPLE}_R2.fastq.gz")
    records = [line for line in through_mount if not line.startswith("@")]
    assert len(records) >= 2 * 5000
    assert sum(1 for line in records if int(line.split("\t")[1]) & 2) > len(records) // 2  # mostly proper pairs
    assert through_mount == align(local["R1"], local["R2"])


def test_random_access_reads_match_the_concatenation(demo_mount):
    merged = demo_mount.path("BioSamples", BIOSAMPLE, "Merged")
    name = f"{BIOSAMPLE}_R2.fastq.gz"
    whole = b"".join(r["path"].read_bytes() for r in manifest(merged)[name])
    rng = random.Random(12)
    boundaries = []
    at = 0
    for r in manifest(merged)[name]:
        at += r["size"]
        boundaries.append(at)
    offsets = [max(0, b - 7) for b in boundaries] + [rng.randrange(len(whole)) for _ in range(40)]
    fd = os.open(merged / name, os.O_RDONLY)
    try:
        for offset in offsets:
            size = rng.choice([1, 100, 4096, 70_000])
            assert os.pread(fd, size, offset) == whole[offset : offset + size]
        assert os.pread(fd, 10, len(whole)) == b""
    finally:
        os.close(fd)


def test_listing_merged_costs_no_call_beyond_the_dataset_listings(demo_mount, demo_emulator):
    biosample = demo_mount.path("BioSamples", BIOSAMPLE)
    (demo_mount.mountpoint / ".commands").write_text("refresh\n")  # cold caches, everywhere
    for dataset in (biosample / "Datasets").iterdir():
        subprocess.run(["ls", "-l", str(dataset / "Files")], capture_output=True, check=True)
    demo_emulator.reset_counters()
    listing = subprocess.run(["ls", "-la", str(biosample / "Merged")], capture_output=True, text=True, check=True).stdout
    assert f"{BIOSAMPLE}_R1.fastq.gz" in listing
    # (content calls may still come from the whole-file fetches of earlier reads: not listings)
    listing_calls = {route: n for route, n in demo_emulator.counters()["requests"].items() if "content" not in route}
    assert listing_calls == {}


def test_merged_files_are_read_only(demo_mount):
    merged = demo_mount.path("BioSamples", BIOSAMPLE, "Merged")
    with pytest.raises(OSError):
        open(merged / f"{BIOSAMPLE}_R1.fastq.gz", "ab")
    with pytest.raises(OSError):
        (merged / "new.fastq.gz").write_bytes(b"x")


# -- accounts built here -----------------------------------------------------------------------------


def fastq_gz(run: str, lane: int, read: int, n: int, seed: int) -> bytes:
    rng = random.Random(f"{run}:{lane}:{seed}")
    records = []
    for i in range(n):
        seq = "".join(rng.choice("ACGT") for _ in range(60))
        records.append(f"@{run}:{lane}:{i} {read}:N:0:ACGTACGT\n{seq}\n+\n{'F' * 60}\n")
    return gzip.compress("".join(records).encode(), mtime=0)


def add_dataset(account: Path, folder: str, biosample: str, date: str, lanes: dict[int, tuple[int, ...]], n: int = 200) -> None:
    """A FASTQ dataset of ``biosample`` with the given reads per lane (e.g. {1: (1, 2)})."""
    dataset = write_entity(
        account / "Projects" / "P" / "Datasets" / folder, Name=folder, BioSample=biosample, DatasetType=FASTQ_TYPE, DateCreated=date
    )
    for lane, reads in lanes.items():
        for read in reads:
            write_file(dataset / "Files" / f"{biosample}_S1_L{lane:03d}_R{read}_001.fastq.gz", fastq_gz(folder, lane, read, n, read))


def make_account(tmp_path: Path) -> Path:
    account = tmp_path / "account"
    write_entity(account / "Projects" / "P")
    write_entity(account / "BioSamples" / "Good", DefaultProject="P")
    write_entity(account / "BioSamples" / "Orphan", DefaultProject="P")
    add_dataset(account, "Good run 1", "Good", "2024-03-01T10:00:00.0000000Z", {1: (1, 2), 2: (1, 2)})
    # Orphan: lane 2 has an R1 and no R2
    add_dataset(account, "Orphan run 1", "Orphan", "2024-03-01T10:00:00.0000000Z", {1: (1, 2), 2: (1,)})
    # Cold: its second run is in archival storage (IsArchived on the dataset's files)
    write_entity(account / "BioSamples" / "Cold", DefaultProject="P")
    add_dataset(account, "Cold run 1", "Cold", "2024-03-01T10:00:00.0000000Z", {1: (1, 2)})
    add_dataset(account, "Cold run 2", "Cold", "2024-03-05T10:00:00.0000000Z", {1: (1, 2)})
    meta = account / "Projects" / "P" / "Datasets" / "Cold run 2" / ".entity.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "IsArchived": True}))
    return account


def test_unpairable_and_archived_biosamples_get_a_clear_error(tmp_path, mount_factory):
    from basemount_py.emulator.control import EmulatorProcess

    account = make_account(tmp_path)
    with EmulatorProcess(account) as emulator:
        m = mount_factory(emulator)
        merged = m.path("BioSamples", "Orphan", "Merged")
        assert visible(merged) == []
        error = (merged / ".error").read_text()
        assert "unmatched file Datasets/Orphan run 1/Files/Orphan_S1_L002_R1_001.fastq.gz" in error
        assert "no R2 mate" in error
        assert "no merged files" in (merged / ".manifest").read_text()
        # the paired biosample beside it is unaffected
        assert visible(m.path("BioSamples", "Good", "Merged")) == ["Good_R1.fastq.gz", "Good_R2.fastq.gz"]
        assert (m.path("BioSamples", "Good", "Merged", ".error")).read_text() == ""
        # a biosample with an archived part: listed, refused at open (EACCES), the part named
        cold = m.path("BioSamples", "Cold", "Merged")
        assert visible(cold) == ["Cold_R1.fastq.gz", "Cold_R2.fastq.gz"]
        with pytest.raises(PermissionError):
            open(cold / "Cold_R1.fastq.gz", "rb")
        assert "part Datasets/Cold run 2/Files/Cold_S1_L001_R1_001.fastq.gz is archived" in (cold / ".error").read_text()


def test_a_top_up_dataset_appears_after_refresh_and_open_handles_keep_their_parts(tmp_path, mount_factory):
    from basemount_py.emulator.control import EmulatorProcess

    account = make_account(tmp_path)
    with EmulatorProcess(account) as emulator:
        m = mount_factory(emulator)
        merged = m.path("BioSamples", "Good", "Merged")
        r1 = merged / "Good_R1.fastq.gz"
        before = manifest(merged)
        assert len(before["Good_R1.fastq.gz"]) == 2
        old_bytes = b"".join(r["path"].read_bytes() for r in before["Good_R1.fastq.gz"])
        assert r1.read_bytes() == old_bytes
        held = os.open(r1, os.O_RDONLY)
        try:
            assert os.pread(held, 1000, 0) == old_bytes[:1000]
            # a top-up run: a later dataset of the same biosample, two lanes
            add_dataset(account, "Good run 2 (top-up)", "Good", "2024-04-02T09:00:00.0000000Z", {1: (1, 2), 2: (1, 2)})
            emulator.reload()
            assert len(manifest(merged)["Good_R1.fastq.gz"]) == 2  # cached until refreshed
            (merged / ".commands").write_text("refresh\n")
            # the kernel forgets its cached names asynchronously: wait (bounded) until it has
            wait_for(lambda: len(manifest(merged)["Good_R1.fastq.gz"]) == 4, "the top-up run in .manifest")
            after = manifest(merged)
            rows = after["Good_R1.fastq.gz"]
            assert len(rows) == 4 and [r["path"].parent.parent.name for r in rows[2:]] == ["Good run 2 (top-up)"] * 2
            assert "Good run 2 (top-up)" in (merged / ".manifest").read_text()
            new_bytes = b"".join(r["path"].read_bytes() for r in rows)
            wait_for(lambda: os.stat(r1).st_size == len(new_bytes), "the merged file's new size")
            assert os.stat(r1).st_size == len(new_bytes) > len(old_bytes)
            assert md5_of([r1]) == hashlib.md5(new_bytes).hexdigest()
            # the handle opened before the refresh still reads exactly the parts it opened with
            assert os.pread(held, len(old_bytes) + 100, 0) == old_bytes
            mates = [read_names(merged / f"Good_R{i}.fastq.gz") for i in (1, 2)]
            assert mates[0] == mates[1] and len(mates[0]) == 4 * 200
        finally:
            os.close(held)


def test_verify_checks_each_part_of_a_merged_file_against_its_md5_etag(tmp_path, mount_factory):
    from basemount_py.emulator.control import EmulatorProcess

    account = make_account(tmp_path)
    files = account / "Projects" / "P" / "Datasets" / "Good run 1" / "Files"
    (files / "Good_S1_L002_R1_001.fastq.gz.file.json").write_text(json.dumps({"ETag": hashlib.md5(b"other bytes").hexdigest()}))
    with EmulatorProcess(account) as emulator:
        m = mount_factory(emulator, "--verify")
        merged = m.path("BioSamples", "Good", "Merged")
        r2 = b"".join(r["path"].read_bytes() for r in manifest(merged)["Good_R2.fastq.gz"])
        assert (merged / "Good_R2.fastq.gz").read_bytes() == r2  # every part's MD5 matches
        result = subprocess.run(["cp", str(merged / "Good_R1.fastq.gz"), str(tmp_path / "copy")], capture_output=True, text=True)
        assert result.returncode != 0 and "Input/output error" in result.stderr
        assert "but the ETag says" in m.log.read_text()
