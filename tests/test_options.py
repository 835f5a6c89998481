"""The mount's defaults live in one place (basemount_py/options.py): the command line, the
components built on their own and the help text all take them from there."""

from __future__ import annotations

import pytest

from basemount_py.api.budget import BudgetPolicy
from basemount_py.cli import build_parser, mount_options
from basemount_py.options import GiB, KiB, MiB, MountOptions
from basemount_py.read.prefetch import PrefetchConfig
from basemount_py.write.upload import UploadConfig


def parse(*argv: str) -> MountOptions:
    return mount_options(build_parser().parse_args(["mount", *argv]))


def test_a_bare_mount_command_line_gives_exactly_the_default_options():
    assert parse("/mnt/bs") == MountOptions(mountpoint="/mnt/bs")


def test_command_line_units_become_bytes_and_seconds():
    opts = parse(
        "/mnt/bs",
        "--cache-size", "32",
        "--prefetch-max", "8",
        "--upload-part-size", "0.5",
        "--upload-threshold", "100",
        "--spool-max", "2",
        "--cache-max", "0.25",
        "--metadata-ttl", "5",
        "--op-timeout", "7.5",
        "--max-connections", "4",
    )
    assert opts.cache_size == 32 * MiB and opts.prefetch_max == 8 * MiB
    assert opts.upload_part_size == 512 * KiB and opts.upload_threshold == 100 * MiB
    assert opts.spool_max == 2 * GiB and opts.cache_max == GiB // 4
    assert (opts.metadata_ttl, opts.op_timeout, opts.max_connections) == (5.0, 7.5, 4)


def test_out_of_range_values_are_clamped_not_passed_on():
    opts = parse("/mnt/bs", "--cache-size", "0", "--max-connections", "0", "--upload-part-size", "0.001", "--write-back", "-3")
    assert opts.cache_size == MiB and opts.max_connections == 1
    assert opts.upload_part_size == 64 * KiB and opts.write_back == 0.0


def test_the_help_states_the_defaults_of_options_py(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["mount", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"listing cache lifetime (default {MountOptions.metadata_ttl:g} s)" in text
    assert f"block cache size (default {MountOptions.cache_size // MiB} MiB)" in text
    assert f"parallel HTTP connections (default {MountOptions.max_connections})" in text
    assert f"multipart part size (default {MountOptions.upload_part_size / MiB:g} MiB)" in text


def test_components_built_on_their_own_get_the_mount_defaults():
    upload = UploadConfig()
    assert (upload.small_threshold, upload.part_size, upload.parallel) == (
        MountOptions.upload_threshold,
        MountOptions.upload_part_size,
        MountOptions.upload_parallel,
    )
    assert (upload.write_back, upload.spool_max) == (MountOptions.write_back, MountOptions.spool_max)
    assert PrefetchConfig().max_window == MountOptions.prefetch_max
    assert BudgetPolicy().max_rate == MountOptions.api_max_rate


def test_a_mounts_upload_settings_come_from_its_options():
    opts = parse("/mnt/bs", "--upload-threshold", "1", "--upload-part-size", "2", "--upload-parallel", "3", "--write-back", "4", "--spool-max", "5")
    upload = UploadConfig.of(opts)
    assert (upload.small_threshold, upload.part_size, upload.parallel) == (MiB, 2 * MiB, 3)
    assert (upload.write_back, upload.spool_max) == (4.0, 5 * GiB)
