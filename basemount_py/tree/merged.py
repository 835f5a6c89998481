"""Biosample-level FASTQs: which files of a biosample's datasets make up ``Merged/<b>_R1.fastq.gz``.

Pure logic (no I/O): given the biosample's datasets, each with its file listing, decide the parts
of every merged read file, in order, or say why the files cannot be paired with certainty.

* **Which files.** Datasets whose type is a FASTQ type (``DatasetType.Id`` or one of its
  ``ConformsToIds`` names ``fastq``, e.g. ``illumina.fastq.v1.8`` / ``common.fastq``). In them,
  every ``*.fastq.gz`` file must follow Illumina naming,
  ``<sample>_S<n>[_L<lane>]_<R1|R2|I1|I2>_<chunk>.fastq.gz``; other files (JSON, checksums,
  reports) are ignored, but a FASTQ-looking name that does not follow it (``x.fq.gz``,
  an uncompressed ``.fastq``) makes the biosample unpairable: nothing is guessed.
* **Pairing.** Within a dataset, files are grouped by (sample, S-number, lane, chunk); every group
  of the biosample must hold the same reads (R1 alone, or R1 and R2). A group that lacks a mate
  names the unmatched file. Index reads (I1/I2) are merged only when every group has them.
* **Order.** Datasets by date (``DateCreated``), then run (the ``Input.Runs`` property when the
  listing carries it), then name and Id; within a dataset by lane, then chunk, then sample. The
  same order serves every read, so record *i* of R1 and record *i* of R2 are mates.

Concatenated gzip members are one valid gzip stream (RFC 1952 §2.2), so the byte concatenation
of the parts is itself a ``.fastq.gz`` that zcat, htslib, bwa, minimap2 and seqkit read whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .nodes import entity_time, parse_time, safe_size

MATE_READS = ("R1", "R2")
INDEX_READS = ("I1", "I2")
ILLUMINA_FASTQ = re.compile(r"^(?P<sample>.+)_S(?P<number>\d+)(?:_L(?P<lane>\d{3}))?_(?P<read>[RI][12])_(?P<chunk>\d{3})\.fastq\.gz$")
# Names that claim to be FASTQ: these must follow ILLUMINA_FASTQ, or the biosample is unpairable.
FASTQ_LIKE = re.compile(r"\.(fastq|fq)(\.[A-Za-z0-9]+)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Part:
    """One FASTQ.gz file of a merged read file."""

    path: str  # mount path relative to the biosample folder: Datasets/<dataset>/Files/<...>
    file_id: str
    size: int
    mtime: float
    dataset_id: str
    dataset_date: str
    archived: bool = False  # IsArchived: its bytes cannot be read until restored

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass
class MergePlan:
    """The parts of each merged read (``"R1" -> [Part, ...]``), or the reason there are none."""

    reads: dict[str, list[Part]] = field(default_factory=dict)
    problem: str = ""  # non-empty: the files cannot be paired with certainty (no merged files)
    notes: list[str] = field(default_factory=list)  # index reads left out, no FASTQ datasets...


@dataclass(frozen=True)
class DatasetFiles:
    """A dataset as its listing item, its entry name under ``Datasets/``, and its files as
    ``(path components below Files/, file item)`` pairs (entry names, as the mount shows them)."""

    item: dict
    name: str
    files: list[tuple[tuple[str, ...], dict]]


def is_fastq_dataset(item: dict) -> bool:
    dtype = found if isinstance(found := item.get("DatasetType"), dict) else {}
    conforms = ids if isinstance(ids := dtype.get("ConformsToIds"), list) else []
    return any("fastq" in str(t).lower() for t in [dtype.get("Id"), *conforms])


def _run_name(item: dict) -> str:
    """The dataset's run, when the listing carries the ``Input.Runs`` property (include=properties)."""
    props = found if isinstance(found := item.get("Properties"), dict) else {}
    for prop in props.get("Items") or []:
        if isinstance(prop, dict) and prop.get("Name") == "Input.Runs":
            runs = prop.get("RunItems") or prop.get("Items") or []
            if runs and isinstance(runs[0], dict):
                return str(runs[0].get("Name") or runs[0].get("Id") or "")
    return ""


def dataset_order(item: dict) -> tuple:
    return (parse_time(item.get("DateCreated")), _run_name(item), str(item.get("Name") or ""), str(item.get("Id")))


def plan_merge(datasets: list[DatasetFiles]) -> MergePlan:
    """Order and pair the FASTQ files of a biosample's datasets (see the module docstring)."""
    plan = MergePlan()
    # group key -> read -> Part, groups in merge order
    groups: list[tuple[str, dict[str, Part]]] = []
    fastq_datasets = sorted((d for d in datasets if is_fastq_dataset(d.item)), key=lambda d: dataset_order(d.item))
    if not fastq_datasets:
        plan.notes.append("this biosample has no FASTQ dataset")
        return plan
    for ds in fastq_datasets:
        in_dataset: dict[tuple, dict[str, Part]] = {}
        with_lane = without_lane = ""
        for components, item in ds.files:
            name = components[-1]
            path = "/".join(("Datasets", ds.name, "Files", *components))
            match = ILLUMINA_FASTQ.match(name)
            if match is None:
                if FASTQ_LIKE.search(name):
                    plan.problem = (
                        f"unmatched file {path}: its name does not follow Illumina naming (<sample>_S<n>_L<lane>_R<1|2>_001.fastq.gz), so it cannot be paired"
                    )
                    return plan
                continue  # not a FASTQ (a report, checksums...)
            if match["lane"] is None:
                without_lane = without_lane or path
            else:
                with_lane = with_lane or path
            if with_lane and without_lane:
                plan.problem = (
                    f"mixed naming in dataset {ds.name}: {with_lane} names a lane and {without_lane} does not, so their reads cannot be paired with certainty"
                )
                return plan
            key = (int(match["lane"] or 0), int(match["chunk"]), match["sample"], int(match["number"]))
            reads = in_dataset.setdefault(key, {})
            read = match["read"]
            if read in reads:
                plan.problem = f"ambiguous files: {reads[read].path} and {path} are both {read} of one lane"
                return plan
            reads[read] = Part(
                path=path,
                file_id=str(item["Id"]),
                size=safe_size(item.get("Size")),
                mtime=entity_time(item),
                dataset_id=str(ds.item.get("Id")),
                dataset_date=str(ds.item.get("DateCreated") or ""),
                archived=item.get("IsArchived") is True,
            )
        for key in sorted(in_dataset):
            groups.append((ds.name, in_dataset[key]))
    if not groups:
        plan.notes.append("the FASTQ datasets of this biosample hold no FASTQ.gz file")
        return plan

    mates = sorted({r for _, reads in groups for r in reads if r in MATE_READS})
    if "R1" not in mates:
        first = next(iter(groups[0][1].values()))
        plan.problem = f"unmatched file {first.path}: no R1 file beside it"
        return plan
    for _, reads in groups:
        missing = [r for r in mates if r not in reads]
        if missing:
            present = next((reads[r] for r in mates if r in reads), None) or next(iter(reads.values()))
            plan.problem = f"unmatched file {present.path}: no {' or '.join(missing)} mate in the same dataset and lane"
            return plan
    for read in mates:
        plan.reads[read] = [reads[read] for _, reads in groups]
    for read in INDEX_READS:
        having = [reads for _, reads in groups if read in reads]
        if having and len(having) == len(groups):
            plan.reads[read] = [reads[read] for reads in having]
        elif having:
            lacking = next(reads for _, reads in groups if read not in reads)
            plan.notes.append(f"{read} left out: {lacking[mates[0]].path} has no {read} file beside it")
    return plan


def merged_name(biosample_name: str, read: str) -> str:
    return f"{biosample_name}_{read}.fastq.gz"


def manifest_text(biosample: dict, file_names: dict[str, str], plan: MergePlan) -> str:
    """``.manifest``: the parts of each merged file in order, one tab-separated line per part.

    Paths are relative to the ``Merged/`` folder, so ``cat`` of them in order from there gives the
    merged file's bytes."""
    lines = [
        f"# Merged FASTQs of biosample {biosample.get('BioSampleName', '')} ({biosample.get('Id', '')}):",
        "# parts in order (dataset date, run, lane); each merged file is their byte concatenation.",
    ]
    if plan.problem:
        lines.append(f"# no merged files: {plan.problem}")
    lines += [f"# {note}" for note in plan.notes]
    lines.append("# merged_file\tpart\tpath\tfile_id\tsize\tdataset_id\tdataset_date")
    for read, parts in plan.reads.items():
        for number, part in enumerate(parts, 1):
            lines.append(f"{file_names[read]}\t{number}\t../{part.path}\t{part.file_id}\t{part.size}\t{part.dataset_id}\t{part.dataset_date}")
    return "\n".join(lines) + "\n"
