"""Errors the backend client raises: every HTTP or connection failure becomes one of these.

They derive from :class:`~napari_diffseg.base.errors.DiffsegError`, so the CLI prints them as one line and
the plugin shows their message. Light module: no httpx, no FastAPI.
"""

from __future__ import annotations

from napari_diffseg.base.errors import DiffsegError

__all__ = ["AuthError", "BackendError", "BackendUnavailable", "StaleAnnotation"]


class BackendError(DiffsegError):
    """The backend answered with an error (or could not be reached).

    Attributes:
        status: The HTTP status (0 when no answer came back).
        message: The server's ``detail`` message (what went wrong and what to do).
        code: The server's short error code (``not_found``, ``invalid``, ``too_large``...), if any.
    """

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message if status == 0 else f"{message} (HTTP {status})")
        self.status = status
        self.message = message
        self.code = code

    def __reduce__(self) -> tuple[type[BackendError], tuple[int, str, str | None]]:
        return (type(self), (self.status, self.message, self.code))


class BackendUnavailable(BackendError):
    """No answer: the backend is not running, not reachable at that address, or timed out."""


class AuthError(BackendError):
    """401/403: the backend needs a token (``Authorization: Bearer``) or the token is wrong."""


class StaleAnnotation(BackendError):
    """409: someone saved a newer annotation version first; nothing was written.

    Attributes:
        current: The image's latest version now (None when it has none): reload it, re-apply the edits and
            save again with ``replaces=current``.
    """

    def __init__(
        self, status: int, message: str, code: str | None = None, current: int | None = None
    ) -> None:
        super().__init__(status, message, code)
        self.current = current

    def __reduce__(self) -> tuple[type[StaleAnnotation], tuple[int, str, str | None, int | None]]:  # type: ignore[override]
        return (type(self), (self.status, self.message, self.code, self.current))
