"""Every tunable default of a mount, in one place (the role of mountpoint-s3's ``fs/config.rs`` and
rclone's ``vfs/vfscommon/options.go``).

:class:`MountOptions` is what ``basemount-py mount`` builds from its command line; its field
defaults are *the* defaults. The CLI takes its ``default=`` and help text from them, and the parts
of the mount that can also be built on their own (``Layout``, ``Tree``, ``ReadManager``,
``BaseSpaceClient``, ``ContentSource``, ``UploadConfig``, ``BudgetPolicy``) default their keyword
arguments to the same class attributes, so the in-process tests and the benchmark get the values a
real mount gets. Change a default here and nowhere else.

A leaf module: it imports nothing from the package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

KiB = 2**10
MiB = 2**20
GiB = 2**30


@dataclass
class MountOptions:
    mountpoint: str
    foreground: bool = False
    # Listings and attributes: how long a folder's listing (and the kernel's copy of its
    # entries) is trusted before it is fetched again; how many listings are kept.
    metadata_ttl: float = 60.0
    max_listings: int = 4096
    # Reads (docs/performance.md).
    cache_size: int = 128 * MiB  # block cache; daemon peak RSS ≈ cache + ~90 MiB
    prefetch_max: int = 96 * MiB  # largest sequential prefetch window (24 parts of 4 MiB)
    whole_file_max: int = 64 * MiB  # small files read at random, and indexes, are fetched whole
    # HTTP connections per host (API and content host each): one per part of the largest window,
    # which a 20 ms / 50 MB/s-per-connection link needs to stream at ~0.8 of 16 whole-range GETs
    # (docs/performance.md, "Sixth round").
    max_connections: int = 24
    api_max_rate: float = 100.0  # requests/s ceiling of the request budget (api/budget.py)
    manifest: dict | None = None  # a loaded --manifest (tree/manifest.py): listings without calls
    allow_other: bool = False
    # Upper bound of any file operation; the network timeouts nest inside it (mount.timeouts_for).
    op_timeout: float = 60.0
    direct_io: bool = False  # FOPEN_DIRECT_IO on BaseSpace files instead of keep_cache
    verify: bool = False  # check whole-file sequential reads against the ETag (MD5)
    log_level: str = "INFO"
    log_file: str | None = None
    # Kernel tuning of the FUSE connection (mount._tune_kernel).
    read_ahead_kb: int = 4096
    max_background: int = 64
    # Write mode (docs/writes.md).
    upload_threshold: int = 25 * MiB  # larger files are uploaded multipart (BaseSpace: > 25 MB)
    upload_part_size: int = 8 * MiB
    upload_parallel: int = 8  # parts in flight per file (BaseMount uploads with 8 threads per file)
    # One local root for the write spool (<cache-dir>/spool/) and the content cache (<cache-dir>/content/).
    cache_dir: str = ""  # "" = default_cache_dir()
    cache_max: int = 0  # bytes of disk the persistent content cache may hold; 0 = no content cache
    spool_max: int = 50 * GiB  # bytes written but not uploaded yet that the spool may hold
    write_back: float = 5.0  # seconds from the last close of a file to its upload (rclone's default)
    # Handed-in FUSE devices (docs/configuration.md): mountpoint "/dev/fd/N" is a /dev/fuse
    # descriptor someone else mounted; --fuse-socket receives one from `basemount-py fuse-helper`.
    fuse_socket: str | None = None
    target: str = ""  # where a /dev/fd/N mount is seen, when known (the helper says)

    @property
    def visible_path(self) -> str:
        """The directory users see the mount at (for messages and absolute symlink targets)."""
        return self.target or self.mountpoint


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/basemount_py`` (``~/.cache/basemount_py``): the default ``--cache-dir``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "basemount_py")


__all__ = ["MountOptions", "default_cache_dir", "KiB", "MiB", "GiB"]
