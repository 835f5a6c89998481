"""One exception hierarchy for everything a filesystem operation can fail with, and the single
place where those errors become errno values (``errno_for``).

``FsError`` is the base: API failures (``ApiError`` and below), tree failures (``NotFound``,
``NotADirectory``) and failures that carry their own errno and one-line message
(``OperationError``; the write side's ``WriteFailure`` is one). Every layer raises these; only the
pyfuse3 adapter turns them into ``FUSEError``, through ``errno_for`` (like httpx's one boundary
mapping in ``_exceptions.py``).
"""

from __future__ import annotations

import errno


# What decoding a JSON body can raise: not JSON (ValueError), or nested deeper than Python's
# recursion limit (RecursionError, not a ValueError) -- a hostile or broken answer either way.
NOT_JSON = (ValueError, RecursionError)


class FsError(Exception):
    """Base class: ``errno`` is what the filesystem operation fails with; ``quiet`` ones are part
    of normal work (a name that is not there, a read-only refusal) and not logged at the boundary."""

    errno: int | None = errno.EIO  # (an OSError's instance errno may be None: see errno_for)
    quiet = False


class NotFound(FsError):
    """No such entry (ENOENT): a name not in its folder, or a lazy entry the server says is absent."""

    errno = errno.ENOENT
    quiet = True


class NotADirectory(FsError):
    """A folder operation on something that is not a folder."""

    errno = errno.ENOTDIR
    quiet = True


class TimedOut(FsError):
    """An operation outlived its time bound (``--op-timeout``); logged where it is detected."""

    errno = errno.EIO
    quiet = True


class ShuttingDown(FsError):
    """The mount is shutting down (``core.Filesystem.shutdown``): operations under way end at once."""

    errno = errno.EIO
    quiet = True


class OperationError(OSError, FsError):
    """A failure that knows its errno and has a one-line message for the folder's ``.error``
    (an ``OSError``, so ``exc.errno`` is the instance's code)."""

    def __init__(self, code: int, message: str):
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Refused(OperationError):
    """The filesystem refuses a request as a matter of course (read-only, not a symlink, a folder
    opened as a file): the caller gets the errno, the log gets nothing."""

    quiet = True


class ApiError(FsError):
    """Base class. ``status`` is the HTTP status (0 when no response arrived)."""

    errno = errno.EIO

    def __init__(self, message: str, status: int = 0, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class AuthError(ApiError):
    """401: no token, or the token is invalid or revoked."""

    errno = errno.EACCES


class ForbiddenError(ApiError):
    """403 from the API: BaseSpace answers this for unknown ids as well as forbidden ones."""

    errno = errno.ENOENT


class NotFoundError(ApiError):
    """404: the path is not an API route (or the entity is gone)."""

    errno = errno.ENOENT


class ContentExpiredError(ApiError):
    """403 from the content host: the signed URL expired or was refused; re-resolve it."""

    errno = errno.EIO


class ArchivedError(ApiError):
    """The file is in BaseSpace's archival storage (``IsArchived``): unreadable until restored."""

    errno = errno.EACCES


class IntegrityError(ApiError):
    """The bytes read do not match the file's ETag (MD5): never handed out as if they were good."""

    errno = errno.EIO


class ServerError(ApiError):
    """5xx or 429: transient, retried."""

    errno = errno.EIO


class NetworkError(ApiError):
    """No usable response: connection refused or reset, timeout, truncated body, stall."""

    errno = errno.EIO


class CertificateError(ApiError):
    """The server's TLS certificate failed verification: not transient, never retried."""

    errno = errno.EIO


class ProtocolError(ApiError):
    """The server answered something we cannot use (bad JSON, wrong length, bad envelope)."""

    errno = errno.EIO


class OutsideManifestError(ApiError):
    """A ``--manifest`` mount was asked for a listing its snapshot does not hold."""

    errno = errno.EACCES


# A write (create, upload, trash, property...) names an entity the mount has listed, so it exists:
# a 403 then means "not allowed", not "unknown id" as it does for reads; 400/409 refuse the value.
WRITE_REFUSALS = {400: errno.EINVAL, 409: errno.EINVAL, 401: errno.EACCES, 403: errno.EACCES}


def errno_for(exc: BaseException, *, writing: bool = False) -> int:
    """Map any exception to the errno a filesystem operation should fail with. Never EAGAIN.
    ``writing``: the failed call was a write to BaseSpace (see WRITE_REFUSALS)."""
    if writing and isinstance(exc, ApiError) and exc.status in WRITE_REFUSALS:
        return WRITE_REFUSALS[exc.status]
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, FsError):
        return exc.errno or errno.EIO
    return errno.EIO


def expected(exc: BaseException) -> bool:
    """A failure the filesystem foresees (logged as one line), as opposed to a bug (traceback)."""
    return isinstance(exc, (FsError, OSError))


def quiet(exc: BaseException) -> bool:
    """A failure that is normal work (not logged at the boundary)."""
    return isinstance(exc, FsError) and exc.quiet
