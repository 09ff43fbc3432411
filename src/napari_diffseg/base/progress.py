"""Terminal progress fed by progress events: one tqdm bar per phase (the CLI's jobs and the demo's).

tqdm is imported on the first bar, so importing this module stays cheap and torch-free.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from .events import Event

__all__ = ["EventBars"]


class EventBars:
    """Call it with each event (an :class:`~napari_diffseg.base.events.Event` or its ``to_dict()`` form, as
    streamed by the server); ``close()`` when the events end.

    A ``progress`` or ``done`` event with a ``total`` moves the bar of its phase (a new phase closes the
    previous bar and opens its own), showing up to three losses. With ``logs`` the message of a ``log``
    event is printed above the bars. ``label`` prefixes each bar's description (``"label · phase"``);
    ``leave`` keeps finished bars on screen.
    """

    def __init__(
        self, label: str = "", enabled: bool = True, *, logs: bool = False, leave: bool = True
    ) -> None:
        self.label = label
        self.enabled = enabled
        self.logs = logs
        self.leave = leave
        self.bar: Any = None
        self.phase = ""

    def __call__(self, event: Event | Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        data = event.to_dict() if isinstance(event, Event) else event
        kind = data.get("kind")
        if kind == "log" and self.logs and data.get("message"):
            self._write(f"  {self.label}: {data['message']}" if self.label else f"  {data['message']}")
            return
        if kind not in ("progress", "done") or not data.get("total"):
            return
        from tqdm.auto import tqdm

        phase = str(data.get("phase", ""))
        if phase != self.phase or self.bar is None:
            self.close()
            self.phase = phase
            desc = f"{self.label} · {phase}" if self.label else phase
            self.bar = tqdm(
                total=int(data["total"]), desc=desc, unit="step", leave=self.leave, file=sys.stderr
            )
        self.bar.n = int(data.get("step", 0))
        losses = data.get("losses") or {}
        if losses:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in list(losses.items())[:3]}, refresh=False)
        self.bar.refresh()

    def _write(self, text: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        """Close the open bar, if any."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
