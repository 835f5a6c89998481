"""The mounted tree through a real kernel mount against the real emulator (demo account)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import sha256_file


def files_dirs(account: Path):
    """(account Files folder, its mount-relative path) for every entity with files."""
    for files in account.rglob("Files"):
        if files.is_dir() and not any(part.startswith(".") for part in files.relative_to(account).parts):
            yield files, files.relative_to(account)


def served_name(name: str) -> str:
    return name[: -len(".synthetic.json")] if name.endswith(".synthetic.json") else name


def entity_names(account: Path, folder: Path) -> dict[str, str]:
    """Folder name -> name the API reports (an .entity.json Name overrides)."""
    out = {}
    for child in folder.iterdir():
        spec = child / ".entity.json"
        name = child.name
        if spec.exists():
            name = json.loads(spec.read_text()).get("Name", name)
        out[child.name] = name
    return out


def test_top_level(demo_mount):
    assert sorted(os.listdir(demo_mount.mountpoint)) == [".Trash", ".commands", "BioSamples", "Projects", "README", "Runs"]
    assert "Projects" in demo_mount.path("README").read_text()


def test_made_up_folders_are_dated_by_the_mount_not_1970(demo_mount):
    """The root and its folders have no server date: they show when the mount started."""
    started = demo_mount.path().stat().st_mtime
    assert time.time() - 3600 < started <= time.time() + 1  # a date of this run, not the epoch
    for name in ("Projects", "Runs", "BioSamples", ".Trash", "README"):
        assert demo_mount.path(name).stat().st_mtime == started, name


def test_files_equal_account_folder(demo_account, demo_mount):
    """Every Files/ tree: same names, sizes, mtimes and bytes as the account folder."""
    checked = 0
    for files, rel in files_dirs(demo_account):
        entity_dir = files.parent
        # The mount names entities by their API Name; map the folder path to the mount path.
        mount_parts = []
        walk = demo_account
        for part in rel.parts[:-1]:
            names = entity_names(demo_account, walk)
            mount_parts.append(names.get(part, part))
            walk = walk / part
        mounted = demo_mount.path(*mount_parts, "Files")
        if len(set(entity_names(demo_account, entity_dir.parent).values())) < len(list(entity_dir.parent.iterdir())):
            continue  # duplicate names: covered by test_duplicate_names
        for src in sorted(files.rglob("*")):
            if src.is_dir():
                continue
            relpath = src.relative_to(files)
            dst = mounted / relpath.parent / served_name(relpath.name)
            st = os.stat(dst)
            if src.name.endswith(".synthetic.json"):
                assert st.st_size == json.loads(src.read_text())["size"]
                continue
            assert st.st_size == src.stat().st_size, dst
            assert int(st.st_mtime) == int(src.stat().st_mtime), dst
            assert sha256_file(dst) == sha256_file(src), dst
            checked += 1
        listed = sorted(str(p.relative_to(mounted)) for p in mounted.rglob("*"))
        expected = sorted(
            str(p.relative_to(files).parent / served_name(p.name)).removeprefix("./") for p in files.rglob("*")
        )
        assert listed == expected
    assert checked > 10


def test_diff_r_of_a_sample(demo_account, demo_mount):
    project = next(p for p in (demo_account / "Projects").iterdir())
    names = entity_names(demo_account, project / "Samples")
    folder, name = next((f, n) for f, n in sorted(names.items()) if list(names.values()).count(n) == 1)
    result = subprocess.run(
        ["diff", "-r", str(project / "Samples" / folder / "Files"), str(demo_mount.path("Projects", project.name, "Samples", name, "Files"))],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rsync_copies_exactly_and_a_second_run_transfers_nothing(demo_account, demo_mount, tmp_path):
    """rsync -a out of the mount: same bytes and mtimes as the source; sizes and mtimes are stable,
    so an incremental rsync (the usual way core facilities pull data) has nothing left to do."""
    project = next(p for p in sorted((demo_account / "Projects").iterdir()) if (p / "Samples").is_dir())
    names = entity_names(demo_account, project / "Samples")
    folder, name = next((f, n) for f, n in sorted(names.items()) if list(names.values()).count(n) == 1)
    source = demo_mount.path("Projects", project.name, "Samples", name, "Files")
    copy = tmp_path / "copy"
    subprocess.run(["rsync", "-a", f"{source}/", f"{copy}/"], check=True, timeout=120)
    original = project / "Samples" / folder / "Files"
    result = subprocess.run(["diff", "-r", str(original), str(copy)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for src in original.rglob("*"):
        if src.is_file():
            assert int((copy / src.relative_to(original)).stat().st_mtime) == int(src.stat().st_mtime), src
    again = subprocess.run(["rsync", "-a", "-i", f"{source}/", f"{copy}/"], capture_output=True, text=True, check=True, timeout=120)
    assert again.stdout == "", again.stdout


def test_hidden_files_and_xattrs(demo_mount):
    projects = demo_mount.path("Projects")
    name = sorted(p for p in os.listdir(projects) if not p.startswith("."))[0]
    project = projects / name
    pid = (project / ".id").read_text().strip()
    assert pid.isdigit()
    assert (project / ".type").read_text().strip() == "projects"
    assert (project / ".name").read_text().strip() == name
    body = json.loads((project / ".json").read_text())
    assert body["Response"]["Id"] == pid and body["Response"]["Name"] == name
    assert (project / ".href").read_text().strip() == f"v1pre3/projects/{pid}"
    curl = (project / ".curl").read_text()
    assert "$BASESPACE_ACCESS_TOKEN" in curl and demo_mount.env["BASESPACE_ACCESS_TOKEN"] not in curl
    assert (project / ".error").read_text() == ""
    # hidden .id.<id> link beside the entity
    assert os.readlink(projects / f".id.{pid}") == name
    assert os.path.samefile(projects / f".id.{pid}" / ".id", project / ".id")
    # list folder .json is the whole listing in one envelope
    listing = json.loads((projects / ".json").read_text())["Response"]
    assert listing["TotalCount"] == len(listing["Items"]) >= 2
    assert os.getxattr(project, "user.basespace.id").decode() == pid
    assert os.getxattr(project, "user.basespace.type").decode() == "projects"
    assert os.getxattr(project, "user.basespace.href").decode() == f"v1pre3/projects/{pid}"
    # files: xattrs and the sneaky Files.metadata/<path>/ folder
    sample = next(p for p in (project / "Samples").iterdir() if not p.name.startswith("."))
    fastq = next(p for p in (sample / "Files").rglob("*.fastq.gz"))
    rel = fastq.relative_to(sample / "Files")
    fid = os.getxattr(fastq, "user.basespace.id").decode()
    assert os.getxattr(fastq, "user.basespace.type") == b"files"
    assert "Files.metadata" not in os.listdir(sample)
    meta = sample / "Files.metadata" / rel
    assert (meta / ".id").read_text().strip() == fid
    assert json.loads((meta / ".json").read_text())["Response"]["Size"] == fastq.stat().st_size
    assert (sample / "SampleProperties").read_text().startswith("Name: ")


def test_duplicate_sample_names_are_suffixed(demo_mount):
    found = []
    for project in demo_mount.path("Projects").iterdir():
        if project.name.startswith("."):
            continue
        names = [n for n in os.listdir(project / "Samples") if not n.startswith(".")]
        found += [n for n in names if n.endswith(" (2)")]
        for n in names:
            if n.endswith(" (2)"):
                first = project / "Samples" / n[: -len(" (2)")]
                second = project / "Samples" / n
                assert int((first / ".id").read_text()) < int((second / ".id").read_text())
    assert found, "the demo account has a duplicate sample name"


def test_properties_and_links(demo_mount):
    checked = 0
    for props in demo_mount.path("Projects").glob("*/AppResults/*/Properties"):
        for entry in props.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                for item in entry.iterdir():
                    if item.is_symlink():
                        target = os.path.realpath(item)
                        assert target.startswith(str(demo_mount.mountpoint))
                        assert (Path(target) / ".type").read_text().strip() == "samples"
                        checked += 1
            elif entry.is_file():
                entry.read_text()
    assert checked >= 1


def test_runs_biosamples_datasets_appsessions(demo_mount):
    runs = [r for r in os.listdir(demo_mount.path("Runs")) if not r.startswith(".")]
    assert runs
    run_files = demo_mount.path("Runs", runs[0], "Files")
    assert (run_files / "RunInfo.xml").read_text().lstrip().startswith("<?xml")
    biosamples = [b for b in os.listdir(demo_mount.path("BioSamples")) if not b.startswith(".")]
    assert biosamples
    datasets = list(demo_mount.path("Projects").glob("*/Datasets/*/Files"))
    assert datasets and any(any(d.rglob("*.fastq.gz")) for d in datasets)
    sessions = list(demo_mount.path("Projects").glob("*/AppSessions/*"))
    links = [p for s in sessions if not s.name.startswith(".") for p in s.iterdir() if p.name.startswith("AppResults.")]
    assert links and all((link / "Files").is_dir() for link in links)


def test_read_only(demo_mount):
    project = next(p for p in demo_mount.path("Projects").iterdir() if not p.name.startswith("."))
    with pytest.raises(OSError) as err:
        (project / "new.txt").write_text("x")
    assert err.value.errno in (30, 13)  # EROFS (EACCES when the kernel's permission check comes first)
    with pytest.raises(OSError):
        os.mkdir(project / "Samples" / "new")


def test_samtools_and_tabix_through_the_mount(demo_account, demo_mount):
    bam = next(demo_mount.path("Projects").glob("*/AppResults/*/Files/**/*.bam"))
    src_bam = next(demo_account.glob("Projects/*/AppResults/*/Files/**/*.bam"))
    count = lambda path, *region: subprocess.run(["samtools", "view", "-c", str(path), *region], capture_output=True, text=True, check=True).stdout.strip()
    assert count(bam) == count(src_bam) != "0"
    contig = subprocess.run(["samtools", "idxstats", str(src_bam)], capture_output=True, text=True, check=True).stdout.split()[0]
    assert count(bam, f"{contig}:1000-5000") == count(src_bam, f"{contig}:1000-5000")
    vcf = next(demo_mount.path("Projects").glob("*/AppResults/*/Files/**/*.vcf.gz"))
    src_vcf = next(demo_account.glob("Projects/*/AppResults/*/Files/**/*.vcf.gz"))
    query = lambda path: subprocess.run(["tabix", str(path), f"{contig}:1-50000"], capture_output=True, text=True, check=True).stdout
    assert query(vcf) == query(src_vcf) != ""


def test_long_property_arrays_list_every_item(tmp_path, mount_factory):
    """BaseSpace shows only the first items of an array property (ItemsTotalCount says how many there
    are); the folder lists all of them, through .../properties/NAME/items, in order."""
    from basemount_py.emulator.control import EmulatorProcess

    project = tmp_path / "account" / "Projects" / "P"
    names = [f"S{i:02d}" for i in range(45)]
    for name in names:
        (project / "Samples" / name / "Files").mkdir(parents=True)
    result = project / "AppResults" / "A"
    (result / "Files").mkdir(parents=True)
    (result / ".entity.json").write_text(json.dumps({"Properties": [
        {"Type": "sample[]", "Name": "Input.Samples", "Items": [{"Ref": f"Projects/P/Samples/{n}"} for n in names]},
        {"Type": "string[]", "Name": "X.tags", "Items": [f"t{i}" for i in range(25)]},
    ]}))
    with EmulatorProcess(tmp_path / "account") as emulator:
        m = mount_factory(emulator)
        props = m.path("Projects", "P", "AppResults", "A", "Properties")
        listed = props / "Input.Samples"
        assert sorted(os.listdir(listed), key=int) == [str(i) for i in range(45)]
        for i, name in enumerate(names):
            assert (listed / str(i)).is_symlink()
            assert (listed / str(i) / ".name").read_text().strip() == name
        assert [(props / "X.tags" / str(i)).read_text() for i in range(25)] == [f"t{i}" for i in range(25)]
        calls = emulator.counters()["requests"]
        assert calls["GET v1pre3/appresults/{id}/properties/{name}/items"] == 2  # one page per long array
