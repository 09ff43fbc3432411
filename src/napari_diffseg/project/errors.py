"""Errors specific to the project store."""

from __future__ import annotations

from napari_diffseg.base.errors import DiffsegError

__all__ = ["StaleVersionError"]


class StaleVersionError(DiffsegError):
    """An annotation save named a version that is no longer the latest (someone saved in between).

    The HTTP layer maps it to ``409 Conflict``. Nothing was written.

    Attributes:
        current: The image's latest annotation version now (None when it has none).
        image_id: The image the save was for.
    """

    def __init__(self, message: str, current: int | None = None, image_id: str | None = None) -> None:
        super().__init__(message)
        self.current = current
        self.image_id = image_id

    def __reduce__(self) -> tuple[type[StaleVersionError], tuple[str, int | None, str | None]]:
        # keep .current and .image_id when the error crosses a process boundary (pickle)
        return (type(self), (str(self), self.current, self.image_id))
