"""BaseSpace REST API client: credentials, one exception hierarchy, paging, retries.

Everything network-facing for the filesystem goes through :class:`BaseSpaceClient`; every call has a
timeout and a bounded number of retries, so no filesystem operation can wait forever on the API.
"""

from .errors import (
    ApiError,
    AuthError,
    ForbiddenError,
    NotFoundError,
    ServerError,
    NetworkError,
    errno_for,
)
from .client import BaseSpaceClient, RetryPolicy

__all__ = [
    "ApiError",
    "AuthError",
    "ForbiddenError",
    "NotFoundError",
    "ServerError",
    "NetworkError",
    "errno_for",
    "BaseSpaceClient",
    "RetryPolicy",
]
