"""The errors the client tells apart: the server refused (ApiError), it could not be
reached (NetworkError), a payload did not match its size or checksum (VerifyError)."""

from __future__ import annotations

from typing import Optional


class ImprintError(Exception):
    """Base of every error this package raises."""


class NetworkError(ImprintError):
    """Connection refused or reset, a timeout, a broken answer: worth trying again."""


class ApiError(ImprintError):
    """The server answered with an error status (its ``{"error": {code, message}}``)."""

    def __init__(self, status: int, code: str, message: str, retry_after: Optional[float] = None):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        """5xx and 429 are retried with backoff; other 4xx slowly (a refused token...)."""
        return self.status >= 500 or self.status == 429


class VerifyError(ImprintError):
    """A payload whose size or SHA-256 is not what the update announced."""


class Rejected(ImprintError):
    """This version will not do (does not verify, does not decode): reported as failed."""


def is_transient(e: BaseException) -> bool:
    if isinstance(e, ApiError):
        return e.transient
    return isinstance(e, (NetworkError, OSError))
