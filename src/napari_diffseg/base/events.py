"""Typed progress events and the cancel token that every long loop honours."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import Cancelled

__all__ = ["CancelToken", "Event", "Ticker"]


@dataclass(frozen=True)
class Event:
    """One progress report from a training, pretraining or proposal loop.

    ``kind`` is ``"progress"`` (a step finished), ``"log"`` (a message), ``"metrics"`` (an evaluation
    finished), ``"checkpoint"`` (state saved; ``message`` holds the path) or ``"done"``.
    """

    kind: str
    phase: str
    step: int = 0
    total: int = 0
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    elapsed: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Event:
        return cls(**d)


class CancelToken:
    """Set from any thread (``cancel()``) or from another process (by creating ``path``)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._flag = False
        self.path = Path(path) if path is not None else None

    def cancel(self) -> None:
        self._flag = True
        if self.path is not None:
            self.path.touch()

    @property
    def cancelled(self) -> bool:
        if not self._flag and self.path is not None and self.path.exists():
            self._flag = True
        return self._flag

    def raise_if_cancelled(self, where: str = "") -> None:
        if self.cancelled:
            raise Cancelled(f"cancelled{' during ' + where if where else ''}")


class Ticker:
    """Decides when a loop should emit its next progress event (at least every ``interval`` seconds)."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.start = time.perf_counter()
        self._last = -1e9

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def due(self, force: bool = False) -> bool:
        now = time.perf_counter()
        if force or now - self._last >= self.interval:
            self._last = now
            return True
        return False
