"""The pre-mount checks of fuse_access.py, in-process, against real files and devices.

tests/test_nonroot_mounts.py proves them as a real unprivileged user through real mounts; here
each check's branches run in the test process (which is root on our machines, so "not root" is
``os.geteuid`` patched to a user id: the files, devices and descriptors checked are real).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat

import pytest

from basemount_py import fuse_access
from basemount_py.fuse_access import (
    FuseAccessError,
    check_allow_other,
    check_fuse_device,
    check_fuse_fd,
    check_fusermount,
    handed_in_fd,
    user_allow_other_set,
)


@pytest.fixture
def not_root(monkeypatch):
    monkeypatch.setattr(fuse_access.os, "geteuid", lambda: 4242)


def test_a_dev_fd_mountpoint_names_its_descriptor_and_nothing_else_does():
    assert handed_in_fd("/dev/fd/7") == 7
    assert handed_in_fd("/dev/fd/12") == 12
    for other in ("/dev/fd/", "/dev/fd/x", "/mnt/dev/fd/3", "/dev/fd/3/sub", "mnt"):
        assert handed_in_fd(other) is None


def test_a_handed_in_descriptor_must_be_open_and_be_dev_fuse(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    fd = os.open(plain, os.O_RDONLY)
    try:
        with pytest.raises(FuseAccessError, match=f"/dev/fd/{fd} is open but is not /dev/fuse"):
            check_fuse_fd(fd)
    finally:
        os.close(fd)
    with pytest.raises(FuseAccessError, match=f"/dev/fd/{fd} is not an open descriptor"):
        check_fuse_fd(fd)  # closed now
    null = os.open("/dev/null", os.O_RDONLY)  # a character device, but not FUSE's (10, 229)
    try:
        with pytest.raises(FuseAccessError, match="is not /dev/fuse"):
            check_fuse_fd(null)
    finally:
        os.close(null)
    if os.path.exists(fuse_access.FUSE_DEVICE) and os.access(fuse_access.FUSE_DEVICE, os.R_OK | os.W_OK):
        fuse = os.open(fuse_access.FUSE_DEVICE, os.O_RDWR)
        try:
            check_fuse_fd(fuse)  # the real device passes
        finally:
            os.close(fuse)


def test_the_device_check_says_what_is_wrong_with_the_path(tmp_path):
    with pytest.raises(FuseAccessError, match="does not exist: load the fuse module"):
        check_fuse_device(str(tmp_path / "fuse"))
    regular = tmp_path / "regular"
    regular.write_bytes(b"")
    with pytest.raises(FuseAccessError, match="is not a character device"):
        check_fuse_device(str(regular))
    check_fuse_device("/dev/null")  # a character device this user may open: no complaint


def test_the_owner_of_a_file_is_named_or_numbered_when_no_account_has_its_ids(tmp_path):
    st = os.stat(tmp_path)
    assert fuse_access._owner(st) == f"{pwd.getpwuid(st.st_uid).pw_name}:{grp.getgrgid(st.st_gid).gr_name}"
    fields = list(st[:10])
    fields[4] = fields[5] = 2**31 - 7  # st_uid, st_gid: ids no account has
    assert fuse_access._owner(os.stat_result(fields)) == f"{2**31 - 7}:{2**31 - 7}"


def test_fusermount3_must_be_found_and_setuid_root_for_a_user(tmp_path, not_root):
    with pytest.raises(FuseAccessError, match="fusermount3 is not installed"):
        check_fusermount(dirs=(), search_path=str(tmp_path / "nowhere"))
    real = shutil.which("fusermount3", path=os.pathsep.join(fuse_access.FUSERMOUNT_DIRS))
    assert real is not None, "the suite's machines have fuse3 installed (scripts/setup)"
    copy_dir = tmp_path / "bin"
    copy_dir.mkdir()
    copy = copy_dir / "fusermount3"
    shutil.copy(real, copy)  # the same program without its setuid bit
    copy.chmod(0o755)
    with pytest.raises(FuseAccessError, match=r"is not setuid root \(-rwxr-xr-x "):
        check_fusermount(dirs=(str(copy_dir),), search_path="")
    if os.stat(real).st_mode & stat.S_ISUID:
        check_fusermount()  # the installed one is setuid root: fine


def test_root_needs_neither_fusermount3_nor_user_allow_other(tmp_path, monkeypatch):
    monkeypatch.setattr(fuse_access.os, "geteuid", lambda: 0)
    check_fusermount(dirs=(), search_path=str(tmp_path / "nowhere"))
    check_allow_other(str(tmp_path / "no-fuse.conf"))


def test_user_allow_other_is_read_as_fuse_conf_reads_it(tmp_path):
    conf = tmp_path / "fuse.conf"
    assert not user_allow_other_set(str(conf))  # missing file
    conf.write_text("# user_allow_other\nmount_max = 1000\n")
    assert not user_allow_other_set(str(conf))  # commented out
    conf.write_text("mount_max = 1000\n  user_allow_other   # for basemount\n")
    assert user_allow_other_set(str(conf))
    conf.write_bytes(b"\xff\xfe garbage\nuser_allow_other\n")
    assert user_allow_other_set(str(conf))  # undecodable bytes elsewhere do not hide it
    conf.chmod(0o000)
    if os.getuid() != 0:
        assert not user_allow_other_set(str(conf))  # unreadable: treated as unset


def test_allow_other_for_a_user_needs_the_line(tmp_path, not_root):
    conf = tmp_path / "fuse.conf"
    conf.write_text("#user_allow_other\n")
    with pytest.raises(FuseAccessError, match=f"--allow-other needs `user_allow_other` in {conf}"):
        check_allow_other(str(conf))
    conf.write_text("user_allow_other\n")
    check_allow_other(str(conf))
