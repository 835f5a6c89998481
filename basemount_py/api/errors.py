"""One exception hierarchy for everything that can go wrong talking to BaseSpace, and the single
place where those errors become errno values for the filesystem."""

from __future__ import annotations

import errno


class ApiError(Exception):
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


def errno_for(exc: BaseException) -> int:
    """Map any exception to the errno a filesystem operation should fail with. Never EAGAIN."""
    if isinstance(exc, ApiError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO
