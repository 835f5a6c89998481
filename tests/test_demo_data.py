"""Tests for the demo account generator: determinism, real file formats, consistent metadata.

The read-only checks use the session's demo account (conftest.demo_account: built once per test
run, ~3 s, and shared with the mount tests); the determinism test generates a second one through
the CLI entry point and compares bytes + mtimes.
The BAM/VCF checks run the real command-line tools (samtools, bcftools, tabix) and compare their
answers with pysam's, so "works with the standard tools" is tested, not assumed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from datetime import datetime, timezone
from pathlib import Path

import pysam
import pytest

from basemount_py.emulator import demo_data
from basemount_py.emulator.demo_data import generate_demo_account

ALIGN = Path("Projects/Tumor-Normal Study/AppResults/Alignment & Variant Calling/Files")


@pytest.fixture(scope="module")
def account(demo_account) -> Path:
    return demo_account


def manifest(root: Path) -> list[tuple]:
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            rows.append((path.relative_to(root).as_posix(), st.st_size if path.is_file() else 0,
                         digest, st.st_mtime))
    return sorted(rows)


def entity(account: Path, rel: str | Path) -> dict:
    return json.loads((account / rel / ".entity.json").read_text(encoding="utf-8"))


def run(*cmd: str | Path) -> str:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True,
                          timeout=30).stdout


def sample_folders(account: Path) -> list[Path]:
    return sorted(p for p in account.glob("Projects/*/Samples/*") if p.is_dir())


# ---------------------------------------------------------------------------------------------


def test_generation_is_deterministic_and_cli_prints_summary(account, tmp_path, capsys):
    second = tmp_path / "again"
    assert demo_data.main([str(second)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert str(second) in out[0] and "2 projects, 6 samples" in out[0] and "MB" in out[0]
    first_manifest, second_manifest = manifest(account), manifest(second)
    assert len(first_manifest) > 50
    assert first_manifest == second_manifest
    # Nothing but the account itself is left in the parent (no staging folder).
    assert [p.name for p in tmp_path.iterdir()] == ["again"]


def test_all_mtimes_are_fixed_dates_in_january_2024(account):
    for _rel, _size, _digest, mtime in manifest(account):
        when = datetime.fromtimestamp(mtime, timezone.utc)
        assert (when.year, when.month) == (2024, 1) and when.microsecond == 0


def test_non_empty_or_non_directory_destination_is_refused(tmp_path, capsys):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        generate_demo_account(occupied)
    assert demo_data.main([str(occupied)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "not empty" in err[0]
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        generate_demo_account(a_file)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "occupied"]


def test_empty_existing_directory_is_accepted_even_as_dot(tmp_path, monkeypatch):
    # An existing empty directory (e.g. a fresh volume) is a valid target, also given as ".".
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert generate_demo_account(Path(".")) == empty
    assert sorted(p.name for p in empty.iterdir()) == [
        "BioSamples", "Projects", "Runs", "account.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]


def test_account_json(account):
    data = json.loads((account / "account.json").read_text())
    assert data["User"]["Name"] == "Demo User"
    assert data["AccessToken"] == "demo-token"


def test_fastqs_are_valid_paired_and_match_sample_metadata(account):
    folders = sample_folders(account)
    assert len(folders) == 6
    nested_seen = False
    lanes_seen = set()
    for folder in folders:
        meta = entity(account, folder.relative_to(account))
        r1 = sorted(folder.rglob("*_R1_001.fastq.gz"))
        r2 = sorted(folder.rglob("*_R2_001.fastq.gz"))
        assert len(r1) == len(r2) >= 1
        lanes_seen.add(len(r1))
        nested_seen |= r1[0].parent != folder / "Files"
        for lane, path in enumerate(r1, 1):
            assert path.name == f"{meta['Name']}_S{meta['SampleNumber']}_L{lane:03d}_R1_001.fastq.gz"
        records = []
        for paths, read in ((r1, 1), (r2, 2)):
            names = []
            for lane, path in enumerate(paths, 1):
                lines = gzip.decompress(path.read_bytes()).decode("ascii").splitlines()
                assert len(lines) % 4 == 0
                for i in range(0, len(lines), 4):
                    head, seq, plus, qual = lines[i:i + 4]
                    assert head.startswith("@") and plus == "+"
                    name, comment = head[1:].split(" ")
                    assert comment.startswith(f"{read}:N:0:")
                    assert len(seq) == len(qual) == meta[f"Read{read}"]
                    assert set(seq) <= set("ACGTN") and all(33 <= ord(c) <= 74 for c in qual)
                    assert len(name.split(":")) == 7  # instrument:run:flowcell:lane:tile:x:y
                    assert name.split(":")[3] == str(lane)
                    names.append(name)
            records.append(names)
        assert records[0] == records[1]  # R1/R2 in the same order with the same names
        assert len(set(records[0])) == len(records[0])
        assert 1000 <= len(records[0]) == meta["NumReadsRaw"] == meta["NumReadsPF"]
        assert meta["IsPairedEnd"] is True and meta["Status"] == "Complete"
        assert meta["AppSession"]["Status"] == "Complete"
    assert nested_seen, "one sample must keep its FASTQs in a sub-folder of Files/"
    assert lanes_seen == {1, 2}, "the NA12878-rep samples have two lanes (Merged/ demo)"


def test_datasets_hold_copies_of_their_samples_fastqs(account):
    for sample in sample_folders(account):
        project = sample.parent.parent
        dataset = project / "Datasets" / sample.name
        meta = entity(account, dataset.relative_to(account))
        assert meta["DatasetType"] == {"Id": "common.fastq", "Name": "FASTQ"}
        assert (account / "BioSamples" / meta["BioSample"]).is_dir()
        copies = {p.name: p.read_bytes() for p in (dataset / "Files").iterdir()}
        originals = {p.name: p.read_bytes() for p in sample.rglob("*.fastq.gz")}
        assert copies == originals and len(copies) in (2, 4)
        assert not any(p.is_symlink() for p in (dataset / "Files").iterdir())


def test_duplicate_sample_names(account):
    samples = account / "Projects/Demo Project: WGS (NA12878)/Samples"
    named = [p.name for p in sample_folders(account) if p.parent == samples
             and entity(account, p.relative_to(account))["Name"] == "NA12878-rep"]
    assert sorted(named) == ["NA12878-rep", "NA12878-rep (rerun)"]


def _refs(value):
    if isinstance(value, dict):
        if "Ref" in value:
            yield value["Ref"]
        for v in value.values():
            yield from _refs(v)
    elif isinstance(value, list):
        for v in value:
            yield from _refs(v)


def test_entity_json_files_are_valid_and_refs_resolve(account):
    paths = sorted(account.rglob(".entity.json"))
    assert len(paths) >= 20
    refs = []
    for path in paths:
        data = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(data, dict)
        assert "Files" not in path.relative_to(account).parts  # metadata, never an API file
        refs.extend(_refs(data))
    assert len(refs) >= 10
    for ref in refs:
        assert (account / ref).is_dir(), ref
    for biosample in (account / "BioSamples").iterdir():
        meta = entity(account, biosample.relative_to(account))
        assert (account / "Projects" / meta["DefaultProject"]).is_dir()
        assert meta["Status"]


def test_app_results_and_run_metadata(account):
    results = account / "Projects/Tumor-Normal Study/AppResults"
    for name in ("Alignment & Variant Calling", "QC Reports"):
        meta = entity(account, results.relative_to(account) / name)
        assert meta["AppSession"]["Status"] == "Complete" and meta["AppSession"]["Name"]
        types = {p["Type"]: p for p in meta["Properties"]}
        assert types["string"]["Content"]
        assert types["sample[]"]["Name"] == "Input.Samples"
        assert all(item["Ref"].startswith("Projects/") for item in types["sample[]"]["Items"])
    assert sorted(p.name for p in (results / "QC Reports/Files").rglob("*") if p.is_file()) == [
        ".checksums.md5", "Normal-01_S5_L001_R1_001_fastqc.html",
        "Normal-01_S5_L001_R2_001_fastqc.html", "Tumor-01_S4_L001_R1_001_fastqc.html",
        "Tumor-01_S4_L001_R2_001_fastqc.html", "multiqc_report.html", "pipeline.log"]
    spec = json.loads((results / "Large Output/Files/big.bin.synthetic.json").read_text())
    assert spec == {"size": 268435456, "seed": 7}

    run = Path("Runs") / demo_data.RUN_NAME
    meta = entity(account, run)
    assert meta["Status"] == "Complete" and meta["InstrumentType"] == "NovaSeq6000"
    assert meta["PlatformName"] == "NovaSeq" and meta["SequencingStats"]["NumCyclesRead1"] == 101
    output = [p for p in meta["Properties"] if p["Name"] == "Output.Samples"][0]
    assert output["Type"] == "sample[]" and len(output["Items"]) == 5


def test_run_folder_files_are_well_formed(account):
    files = account / "Runs" / demo_data.RUN_NAME / "Files"
    info = ET.parse(files / "RunInfo.xml").getroot()
    reads = [int(r.get("NumCycles")) for r in info.iter("Read")]
    assert reads == [101, 8, 8, 101]
    assert len(list(info.iter("Tile"))) == 2 * 2 * 2 * 78
    assert ET.parse(files / "RunParameters.xml").getroot().findtext("RunId") == demo_data.RUN_ID
    sheet = (files / "SampleSheet.csv").read_text()
    assert sheet.startswith("[Header]\nFileFormatVersion,2\n")
    data = sheet.split("[BCLConvert_Data]\n")[1].splitlines()
    assert [row.split(",")[0] for row in data[1:]] == [
        "NA12878-A", "NA12878-B", "NA12878-rep", "Tumor-01", "Normal-01"]

    tile = (files / "InterOp/TileMetricsOut.bin").read_bytes()
    assert tile[:2] == bytes([2, 10]) and (len(tile) - 2) % 10 == 0
    errors = (files / "InterOp/ErrorMetricsOut.bin").read_bytes()
    assert errors[:2] == bytes([3, 30]) and (len(errors) - 2) % 30 == 0

    cbcls = sorted(files.glob("Data/Intensities/BaseCalls/L001/C*.1/L001_*.cbcl"))
    assert len(cbcls) == 6
    for path in cbcls:
        raw = path.read_bytes()
        version, header_size, bits_call, bits_q, nbins = struct.unpack_from("<HIBBI", raw)
        assert (version, bits_call, bits_q, nbins) == (1, 2, 2, 4)
        ntiles = struct.unpack_from("<I", raw, 12 + 8 * nbins)[0]
        offset = header_size
        for t in range(ntiles):
            tile_header = 16 + 8 * nbins + 16 * t
            _tile, clusters, plain, packed = struct.unpack_from("<IIII", raw, tile_header)
            block = zlib.decompress(raw[offset:offset + packed], wbits=31)
            assert len(block) == plain == (clusters + 1) // 2
            offset += packed
        assert offset == len(raw)


def test_bam_is_sorted_indexed_and_readable_by_samtools(account):
    bam = account / ALIGN / "Tumor-01.bam"
    assert (account / ALIGN / "Tumor-01.bam.bai").is_file()
    run("samtools", "quickcheck", bam)
    with pysam.AlignmentFile(str(bam)) as f:
        assert f.header.to_dict()["HD"]["SO"] == "coordinate"
        total = sum(1 for _ in f.fetch(until_eof=True))
        region = f.count("chr1", 999, 2000)
        stats = {s.contig: (s.mapped, s.unmapped) for s in f.get_index_statistics()}
        positions = [(r.reference_id, r.reference_start) for r in f.fetch()]
    assert 19_000 <= total <= 21_000
    assert positions == sorted(positions)
    assert int(run("samtools", "view", "-c", bam)) == total
    idx = {line.split("\t")[0]: int(line.split("\t")[2])
           for line in run("samtools", "idxstats", bam).splitlines()}
    assert {c: idx[c] for c in stats} == {c: m for c, (m, _u) in stats.items()}
    assert all(idx[c] > 0 for c in ("chr1", "chr2", "chrM"))
    samtools_region = int(run("samtools", "view", "-c", bam, "chr1:1000-2000"))
    assert samtools_region == region > 0
    # Reads carry CIGARs (some soft-clipped) and MD/NM that agree with the reference.
    cigars = {line.split("\t")[5] for line in run("samtools", "view", bam, "chr1").splitlines()}
    assert "101M" in cigars and any("S" in c for c in cigars)


def test_tumor_fastqs_are_the_first_pairs_in_the_bam(account):
    fastq = (account / "Projects/Tumor-Normal Study/Samples/Tumor-01/Files"
             / "Tumor-01_S4_L001_R1_001.fastq.gz")
    with pysam.FastxFile(str(fastq)) as f:
        names = {r.name for r in f}
    with pysam.AlignmentFile(str(account / ALIGN / "Tumor-01.bam")) as bam:
        bam_names = {r.query_name for r in bam.fetch(until_eof=True)}
    assert names <= bam_names and len(names) < len(bam_names)


def test_md_tags_match_the_reference(account):
    fasta = pysam.FastaFile(str(account / ALIGN / "reference/demo_reference.fa"))
    with pysam.AlignmentFile(str(account / ALIGN / "Tumor-01.bam")) as bam:
        checked = 0
        for read in bam.fetch("chr2", 0, 20_000):
            ref = fasta.fetch("chr2", read.reference_start, read.reference_end)
            assert read.get_reference_sequence().upper() == ref  # MD reconstructs the reference
            mismatches = sum(a != b for a, b in zip(read.query_alignment_sequence, ref))
            assert read.get_tag("NM") == mismatches
            checked += 1
    assert checked > 100


def test_vcf_is_indexed_and_readable_by_bcftools_and_tabix(account):
    vcf = account / ALIGN / "Tumor-01.vcf.gz"
    assert (account / ALIGN / "Tumor-01.vcf.gz.tbi").is_file()
    with pysam.VariantFile(str(vcf)) as f:
        total = sum(1 for _ in f)
        region = sum(1 for _ in f.fetch("chr1", 0, 5000))
    assert total > 100
    assert len(run("bcftools", "view", "-H", vcf).splitlines()) == total
    tabix_lines = run("tabix", vcf, "chr1:1-5000").splitlines()
    assert len(tabix_lines) == region > 0
    fasta = pysam.FastaFile(str(account / ALIGN / "reference/demo_reference.fa"))
    for line in tabix_lines:  # REF alleles agree with the shipped reference
        chrom, pos, _id, ref = line.split("\t")[:4]
        assert fasta.fetch(chrom, int(pos) - 1, int(pos)) == ref
    faidx = run("samtools", "faidx", account / ALIGN / "reference/demo_reference.fa",
                "chr2:100-159")
    assert len("".join(faidx.splitlines()[1:])) == 60
    summary = dict(line.split(",") for line in (account / ALIGN / "Tumor-01.summary.csv")
                   .read_text().splitlines()[1:])
    assert int(summary["snv_calls"]) == total


def test_account_is_small(account):
    files = [p for p in account.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files if not p.name.endswith(".synthetic.json"))
    assert 1_000_000 < total < 8_000_000
    synthetic = [p for p in files if p.name.endswith(".synthetic.json")]
    assert len(synthetic) == 1
