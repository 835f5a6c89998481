"""What a folder lists and the inodes behind its entries, against hostile or changing server data:
an entity's name never displaces another's ``.id.<id>`` link or the folder's ``.error``, a
``refresh`` reaches an entity's own hidden files, and a directory snapshot read late neither brings
back old attributes nor leaves inodes the kernel never heard of. In-process against the core
(a stub API, trio's mock clock); each test failed on the code before its fix (found by review)."""

from __future__ import annotations

import os
import stat

import trio
import trio.testing

from basemount_py.core import Filesystem
from basemount_py.tree import ROOT_INODE, Layout, Tree

from inprocess import Kernel


class StubApi:
    """Just enough of BaseSpaceClient for Layout: listings and GETs from dicts the test edits."""

    api_server = "http://stub"

    def __init__(self):
        self.lists: dict[str, list] = {}
        self.gets: dict[str, dict] = {}

    async def list_all(self, path, params=None, *, v2=False, page_size=0, values=False):
        await trio.lowlevel.checkpoint()
        return [dict(i) for i in self.lists.get(path, [])]

    async def get_json(self, href, params=None):
        await trio.lowlevel.checkpoint()
        return {"Response": dict(self.gets[href])}


def run(api: StubApi, scenario):
    async def main():
        tree = Tree(Layout(api, metadata_ttl=60.0), metadata_ttl=60.0)
        kernel = Kernel()
        fs = Filesystem(tree, None, kernel)
        return await scenario(fs, kernel)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def walk(fs: Filesystem, *path: str) -> int:
    ino = ROOT_INODE
    for name in path:
        ino = (await fs.lookup(ino, name)).ino
    return ino


async def listing(fs: Filesystem, ino: int) -> list[str]:
    fh = await fs.opendir(ino)
    out: list[str] = []
    fs.readdir(fh, 0, lambda name, attrs, nxt: out.append(name) is None)
    fs.releasedir(fh)
    return out


async def read_text(fs: Filesystem, ino: int) -> bytes:
    fh = (await fs.open(ino, os.O_RDONLY)).fh
    try:
        return await fs.read(fh, 0, 1 << 20)
    finally:
        await fs.release(fh)


def project_api() -> StubApi:
    api = StubApi()
    api.lists["v1pre3/users/current/projects"] = [{"Id": "1", "Name": "P"}]
    return api


# -- an entity named like another entity's hidden .id.<id> link ---------------------------------


def test_an_entity_named_like_another_entitys_id_link_keeps_its_folder():
    api = project_api()
    api.lists["v1pre3/projects/1/samples"] = [
        {"Id": "10", "Name": ".id.20"},  # hostile (or just odd) name: the link name of sample 20
        {"Id": "20", "Name": "B"},
    ]

    async def scenario(fs, kernel):
        samples = await walk(fs, "Projects", "P", "Samples")
        fh = await fs.opendir(samples)
        kinds: dict[str, list[str]] = {}
        fs.readdir(fh, 0, lambda name, a, nxt: kinds.setdefault(name, []).append(stat.filemode(a.mode)) is None)
        fs.releasedir(fh)
        id10 = await fs.readlink(await walk(fs, "Projects", "P", "Samples", ".id.10"))
        id20 = await fs.readlink(await walk(fs, "Projects", "P", "Samples", ".id.20"))
        return kinds, id10, id20

    kinds, id10, id20 = run(api, scenario)
    # sample 10 keeps a folder; .id.20 leads to sample 20, .id.10 to sample 10's folder (not to a link)
    assert [k for k in kinds.values() if k[0].startswith("d")] == [["dr-xr-xr-x"], ["dr-xr-xr-x"]], kinds
    assert id20 == "B" and id10 != ".id.20", (id10, id20)


# -- refresh of an entity folder: its own hidden files stay stale --------------------------------


def test_refresh_in_an_app_result_shows_its_new_status():
    api = project_api()
    api.lists["v1pre3/projects/1/appresults"] = [{"Id": "5", "Name": "A", "Status": "Running"}]

    async def scenario(fs, kernel):
        a = ("Projects", "P", "AppResults", "A")
        before = await read_text(fs, await walk(fs, *a, ".status"))
        api.lists["v1pre3/projects/1/appresults"] = [{"Id": "5", "Name": "A", "Status": "Complete"}]
        cmd = (await fs.open(await walk(fs, *a, ".commands"), os.O_WRONLY)).fh
        await fs.write(cmd, 0, b"refresh\n")
        await fs.release(cmd)
        after = await read_text(fs, await walk(fs, *a, ".status"))  # a fresh walk from the root
        return before, after

    before, after = run(api, scenario)
    assert before == b"Running\n"
    assert after == b"Complete\n"


# -- a directory snapshot read after a refresh puts old nodes back into the inode table ---------


def test_readdir_of_an_older_snapshot_does_not_bring_back_stale_attributes():
    api = project_api()
    api.lists["v1pre3/users/current/runs"] = [{"Id": "7", "Name": "R"}]
    api.lists["v1pre3/runs/7/files"] = [{"Id": "100", "Name": "f", "Path": "f", "Size": 1}]

    async def scenario(fs, kernel):
        files = await walk(fs, "Runs", "R", "Files")
        fh = await fs.opendir(files)  # `ls -l` (or os.scandir) opened the folder ...
        api.lists["v1pre3/runs/7/files"] = [{"Id": "101", "Name": "f", "Path": "f", "Size": 2}]
        cmd = (await fs.open(await walk(fs, ".commands"), os.O_WRONLY)).fh
        await fs.write(cmd, 0, b"refresh\n")  # ... a refresh: the file was replaced
        await fs.release(cmd)
        fresh = await fs.lookup(files, "f")
        assert fresh.size == 2
        fs.readdir(fh, 0, lambda name, attrs, nxt: True)  # the old snapshot is read on
        fs.releasedir(fh)
        return (await fs.getattr(fresh.ino)).size, fs.tree.nodes[fresh.ino].file_id

    size, file_id = run(api, scenario)
    assert (size, file_id) == (2, "101")


# -- readdir: an entry the kernel's buffer did not take gets an inode nobody will forget --------


def test_an_entry_readdir_could_not_hand_over_leaves_no_inode_behind():
    api = project_api()

    async def scenario(fs, kernel):
        before = set(fs.tree.nodes)
        fh = await fs.opendir(ROOT_INODE)
        fs.readdir(fh, 0, lambda name, attrs, nxt: False)  # the buffer is full at once: nothing sent
        fs.releasedir(fh)
        return set(fs.tree.nodes) - before

    leaked = run(api, scenario)
    assert leaked == set()  # the kernel was told of no entry: it will never forget one


# -- a server file named .error hides the folder's .error ---------------------------------------


def test_a_server_file_named_dot_error_does_not_hide_the_folders_error_file():
    import errno

    from basemount_py.api.errors import FsError, errno_for

    api = project_api()
    api.lists["v1pre3/users/current/runs"] = [{"Id": "7", "Name": "R"}]
    api.lists["v1pre3/runs/7/files"] = [
        {"Id": "100", "Name": ".error", "Path": ".error", "Size": 3},
        {"Id": "101", "Name": "x.bam", "Path": "x.bam", "Size": 9, "IsArchived": True},
    ]

    async def scenario(fs, kernel):
        files = await walk(fs, "Runs", "R", "Files")
        try:
            await fs.open((await fs.lookup(files, "x.bam")).ino, os.O_RDONLY)
        except FsError as exc:
            assert errno_for(exc) == errno.EACCES
        node = fs.tree.current((await fs.lookup(files, ".error")).ino)
        return node.type, node.content

    kind, content = run(api, scenario)
    assert b"archived" in content, (kind, content)  # where docs/tree.md sends the user: Files/.error
