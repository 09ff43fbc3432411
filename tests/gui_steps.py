"""Steps the GUI tests share (not a test module): dock a widget, read a table, run a tiny job from the
Train widget and wait for it. Qt and napari are imported by the tests that use these, never here."""

from __future__ import annotations

from typing import Any

#: how long a GUI test waits for the widgets (ms), and for a tiny-preset job to end
WAIT_MS = 30_000
JOB_MS = 120_000


def dock(viewer: Any, name: str) -> Any:
    """Dock napari-diffseg's widget ``name`` (Project, Annotate, Train) and return it."""
    _dock_widget, widget = viewer.window.add_plugin_dock_widget("napari-diffseg", name)
    return widget


def table(widget: Any, qtable: Any = None) -> list[dict[str, str]]:
    """The rows of a QTableWidget (``widget.table`` by default) as header → text."""
    t = widget.table if qtable is None else qtable
    headers = [t.horizontalHeaderItem(c).text() for c in range(t.columnCount())]
    return [
        {h: (t.item(r, c).text() if t.item(r, c) else "") for c, h in enumerate(headers)}
        for r in range(t.rowCount())
    ]


def row(project: Any, name: str) -> dict[str, str]:
    """The Project widget's table row of image ``name`` (exactly one)."""
    rows = [r for r in table(project) if r["name"] == name]
    assert len(rows) == 1, (name, table(project))
    return rows[0]


def run_job(qtbot: Any, train: Any, kind: str) -> Any:
    """Start a tiny job of ``kind`` from the Train widget's form and wait until it is done."""
    train.kind.setCurrentText(kind)
    train.preset.setCurrentText("tiny")
    train.rounds.setValue(1)
    train.start_button.click()
    qtbot.waitUntil(lambda: train.job is not None and train.job.kind == kind, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: train.job.ended, timeout=JOB_MS)
    assert train.job.state == "done", (train.job, train.status.text())
    qtbot.waitUntil(train.start_button.isEnabled, timeout=WAIT_MS)
    return train.job
