"""Generate the demo account folder that the BaseSpace API emulator serves.

``generate_demo_account(dest)`` writes a small (about 4 MB), fully deterministic account folder
(see docs/emulator.md for the folder format) whose files are real, tool-readable genomics data,
so the demo mount can be explored with samtools, bcftools, tabix, zcat and friends:

* ``account.json`` – user "Demo User", access token ``demo-token``.
* ``Projects/Demo Project: WGS (NA12878)/`` – a name with spaces, a colon and parentheses.
  Samples ``NA12878-A``, ``NA12878-B`` (its FASTQs sit under ``Files/Data/Intensities/BaseCalls/``
  to exercise nested file Paths) and ``NA12878-rep``, plus the folder ``NA12878-rep (rerun)``
  whose ``.entity.json`` also says ``"Name": "NA12878-rep"`` (a duplicate name, which the mount
  shows as ``NA12878-rep (2)``); both NA12878-rep samples (two runs) have two lanes each.  One v2
  dataset per sample holds a copy of its FASTQs.
* ``Projects/Tumor-Normal Study/`` – samples ``Tumor-01`` and ``Normal-01``, their datasets and
  three app results:
    - ``Alignment & Variant Calling``: coordinate-sorted ``Tumor-01.bam`` + ``.bai`` (20k reads),
      ``Tumor-01.vcf.gz`` + ``.tbi``, the reference ``reference/demo_reference.fa`` + ``.fai``
      and a summary CSV whose numbers are computed from the BAM/VCF;
    - ``QC Reports``: small HTML/text reports in nested folders (and a dotfile), sharing the
      app session of the alignment (two results of one analysis);
    - ``Large Output``: ``big.bin`` – a 256 MiB *synthetic* file (``big.bin.synthetic.json``),
      no ``AppSession`` so the emulator gives it a default one.
* ``Runs/Demo Run 2024-01-15 (NovaSeq) FC_A/`` – RunInfo.xml, RunParameters.xml, a v2
  SampleSheet.csv, InterOp ``*.bin`` files in the real binary layouts (tile, error, extraction
  metrics), ``s.locs``, per-tile ``.filter`` files and tiny CBCL base-call files.
* ``BioSamples/<name>/`` – one biosample per distinct sample name; ``NA12878-rep`` has two
  datasets (two runs, two lanes each), so its ``Merged/`` FASTQs concatenate four lanes per read.

How the data is made: a random reference of three contigs (chr1 150 kb, chr2 90 kb, chrM
16.6 kb) is drawn from a seeded RNG.  Each "individual" (NA12878; the tumour/normal patient) gets
a seeded set of SNVs (het/hom, plus somatic SNVs for the tumour).  Read pairs are simulated from
that genome: fragment length ~N(330, 70) with some short fragments that read into the adapter
(soft-clipped in the BAM), NovaSeq binned qualities (Q2/12/23/37), a few sequencing errors and
no-calls, and ~1.5% unmappable contaminant pairs.  ``Tumor-01``'s FASTQs are the first 2,500 of
the 10,000 pairs in the tumour BAM, which holds them aligned at their true positions with proper
flags, mate fields, CIGAR, NM/MD/RG tags; the VCF's AD/DP come from pileup counts on that BAM.
NumReadsRaw and NumReadsPF in each sample's ``.entity.json`` equal the number of clusters
(records per FASTQ file); the FASTQs hold pass-filter clusters only, so both are the same here.
``NA12878-rep (rerun)`` comes from a second run that is not in the account, so it has its own
"FASTQ Generation 2024-01-22" app session and no ``Input.Runs`` property; the other samples
link to the demo run (``Input.Runs``) and the run lists them (``Output.Samples``).

Determinism (same bytes on every run): all randomness comes from ``random.Random`` seeded with
fixed strings; gzip members are written with mtime 0 and no file name; BGZF (BAM/VCF) carries no
timestamps; ``samtools sort`` runs with ``--no-PG`` so no temporary path leaks into the header;
and at the end every file and directory gets a fixed mtime (the date of the entity it belongs
to).  The folder is built in a hidden staging folder (beside ``dest``, or inside it when it
already exists and is empty) and renamed into place, so a failure leaves no half-written account.

Generation is plain synchronous CPU work (two to three seconds); async callers should run it in a
thread.  ``add_arguments``/``main`` implement ``basemount-py demo-data DIR``.
"""

from __future__ import annotations

import argparse
import bisect
import calendar
import gzip
import hashlib
import html
import json
import os
import random
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

# pysam is imported where it is used: the CLI imports this module for its arguments, so every
# daemon and CLI start would otherwise import pysam too (~20 ms of CPU each).
if TYPE_CHECKING:
    import pysam

# --------------------------------------------------------------------------------------------
# The demo's cast: names, dates and sequencing set-up.
# --------------------------------------------------------------------------------------------

USER_NAME = "Demo User"
ACCESS_TOKEN = "demo-token"
PROJECT_WGS = "Demo Project: WGS (NA12878)"
PROJECT_TN = "Tumor-Normal Study"
RUN_NAME = "Demo Run 2024-01-15 (NovaSeq) FC_A"
EXPERIMENT_NAME = "Demo Run 2024-01-15"
APP_ALIGN = "Alignment & Variant Calling"
APP_QC = "QC Reports"
APP_LARGE = "Large Output"
ANALYSIS_SESSION = "DRAGEN Somatic 4.2 2024-01-16"
FASTQ_SESSION = "FASTQ Generation 2024-01-15"
RERUN_SESSION = "FASTQ Generation 2024-01-22"

INSTRUMENT = "A01234"
RUN_NUMBER = 8
FLOWCELL = "HV7LKDSX7"
RUN_ID = f"240115_{INSTRUMENT}_{RUN_NUMBER:04d}_A{FLOWCELL}"
RERUN_FLOWCELL = "HW2MTDSX7"
READ_LENGTH = 101
INDEX_LENGTH = 8
PAIRS_PER_SAMPLE = 2500
BAM_PAIRS = 10_000
SYNTHETIC_SIZE = 256 * 1024 * 1024
SYNTHETIC_SEED = 7

# TruSeq adapters (as in the sample sheet).  A read that runs past the adapter sees no signal,
# which NovaSeq's two-colour chemistry calls as G: hence the poly-G tail of read-through reads.
ADAPTER_R1 = "AGATCGGAAGAGCACACGTCTGAACTCCAGTCA"
ADAPTER_R2 = "AGATCGGAAGAGCGTCGTGTAGGGAAAGAGTGT"

CONTIGS = (("chr1", 150_000), ("chr2", 90_000), ("chrM", 16_569))

DATE_ACCOUNT = datetime(2024, 1, 10, 9, 30, 0, tzinfo=timezone.utc)
DATE_RUN_START = datetime(2024, 1, 15, 8, 2, 11, tzinfo=timezone.utc)
DATE_RUN_DONE = datetime(2024, 1, 15, 20, 41, 7, tzinfo=timezone.utc)
DATE_FASTQ = datetime(2024, 1, 15, 21, 5, 44, tzinfo=timezone.utc)
DATE_RERUN = datetime(2024, 1, 22, 16, 12, 9, tzinfo=timezone.utc)
DATE_ANALYSIS = datetime(2024, 1, 16, 10, 22, 31, tzinfo=timezone.utc)
DATE_LARGE = datetime(2024, 1, 17, 14, 0, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class DemoSample:
    folder: str  # sample folder name on disk (unique within the project)
    name: str  # BaseSpace Name (may repeat)
    project: str
    number: int  # S-number in the FASTQ file names
    individual: str  # whose genome the reads come from
    i7: str
    i5: str
    subdir: str = ""  # sub-folder of Files/ holding the FASTQs (nested Path demo)
    flowcell: str = FLOWCELL
    session: str = FASTQ_SESSION
    date: datetime = DATE_FASTQ
    from_demo_run: bool = True
    lanes: int = 1  # lanes its FASTQs are split over (L001, L002...), as bcl2fastq writes them

    def fastq_name(self, read: int, lane: int = 1) -> str:
        return f"{self.name}_S{self.number}_L{lane:03d}_R{read}_001.fastq.gz"


SAMPLES = (
    DemoSample("NA12878-A", "NA12878-A", PROJECT_WGS, 1, "NA12878", "ACGTACGT", "TTGCAGAC"),
    DemoSample(
        "NA12878-B",
        "NA12878-B",
        PROJECT_WGS,
        2,
        "NA12878",
        "GATCCTAG",
        "CAGTTCGA",
        subdir="Data/Intensities/BaseCalls",
    ),
    # One biosample, two runs, two lanes each: BioSamples/NA12878-rep/Merged/ concatenates four
    # lanes per read.
    DemoSample("NA12878-rep", "NA12878-rep", PROJECT_WGS, 3, "NA12878", "TGCAAGTC", "GTACGATC", lanes=2),
    DemoSample(
        "NA12878-rep (rerun)",
        "NA12878-rep",
        PROJECT_WGS,
        1,
        "NA12878",
        "TGCAAGTC",
        "GTACGATC",
        flowcell=RERUN_FLOWCELL,
        session=RERUN_SESSION,
        date=DATE_RERUN,
        from_demo_run=False,
        lanes=2,
    ),
    DemoSample("Tumor-01", "Tumor-01", PROJECT_TN, 4, "tumor", "CTAGGTAC", "AGCTTGCA"),
    DemoSample("Normal-01", "Normal-01", PROJECT_TN, 5, "patient", "AATCGGCT", "TCCATGAG"),
)
TUMOR = SAMPLES[4]

# --------------------------------------------------------------------------------------------
# Small helpers.
# --------------------------------------------------------------------------------------------

_COMPLEMENT = str.maketrans("ACGTN", "TGCAN")
# randbytes() is fast; mapping each byte to a base gives a uniform random sequence.
_TO_BASES = bytes(b"ACGT"[i & 3] for i in range(256))


def _revcomp(seq: str) -> str:
    return seq.translate(_COMPLEMENT)[::-1]


def _random_bases(rng: random.Random, n: int) -> str:
    return rng.randbytes(n).translate(_TO_BASES).decode("ascii")


def _bs_date(when: datetime) -> str:
    """BaseSpace's timestamp format: 7 fractional digits, whole seconds, Z."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_json(path: Path, obj: object) -> Path:
    return _write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _write_gzip(path: Path, data: bytes) -> Path:
    # mtime=0 and no embedded file name keep the gzip header byte-identical between runs.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return path


def _sample_ref(sample: DemoSample) -> dict:
    return {"Ref": f"Projects/{sample.project}/Samples/{sample.folder}"}


# --------------------------------------------------------------------------------------------
# Genomes: reference, variants, simulated read pairs.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    contig: str
    pos: int  # 0-based
    ref: str
    alt: str
    genotype: str  # "0/1" or "1/1"
    fraction: float  # share of fragments carrying the alt allele
    somatic: bool = False


def make_reference() -> dict[str, str]:
    rng = random.Random("demo:reference")
    return {name: _random_bases(rng, length) for name, length in CONTIGS}


_TRANSITION = {"A": "G", "G": "A", "C": "T", "T": "C"}


def _snvs(reference: dict[str, str], seed: str, spacing: tuple[int, int], somatic: bool, avoid: frozenset[tuple[str, int]] = frozenset()) -> list[Variant]:
    rng = random.Random(seed)
    out = []
    for contig, seq in reference.items():
        # The first SNV lands within 1.5 kb of the start, so small region queries find some.
        pos = rng.randint(500, 1500)
        while pos < len(seq) - 500:
            if (contig, pos) not in avoid:
                ref = seq[pos]
                # Transitions outnumber transversions about 2:1, as in real genomes.
                alt = _TRANSITION[ref] if rng.random() < 0.67 else rng.choice([b for b in "ACGT" if b not in (ref, _TRANSITION[ref])])
                if somatic:
                    out.append(Variant(contig, pos, ref, alt, "0/1", rng.uniform(0.25, 0.45), True))
                elif rng.random() < 0.33:
                    out.append(Variant(contig, pos, ref, alt, "1/1", 1.0))
                else:
                    out.append(Variant(contig, pos, ref, alt, "0/1", 0.5))
            pos += rng.randint(*spacing)
    return out


def make_variants(reference: dict[str, str]) -> dict[str, list[Variant]]:
    """SNVs per individual: NA12878, the patient (germline) and the tumour (germline+somatic)."""
    na12878 = _snvs(reference, "demo:variants:NA12878", (400, 1600), somatic=False)
    patient = _snvs(reference, "demo:variants:patient", (400, 1600), somatic=False)
    taken = frozenset((v.contig, v.pos) for v in patient)
    somatic = _snvs(reference, "demo:variants:somatic", (6000, 15000), True, avoid=taken)
    tumor = sorted(patient + somatic, key=lambda v: (v.contig, v.pos))
    return {"NA12878": na12878, "patient": patient, "tumor": tumor}


@dataclass(frozen=True)
class ReadPair:
    name: str  # Illumina read name, identical for R1 and R2
    r1: str
    q1: str
    r2: str
    q2: str
    contig: str | None  # None: contaminant pair that does not map
    start: int = 0  # 0-based leftmost position of the fragment
    length: int = 0  # fragment length (may be shorter than a read: adapter read-through)
    r1_forward: bool = True  # R1 reads the reference's top strand from `start`


class _ReadSimulator:
    """Draws Illumina-like read pairs from a reference plus one individual's SNVs."""

    def __init__(self, reference: dict[str, str], variants: list[Variant], seed: str, flowcell: str):
        self.reference = reference
        self.rng = random.Random(seed)
        self.flowcell = flowcell
        self.names: set[str] = set()
        self.contigs = list(reference)
        self.weights = [len(s) for s in reference.values()]
        self.variants = {c: [v for v in variants if v.contig == c] for c in reference}
        self.positions = {c: [v.pos for v in vs] for c, vs in self.variants.items()}

    def _read_name(self) -> str:
        rng = self.rng
        while True:
            tile = f"{rng.randint(1, 2)}{rng.randint(1, 2)}{rng.randint(1, 78):02d}"
            name = f"{INSTRUMENT}:{RUN_NUMBER}:{self.flowcell}:1:{tile}:{rng.randint(1000, 32000)}:{rng.randint(1000, 37000)}"
            if name not in self.names:
                self.names.add(name)
                return name

    def _qualities_and_errors(self, seq: str) -> tuple[str, str]:
        """NovaSeq-binned qualities (F=37, 8=23, -=12, #=2) with matching errors and no-calls."""
        rng = self.rng
        bases, quals = list(seq), ["F"] * len(seq)
        if rng.random() < 0.2:  # quality tail-off towards the end of some reads
            for i in range(len(seq) - rng.randint(5, 25), len(seq)):
                quals[i] = rng.choice("F88-")
        r = rng.random()
        for _ in range(0 if r < 0.75 else 1 if r < 0.93 else 2):
            i = rng.randrange(len(seq))
            bases[i] = rng.choice([b for b in "ACGT" if b != bases[i]])
            quals[i] = "-"
        if rng.random() < 0.01:
            i = rng.randrange(len(seq))
            bases[i], quals[i] = "N", "#"
        return "".join(bases), "".join(quals)

    def _fragment(self, contig: str, start: int, length: int) -> str:
        seq = list(self.reference[contig][start : start + length])
        positions, variants = self.positions[contig], self.variants[contig]
        lo = bisect.bisect_left(positions, start)
        hi = bisect.bisect_left(positions, start + length)
        for v in variants[lo:hi]:
            if v.fraction >= 1.0 or self.rng.random() < v.fraction:
                seq[v.pos - start] = v.alt
        return "".join(seq)

    def pair(self) -> ReadPair:
        rng, n = self.rng, READ_LENGTH
        name = self._read_name()
        if rng.random() < 0.015:  # contaminant / adapter-dimer: no home in the reference
            r1, q1 = self._qualities_and_errors(_random_bases(rng, n))
            r2, q2 = self._qualities_and_errors(_random_bases(rng, n))
            return ReadPair(name, r1, q1, r2, q2, None)
        contig = rng.choices(self.contigs, self.weights)[0]
        if rng.random() < 0.03:
            length = rng.randint(60, n - 1)  # short insert: the reads run into the adapter
        else:
            length = max(n, min(700, round(rng.gauss(330, 70))))
        start = rng.randrange(len(self.reference[contig]) - length)
        fragment = self._fragment(contig, start, length)
        top = (fragment + ADAPTER_R1 + "G" * n)[:n]
        bottom = (_revcomp(fragment) + ADAPTER_R2 + "G" * n)[:n]
        r1_forward = rng.random() < 0.5
        if not r1_forward:
            top, bottom = bottom, top
        r1, q1 = self._qualities_and_errors(top)
        r2, q2 = self._qualities_and_errors(bottom)
        return ReadPair(name, r1, q1, r2, q2, contig, start, length, r1_forward)


def simulate_pairs(reference: dict[str, str], variants: list[Variant], seed: str, count: int, flowcell: str = FLOWCELL) -> list[ReadPair]:
    sim = _ReadSimulator(reference, variants, seed, flowcell)
    return [sim.pair() for _ in range(count)]


# --------------------------------------------------------------------------------------------
# FASTQ / FASTA / BAM / VCF writers.
# --------------------------------------------------------------------------------------------


def _fastq_bytes(pairs: Sequence[ReadPair], read: int, index: str) -> bytes:
    lines = []
    for p in pairs:
        seq, qual = (p.r1, p.q1) if read == 1 else (p.r2, p.q2)
        lines.append(f"@{p.name} {read}:N:0:{index}\n{seq}\n+\n{qual}\n")
    return "".join(lines).encode("ascii")


def write_fastq_pair(folder: Path, sample: DemoSample, pairs: Sequence[ReadPair]) -> list[Path]:
    """R1 and R2 of each lane; the pairs are dealt to the lanes in order, read names saying which."""
    index = f"{sample.i7}+{sample.i5}"
    per_lane = -(-len(pairs) // sample.lanes)
    written = []
    for lane in range(1, sample.lanes + 1):
        chunk = [_on_lane(p, lane) for p in pairs[(lane - 1) * per_lane : lane * per_lane]]
        written += [_write_gzip(folder / sample.fastq_name(r, lane), _fastq_bytes(chunk, r, index)) for r in (1, 2)]
    return written


def _on_lane(pair: ReadPair, lane: int) -> ReadPair:
    # instrument:run:flowcell:LANE:tile:x:y
    fields = pair.name.split(":")
    fields[3] = str(lane)
    return replace(pair, name=":".join(fields))


def write_fasta(path: Path, reference: dict[str, str]) -> None:
    import pysam

    chunks = []
    for name, seq in reference.items():
        chunks.append(f">{name} synthetic demo contig\n")
        chunks.extend(seq[i : i + 60] + "\n" for i in range(0, len(seq), 60))
    _write_text(path, "".join(chunks))
    pysam.faidx(str(path))


def _md_and_nm(read: str, ref: str) -> tuple[str, int]:
    md, run, nm = [], 0, 0
    for a, b in zip(read, ref, strict=False):  # the reference may end before the read
        if a == b:
            run += 1
        else:
            md.append(f"{run}{b}")
            run, nm = 0, nm + 1
    md.append(str(run))
    return "".join(md), nm


def _segment(header: pysam.AlignmentHeader, name: str, flag: int, seq: str, qual: str) -> pysam.AlignedSegment:
    import pysam

    seg = pysam.AlignedSegment(header)
    seg.query_name = name
    seg.flag = flag
    seg.query_sequence = seq
    seg.query_qualities = pysam.qualitystring_to_array(qual)
    seg.set_tag("RG", TUMOR.name)
    return seg


def _aligned_pair(header: pysam.AlignmentHeader, pair: ReadPair, reference: dict[str, str]):
    """Two BAM records for a mapped pair, at the positions the reads were drawn from."""
    n, length, start = READ_LENGTH, pair.length, pair.start
    clip = max(0, n - length)  # adapter bases past the fragment end are soft-clipped
    aligned = n - clip
    contig = str(pair.contig)
    tid = header.get_tid(contig)
    ref = reference[contig]
    fwd_seq, fwd_qual = (pair.r1, pair.q1) if pair.r1_forward else (pair.r2, pair.q2)
    rev_seq, rev_qual = (pair.r2, pair.q2) if pair.r1_forward else (pair.r1, pair.q1)
    # Reverse-strand reads are stored reverse-complemented, qualities reversed.
    rev_seq, rev_qual = _revcomp(rev_seq), rev_qual[::-1]
    fwd_pos, rev_pos = start, start + length - aligned
    fwd_flag = 0x1 | 0x2 | 0x20 | (0x40 if pair.r1_forward else 0x80)
    rev_flag = 0x1 | 0x2 | 0x10 | (0x80 if pair.r1_forward else 0x40)
    fwd = _segment(header, pair.name, fwd_flag, fwd_seq, fwd_qual)
    fwd.cigartuples = [(0, aligned)] + ([(4, clip)] if clip else [])
    fwd_md, fwd_nm = _md_and_nm(fwd_seq[:aligned], ref[fwd_pos : fwd_pos + aligned])
    rev = _segment(header, pair.name, rev_flag, rev_seq, rev_qual)
    rev.cigartuples = ([(4, clip)] if clip else []) + [(0, aligned)]
    rev_md, rev_nm = _md_and_nm(rev_seq[clip:], ref[rev_pos : rev_pos + aligned])
    for seg, pos, mate_pos, tlen, md, nm in ((fwd, fwd_pos, rev_pos, length, fwd_md, fwd_nm), (rev, rev_pos, fwd_pos, -length, rev_md, rev_nm)):
        seg.reference_id = seg.next_reference_id = tid
        seg.reference_start, seg.next_reference_start = pos, mate_pos
        seg.template_length = tlen
        seg.mapping_quality = 60
        seg.set_tag("NM", nm)
        seg.set_tag("MD", md)
    return fwd, rev


def write_bam(path: Path, reference: dict[str, str], pairs: Sequence[ReadPair], workdir: Path) -> None:
    import pysam

    header = pysam.AlignmentHeader.from_dict(
        {
            "HD": {"VN": "1.6", "SO": "unsorted"},
            "SQ": [{"SN": name, "LN": len(seq)} for name, seq in reference.items()],
            "RG": [{"ID": TUMOR.name, "SM": TUMOR.name, "LB": f"{TUMOR.name}-lib1", "PL": "ILLUMINA", "PU": f"{FLOWCELL}.1.{TUMOR.i7}+{TUMOR.i5}"}],
            "PG": [{"ID": "demo-aligner", "PN": "basemount-py demo generator", "VN": "1"}],
        }
    )
    unsorted = workdir / "unsorted.bam"
    with pysam.AlignmentFile(str(unsorted), "wb", header=header) as out:
        for pair in pairs:
            if pair.contig is None:
                for flag, seq, qual in ((0x1 | 0x4 | 0x8 | 0x40, pair.r1, pair.q1), (0x1 | 0x4 | 0x8 | 0x80, pair.r2, pair.q2)):
                    out.write(_segment(header, pair.name, flag, seq, qual))
            else:
                for seg in _aligned_pair(header, pair, reference):
                    out.write(seg)
    # --no-PG: otherwise samtools records its command line (with temporary paths) in the header.
    path.parent.mkdir(parents=True, exist_ok=True)
    pysam.sort("--no-PG", "-o", str(path), str(unsorted))
    pysam.index(str(path))
    unsorted.unlink()


def write_vcf(path: Path, bam_path: Path, reference: dict[str, str], variants: list[Variant], workdir: Path) -> dict[str, int]:
    """Write a bgzipped, tabix-indexed VCF whose AD/DP are pileup counts from the BAM."""
    import pysam

    header = [
        "##fileformat=VCFv4.2",
        "##source=basemount-py demo generator (simulated calls)",
        "##reference=demo_reference.fa",
        *(f"##contig=<ID={name},length={len(seq)}>" for name, seq in reference.items()),
        '##INFO=<ID=DP,Number=1,Type=Integer,Description="Read depth at the locus">',
        '##INFO=<ID=SOMATIC,Number=0,Type=Flag,Description="Somatic variant (not in the normal)">',
        '##FILTER=<ID=LowDP,Description="Fewer than 3 reads or fewer than 2 alt reads">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        '##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allelic depths (ref, alt)">',
        '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read depth">',
        "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", TUMOR.name]),
    ]
    rows, stats = [], {"total": 0, "pass": 0, "somatic": 0}
    with pysam.AlignmentFile(str(bam_path)) as bam:
        for v in variants:
            counts = bam.count_coverage(v.contig, v.pos, v.pos + 1, quality_threshold=0)
            by_base = {b: counts[i][0] for i, b in enumerate("ACGT")}
            ref_n, alt_n = by_base[v.ref], by_base[v.alt]
            if alt_n == 0:
                continue  # a caller cannot see a variant no read carries
            depth = sum(by_base.values())
            ok = depth >= 3 and alt_n >= 2
            info = f"DP={depth}" + (";SOMATIC" if v.somatic else "")
            rows.append(
                "\t".join(
                    [
                        v.contig,
                        str(v.pos + 1),
                        ".",
                        v.ref,
                        v.alt,
                        str(min(99, 10 * alt_n)),
                        "PASS" if ok else "LowDP",
                        info,
                        "GT:AD:DP",
                        f"{v.genotype}:{ref_n},{alt_n}:{depth}",
                    ]
                )
            )
            stats["total"] += 1
            stats["pass"] += ok
            stats["somatic"] += v.somatic
    plain = workdir / "calls.vcf"
    _write_text(plain, "\n".join(header + rows) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    pysam.tabix_compress(str(plain), str(path), force=True)
    pysam.tabix_index(str(path), preset="vcf", force=True)
    plain.unlink()
    return stats


def _alignment_summary(bam_path: Path, reference: dict[str, str], calls: dict[str, int]) -> str:
    import pysam

    total = mapped = proper = aligned_bases = 0
    with pysam.AlignmentFile(str(bam_path)) as bam:
        for seg in bam.fetch(until_eof=True):
            total += 1
            if not seg.is_unmapped:
                mapped += 1
                proper += seg.is_proper_pair
                aligned_bases += seg.query_alignment_length
    genome = sum(len(s) for s in reference.values())
    rows = [
        ("sample", TUMOR.name),
        ("reference", "reference/demo_reference.fa"),
        ("total_reads", total),
        ("mapped_reads", mapped),
        ("mapped_pct", f"{100 * mapped / total:.2f}"),
        ("properly_paired_reads", proper),
        ("mean_coverage", f"{aligned_bases / genome:.2f}"),
        ("snv_calls", calls["total"]),
        ("snv_calls_pass", calls["pass"]),
        ("somatic_snv_calls", calls["somatic"]),
    ]
    return "metric,value\n" + "".join(f"{k},{v}\n" for k, v in rows)


# --------------------------------------------------------------------------------------------
# The run folder.
# --------------------------------------------------------------------------------------------

_LANES, _SURFACES, _SWATHS, _TILES = 2, 2, 2, 78
# One demo tile per surface gets base calls, filter and metrics records.
_DEMO_TILES = (1101, 2101)
_CLUSTERS_PER_TILE = 64
_QBINS = ((0, 2), (1, 12), (2, 23), (3, 37))  # NovaSeq's 4 quality bins: bin -> Q-score


def _run_info() -> str:
    tiles = "\n".join(
        f"          <Tile>{lane}_{surface}{swath}{tile:02d}</Tile>"
        for lane in range(1, _LANES + 1)
        for surface in range(1, _SURFACES + 1)
        for swath in range(1, _SWATHS + 1)
        for tile in range(1, _TILES + 1)
    )
    return f"""<?xml version="1.0"?>
<RunInfo xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" Version="5">
  <Run Id="{RUN_ID}" Number="{RUN_NUMBER}">
    <Flowcell>{FLOWCELL}</Flowcell>
    <Instrument>{INSTRUMENT}</Instrument>
    <Date>1/15/2024 8:02:11 AM</Date>
    <Reads>
      <Read Number="1" NumCycles="{READ_LENGTH}" IsIndexedRead="N" />
      <Read Number="2" NumCycles="{INDEX_LENGTH}" IsIndexedRead="Y" />
      <Read Number="3" NumCycles="{INDEX_LENGTH}" IsIndexedRead="Y" />
      <Read Number="4" NumCycles="{READ_LENGTH}" IsIndexedRead="N" />
    </Reads>
    <FlowcellLayout LaneCount="{_LANES}" SurfaceCount="{_SURFACES}" SwathCount="{_SWATHS}" TileCount="{_TILES}">
      <TileSet TileNamingConvention="FourDigit">
        <Tiles>
{tiles}
        </Tiles>
      </TileSet>
    </FlowcellLayout>
  </Run>
</RunInfo>
"""


def _run_parameters() -> str:
    return f"""<?xml version="1.0"?>
<RunParameters xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <Side>A</Side>
  <Application>NovaSeq Control Software</Application>
  <ApplicationVersion>1.7.5</ApplicationVersion>
  <RtaVersion>v3.4.4</RtaVersion>
  <RecipeVersion>1.7.0</RecipeVersion>
  <ExperimentName>{EXPERIMENT_NAME}</ExperimentName>
  <RunStartDate>240115</RunStartDate>
  <RunId>{RUN_ID}</RunId>
  <RunNumber>{RUN_NUMBER}</RunNumber>
  <InstrumentName>{INSTRUMENT}</InstrumentName>
  <RfidsInfo>
    <FlowCellSerialBarcode>{FLOWCELL}</FlowCellSerialBarcode>
    <FlowCellMode>SP</FlowCellMode>
    <SbsSerialBarcode>NV0123456-RGSBS</SbsSerialBarcode>
    <ClusterSerialBarcode>NV0123457-RGCPE</ClusterSerialBarcode>
  </RfidsInfo>
  <Read1NumberOfCycles>{READ_LENGTH}</Read1NumberOfCycles>
  <Read2NumberOfCycles>{READ_LENGTH}</Read2NumberOfCycles>
  <IndexRead1NumberOfCycles>{INDEX_LENGTH}</IndexRead1NumberOfCycles>
  <IndexRead2NumberOfCycles>{INDEX_LENGTH}</IndexRead2NumberOfCycles>
  <WorkflowType>NovaSeqStandard</WorkflowType>
  <OutputRunFolder>\\\\demo-nas\\runs\\{RUN_ID}</OutputRunFolder>
</RunParameters>
"""


def sample_sheet() -> str:
    rows = "".join(f"{s.name},{s.i7},{s.i5},{s.project}\n" for s in SAMPLES if s.from_demo_run)
    return (
        "[Header]\nFileFormatVersion,2\n"
        f"RunName,{EXPERIMENT_NAME}\nInstrumentPlatform,NovaSeq\nInstrumentType,NovaSeq6000\n\n"
        f"[Reads]\nRead1Cycles,{READ_LENGTH}\nRead2Cycles,{READ_LENGTH}\n"
        f"Index1Cycles,{INDEX_LENGTH}\nIndex2Cycles,{INDEX_LENGTH}\n\n"
        "[BCLConvert_Settings]\nSoftwareVersion,4.2.7\n"
        f"AdapterRead1,{ADAPTER_R1}\nAdapterRead2,{ADAPTER_R2}\n"
        "FastqCompressionFormat,gzip\n\n"
        "[BCLConvert_Data]\nSample_ID,Index,Index2,Sample_Project\n" + rows
    )


def _cbcl(tiles: Iterable[tuple[int, bytes, bytes]]) -> bytes:
    """A CBCL file: header, then one gzip block per tile of 4-bit (2-bit base, 2-bit qbin) calls."""
    tiles = list(tiles)
    header_size = 2 + 4 + 1 + 1 + 4 + 8 * len(_QBINS) + 4 + 16 * len(tiles) + 1
    head = struct.pack("<HIBBI", 1, header_size, 2, 2, len(_QBINS))
    head += b"".join(struct.pack("<II", b, q) for b, q in _QBINS)
    head += struct.pack("<I", len(tiles))
    blocks = []
    for tile, bases, qbins in tiles:
        nibbles = [b | (q << 2) for b, q in zip(bases, qbins, strict=False)]
        if len(nibbles) % 2:
            nibbles.append(0)
        packed = bytes(nibbles[i] | (nibbles[i + 1] << 4) for i in range(0, len(nibbles), 2))
        block = gzip.compress(packed, compresslevel=6, mtime=0)
        head += struct.pack("<IIII", tile, len(bases), len(packed), len(block))
        blocks.append(block)
    return head + b"\x00" + b"".join(blocks)  # trailing byte: non-PF clusters not excluded


def write_run_files(files: Path) -> None:
    rng = random.Random("demo:run")
    _write_text(files / "RunInfo.xml", _run_info())
    _write_text(files / "RunParameters.xml", _run_parameters())
    _write_text(files / "SampleSheet.csv", sample_sheet())
    _write_text(files / "RTAComplete.txt", "")
    _write_text(files / "CopyComplete.txt", "")
    lanes, cycles = range(1, _LANES + 1), range(1, 4)
    # InterOp, in the published binary layouts: version byte, record-size byte, records.
    tile_records = b"".join(
        struct.pack("<HHHf", lane, tile, code, value)
        for lane in lanes
        for tile in _DEMO_TILES
        for code, value in ((100, 2.61e6), (101, 2.12e6), (102, 4.1e6), (103, 3.33e6))
    )
    _write_bytes(files / "InterOp" / "TileMetricsOut.bin", bytes([2, 10]) + tile_records)
    error_records = b"".join(
        struct.pack("<HHHfIIIII", lane, tile, cycle, round(rng.uniform(0.1, 0.4), 3), *(rng.randint(0, 5000) for _ in range(5)))
        for lane in lanes
        for tile in _DEMO_TILES
        for cycle in cycles
    )
    _write_bytes(files / "InterOp" / "ErrorMetricsOut.bin", bytes([3, 30]) + error_records)
    stamp = 638409229310000000  # fixed .NET ticks for 2024-01-15, so output never varies
    extraction_records = b"".join(
        struct.pack(
            "<HHH4f4HQ",
            lane,
            tile,
            cycle,
            *(round(rng.uniform(2.4, 3.1), 2) for _ in range(4)),  # FWHM per channel
            *(rng.randint(800, 4000) for _ in range(4)),
            stamp,
        )  # intensity per channel
        for lane in lanes
        for tile in _DEMO_TILES
        for cycle in cycles
    )
    _write_bytes(files / "InterOp" / "ExtractionMetricsOut.bin", bytes([2, 38]) + extraction_records)
    # Cluster locations, pass-filter flags and base calls for the first cycles of lane 1.
    n = _CLUSTERS_PER_TILE
    locs = struct.pack("<IfI", 1, 1.0, n) + b"".join(struct.pack("<ff", rng.uniform(0, 3200), rng.uniform(0, 3700)) for _ in range(n))
    _write_bytes(files / "Data" / "Intensities" / "s.locs", locs)
    basecalls = files / "Data" / "Intensities" / "BaseCalls" / "L001"
    for tile in _DEMO_TILES:
        flags = bytes(1 if rng.random() < 0.82 else 0 for _ in range(n))
        _write_bytes(basecalls / f"s_1_{tile}.filter", struct.pack("<III", 0, 3, n) + flags)
    for cycle in cycles:
        for surface, tile in enumerate(_DEMO_TILES, start=1):
            bases = bytes(rng.randrange(4) for _ in range(n))
            qbins = bytes(3 if rng.random() < 0.9 else rng.randrange(3) for _ in range(n))
            _write_bytes(basecalls / f"C{cycle}.1" / f"L001_{surface}.cbcl", _cbcl([(tile, bases, qbins)]))


# --------------------------------------------------------------------------------------------
# Entities.
# --------------------------------------------------------------------------------------------


class _Builder:
    """Writes the account into `root`, remembering which date each entity folder carries."""

    def __init__(self, root: Path, workdir: Path):
        self.root = root
        self.workdir = workdir
        self.dates: dict[Path, datetime] = {Path("."): DATE_ACCOUNT}
        self.reference = make_reference()
        self.variants = make_variants(self.reference)
        self.reads: dict[str, list[ReadPair]] = {}

    def entity(self, rel: str, when: datetime, fields: dict | None = None) -> Path:
        folder = self.root / rel
        folder.mkdir(parents=True, exist_ok=True)
        self.dates[Path(rel)] = when
        if fields is not None:
            _write_json(folder / ".entity.json", fields)
        return folder

    def build(self) -> None:
        _write_json(
            self.root / "account.json",
            {
                "User": {"Id": "11001100", "Name": USER_NAME, "Email": "demo.user@example.com"},
                "AccessToken": ACCESS_TOKEN,
            },
        )
        self.projects()
        for sample in SAMPLES:
            self.sample(sample)
        self.biosamples()
        self.run()
        self.alignment()
        self.qc_reports()
        self.large_output()

    def projects(self) -> None:
        self.entity("Projects", DATE_ACCOUNT)
        self.entity(
            f"Projects/{PROJECT_WGS}",
            DATE_ACCOUNT,
            {
                "Description": "Whole-genome sequencing of NA12878 (synthetic demo data), including a re-sequenced library.",
                "DateCreated": _bs_date(DATE_ACCOUNT),
            },
        )
        self.entity(
            f"Projects/{PROJECT_TN}",
            DATE_ACCOUNT,
            {
                "Description": "Matched tumour/normal pair with alignment and variant calls (synthetic demo data).",
                "DateCreated": _bs_date(DATE_ACCOUNT),
            },
        )

    def sample(self, s: DemoSample) -> None:
        pairs = simulate_pairs(self.reference, self.variants[s.individual], f"demo:reads:{s.folder}", BAM_PAIRS if s is TUMOR else PAIRS_PER_SAMPLE, s.flowcell)
        self.reads[s.folder] = pairs
        fastq_pairs = pairs[:PAIRS_PER_SAMPLE]  # the tumour BAM aligns a superset of its FASTQs
        fields = {
            "Name": s.name,
            "SampleId": s.name,
            "SampleNumber": s.number,
            "ExperimentName": EXPERIMENT_NAME if s.from_demo_run else "Demo Rerun 2024-01-22",
            "NumReadsRaw": len(fastq_pairs),
            "NumReadsPF": len(fastq_pairs),
            "IsPairedEnd": True,
            "Read1": READ_LENGTH,
            "Read2": READ_LENGTH,
            "Status": "Complete",
            "StatusSummary": "",
            "DateCreated": _bs_date(s.date),
            "AppSession": {"Name": s.session, "Status": "Complete"},
        }
        if s.from_demo_run:
            fields["Properties"] = [{"Type": "run[]", "Name": "Input.Runs", "Items": [{"Ref": f"Runs/{RUN_NAME}"}]}]
        folder = self.entity(f"Projects/{s.project}/Samples/{s.folder}", s.date, fields)
        files = folder / "Files" / s.subdir if s.subdir else folder / "Files"
        fastqs = write_fastq_pair(files, s, fastq_pairs)
        # v2 view of the same data: a FASTQ dataset (self-contained copies) of the biosample.
        dataset = self.entity(
            f"Projects/{s.project}/Datasets/{s.folder}",
            s.date,
            {
                "Name": s.name,
                "DatasetType": {"Id": "common.fastq", "Name": "FASTQ"},
                "BioSample": s.name,
                "DateCreated": _bs_date(s.date),
                "QcStatus": "QcPassed",
            },
        )
        for fastq in fastqs:
            (dataset / "Files").mkdir(exist_ok=True)
            shutil.copyfile(fastq, dataset / "Files" / fastq.name)

    def biosamples(self) -> None:
        self.entity("BioSamples", DATE_ACCOUNT)
        seen = set()
        for s in SAMPLES:
            if s.name not in seen:
                seen.add(s.name)
                self.entity(
                    f"BioSamples/{s.name}",
                    DATE_RUN_START,
                    {"DefaultProject": s.project, "Status": "Active", "LabStatus": "Sequenced", "DateCreated": _bs_date(DATE_RUN_START)},
                )

    def run(self) -> None:
        self.entity("Runs", DATE_ACCOUNT)
        run_samples = [s for s in SAMPLES if s.from_demo_run]
        folder = self.entity(
            f"Runs/{RUN_NAME}",
            DATE_RUN_DONE,
            {
                "ExperimentName": EXPERIMENT_NAME,
                "Status": "Complete",
                "Number": RUN_NUMBER,
                "InstrumentName": INSTRUMENT,
                "InstrumentType": "NovaSeq6000",
                "PlatformName": "NovaSeq",
                "FlowcellBarcode": FLOWCELL,
                "ReagentBarcode": "NV0123456-RGSBS",
                "Workflow": "GenerateFASTQ",
                "DateCreated": _bs_date(DATE_RUN_START),
                "DateModified": _bs_date(DATE_RUN_DONE),
                "SequencingStats": {
                    "NumCyclesRead1": READ_LENGTH,
                    "NumCyclesRead2": READ_LENGTH,
                    "NumCyclesIndex1": INDEX_LENGTH,
                    "NumCyclesIndex2": INDEX_LENGTH,
                    "NumLanes": _LANES,
                    "NumSurfaces": _SURFACES,
                    "NumSwathsPerLane": _SWATHS,
                    "NumTilesPerSwath": _TILES,
                    "IsIndexed": True,
                    "Chemistry": "NovaSeq SP",
                    "PercentGtQ30": 91.84,
                    "PercentPf": 81.27,
                    "PercentAligned": 0.62,
                    "ErrorRate": 0.27,
                    "ClusterDensity": 2610.0,
                    "YieldTotal": 162.4,
                    "MaxCycleCalled": 2 * READ_LENGTH + 2 * INDEX_LENGTH,
                },
                "Properties": [
                    {"Type": "sample[]", "Name": "Output.Samples", "Items": [_sample_ref(s) for s in run_samples]},
                    {"Type": "string", "Name": "Input.sample-sheet", "Description": "", "Content": sample_sheet()},
                ],
            },
        )
        write_run_files(folder / "Files")

    def alignment(self) -> None:
        normal = SAMPLES[5]
        folder = self.entity(
            f"Projects/{PROJECT_TN}/AppResults/{APP_ALIGN}",
            DATE_ANALYSIS,
            {
                "Description": "Tumour alignment (BAM) and SNV calls (VCF) against the demo reference.",
                "Status": "Complete",
                "DateCreated": _bs_date(DATE_ANALYSIS),
                "AppSession": {"Name": ANALYSIS_SESSION, "Status": "Complete"},
                "Properties": [
                    {"Type": "string", "Name": "Input.reference-genome", "Description": "", "Content": "demo_reference.fa (synthetic, 3 contigs)"},
                    {"Type": "sample[]", "Name": "Input.Samples", "Items": [_sample_ref(TUMOR), _sample_ref(normal)]},
                ],
            },
        )
        files = folder / "Files"
        write_fasta(files / "reference" / "demo_reference.fa", self.reference)
        bam = files / f"{TUMOR.name}.bam"
        write_bam(bam, self.reference, self.reads[TUMOR.folder], self.workdir)
        calls = write_vcf(files / f"{TUMOR.name}.vcf.gz", bam, self.reference, self.variants["tumor"], self.workdir)
        _write_text(files / f"{TUMOR.name}.summary.csv", _alignment_summary(bam, self.reference, calls))

    def qc_reports(self) -> None:
        samples = [s for s in SAMPLES if s.project == PROJECT_TN]
        folder = self.entity(
            f"Projects/{PROJECT_TN}/AppResults/{APP_QC}",
            DATE_ANALYSIS,
            {
                "Description": "Read-level QC of the tumour/normal FASTQs.",
                "Status": "Complete",
                "DateCreated": _bs_date(DATE_ANALYSIS),
                "AppSession": {"Name": ANALYSIS_SESSION, "Status": "Complete"},
                "Properties": [
                    {"Type": "string", "Name": "Input.qc-profile", "Description": "", "Content": "standard"},
                    {"Type": "sample[]", "Name": "Input.Samples", "Items": [_sample_ref(s) for s in samples]},
                ],
            },
        )
        files = folder / "Files"
        rows = []
        for s in samples:
            pairs = self.reads[s.folder][:PAIRS_PER_SAMPLE]
            for read in (1, 2):
                seqs = [p.r1 if read == 1 else p.r2 for p in pairs]
                quals = [p.q1 if read == 1 else p.q2 for p in pairs]
                gc = sum(seq.count("G") + seq.count("C") for seq in seqs) / sum(map(len, seqs))
                q30 = sum(q.count("F") for q in quals) / sum(map(len, quals))
                fname = s.fastq_name(read)
                rows.append((fname, len(pairs), 100 * gc, 100 * q30))
                _write_text(
                    files / "fastqc" / fname.replace(".fastq.gz", "_fastqc.html"),
                    _html(
                        f"FastQC: {fname}",
                        [("Total sequences", len(pairs)), ("Sequence length", READ_LENGTH), ("%GC", f"{100 * gc:.1f}"), ("% bases >= Q30", f"{100 * q30:.1f}")],
                    ),
                )
        _write_text(files / "multiqc_report.html", _html("QC summary", [(f, f"{n} reads, {gc:.1f}% GC, {q:.1f}% >=Q30") for f, n, gc, q in rows]))
        _write_text(
            files / "logs" / "pipeline.log", "".join(f"2024-01-16 10:{minute:02d}:00 INFO fastqc finished {f}\n" for minute, (f, *_rest) in enumerate(rows))
        )
        # A dotfile inside Files/: a real file the API lists (only .entity.json is metadata).
        checksums = sorted(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(files).as_posix()}\n" for p in files.rglob("*") if p.is_file())
        _write_text(files / ".checksums.md5", "".join(checksums))

    def large_output(self) -> None:
        # No AppSession on purpose: the emulator then gives the result a default session.
        folder = self.entity(
            f"Projects/{PROJECT_TN}/AppResults/{APP_LARGE}",
            DATE_LARGE,
            {
                "Description": "A large output whose bytes are synthesised on the fly by the emulator.",
                "DateCreated": _bs_date(DATE_LARGE),
            },
        )
        _write_json(folder / "Files" / "big.bin.synthetic.json", {"size": SYNTHETIC_SIZE, "seed": SYNTHETIC_SEED})
        _write_text(folder / "Files" / "README.txt", "big.bin is a 256 MiB synthetic file: the emulator computes its bytes, nothing is stored on disk.\n")

    def stamp_mtimes(self) -> None:
        """Give every file and directory the date of its nearest enclosing entity."""

        def when(rel: Path) -> datetime:
            for candidate in (rel, *rel.parents):
                if candidate in self.dates:
                    return self.dates[candidate]
            return DATE_ACCOUNT

        # Bottom-up, because setting a child's mtime does not touch the parent but creating
        # files does: directories are stamped after everything inside them exists.
        for dirpath, _dirs, filenames in os.walk(self.root, topdown=False):
            directory = Path(dirpath)
            for name in filenames:
                path = directory / name
                t = calendar.timegm(when(path.relative_to(self.root)).timetuple())
                os.utime(path, (t, t))
            t = calendar.timegm(when(directory.relative_to(self.root)).timetuple())
            os.utime(directory, (t, t))


def _html(title: str, rows: Sequence[tuple[object, object]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>\n" for k, v in rows)
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title></head>\n<body><h1>{html.escape(title)}</h1>\n<table>\n{body}</table>\n"
        "</body></html>\n"
    )


# --------------------------------------------------------------------------------------------
# Public entry points.
# --------------------------------------------------------------------------------------------


def generate_demo_account(dest: Path) -> Path:
    """Write the demo account folder into `dest` (absent or empty) and return `dest`.

    Raises ValueError if `dest` exists and is not an empty directory.
    """
    dest = Path(os.path.abspath(dest))  # "." and "sub/.." need a real name for the staging dir
    existed = dest.exists() or dest.is_symlink()
    if existed:
        if not dest.is_dir():
            raise ValueError(f"{dest} exists and is not a directory")
        if any(dest.iterdir()):
            raise ValueError(f"{dest} is not empty; give a new or empty directory")
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
    # Build in a hidden staging folder, then rename into place: an interrupted run leaves no
    # half-written account.  An existing (empty) dest keeps its inode, permissions and any
    # mount on it, so we stage inside it and move the top-level entries up.
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest if existed else dest.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="demo-data-") as work:
            builder = _Builder(staging, Path(work))
            builder.build()
            builder.stamp_mtimes()
        if existed:
            for child in sorted(staging.iterdir()):
                os.rename(child, dest / child.name)
            staging.rmdir()
        else:
            os.rename(staging, dest)
        stamp = calendar.timegm(DATE_ACCOUNT.timetuple())
        os.utime(dest, (stamp, stamp))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


@dataclass(frozen=True)
class AccountSummary:
    projects: int
    samples: int
    files: int  # API files (everything under an entity's Files/), synthetic ones included
    disk_bytes: int  # bytes stored on disk for the whole folder
    synthetic_bytes: int  # bytes served from .synthetic.json descriptions


def summarize(account: Path) -> AccountSummary:
    projects = [p for p in (account / "Projects").iterdir() if p.is_dir()]
    samples = sum(1 for p in projects for s in (p / "Samples").glob("*") if s.is_dir())
    files = disk = synthetic = 0
    for path in account.rglob("*"):
        if not path.is_file():
            continue
        disk += path.stat().st_size
        if "Files" in path.relative_to(account).parts:
            files += 1
            if path.name.endswith(".synthetic.json"):
                synthetic += int(json.loads(path.read_text())["size"])
    return AccountSummary(len(projects), samples, files, disk, synthetic)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", type=Path, help="where to write the demo account folder (must be new or empty)")


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """`basemount-py demo-data DIR`: write the demo account and print a one-line summary."""
    import pysam

    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="basemount-py demo-data", description="Write the demo BaseSpace account folder.")
        add_arguments(parser)
        args = parser.parse_args(args)
    dest = Path(args.dir)
    try:
        generate_demo_account(dest)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, pysam.SamtoolsError) as exc:
        print(f"error: could not write the demo account to {dest}: {exc}", file=sys.stderr)
        return 1
    s = summarize(dest)
    print(
        f"Demo account written to {dest}: {s.projects} projects, {s.samples} samples, "
        f"{s.files} files, {s.disk_bytes / 1e6:.1f} MB on disk "
        f"(+{s.synthetic_bytes // 2**20} MiB synthetic)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
