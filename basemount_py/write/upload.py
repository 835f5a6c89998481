"""Upload settings and the write-side failure type shared by the spool, the uploader and the manager.

How a file reaches BaseSpace (reference §5): a small file in one request (``POST
appresults/{id}/files?name=&directory=``, raw body), a large one as a multipart upload
(``?multipart=true``, then ``PUT files/{fid}/parts/{n}`` with ``Content-MD5``, then ``POST
files/{fid}?uploadstatus=complete``). The bytes first go to the local spool (``spool.py``); the
``uploader.py`` sends them once the file is closed.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass

from ..api.errors import OperationError
from ..options import MountOptions


@dataclass
class UploadConfig:
    small_threshold: int = MountOptions.upload_threshold  # larger files go multipart
    part_size: int = MountOptions.upload_part_size
    parallel: int = MountOptions.upload_parallel  # parts in flight per file
    parallel_files: int = 4  # files uploading at once
    write_back: float = MountOptions.write_back  # seconds between the last close and the upload
    attempts: int = 8  # upload attempts per file before it is "failed" (kept in the spool)
    spool_max: int = MountOptions.spool_max  # bytes the spool may hold before writes get ENOSPC

    @classmethod
    def of(cls, opts: MountOptions) -> "UploadConfig":
        """The upload settings of a mount's options (the rest keep their defaults)."""
        return cls(
            small_threshold=opts.upload_threshold,
            part_size=opts.upload_part_size,
            parallel=opts.upload_parallel,
            write_back=opts.write_back,
            spool_max=opts.spool_max,
        )


class WriteFailure(OperationError):
    """A write-side failure with the errno the writer gets and a one-line message for ``.error``."""


def content_type(name: str) -> str:
    kind, encoding = mimetypes.guess_type(name, strict=False)
    if encoding == "gzip":
        return "application/x-gzip"
    return kind or "application/octet-stream"
