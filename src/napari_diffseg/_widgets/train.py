"""The train dock widget: start a pretraining or co-training job on the backend, follow its progress
events, cancel it. Training never runs in the napari process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_diffseg._widgets._session import run_in_thread, session_for

__all__ = ["PRESETS", "TrainWidget", "describe_event"]

PRESETS = ("tiny", "cpu", "gpu")
KINDS = ("cotrain", "pretrain")


def _start_and_follow(client: Any, kind: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Worker (generator): start the job, yield ``{"job": ...}`` and then each of its events."""
    job = client.start_job(kind, params)
    yield {"job": job}
    yield from client.stream_events(int(job["id"]))
    yield {"job": client.job(int(job["id"]))}


def describe_event(data: dict[str, Any]) -> str:
    """One status line for a progress event's ``data`` (phase, step, losses)."""
    losses = ", ".join(f"{k} {v:.3g}" for k, v in (data.get("losses") or {}).items())
    step = f"{data.get('step', 0)}/{data.get('total', 0)}" if data.get("total") else ""
    text = " ".join(p for p in (str(data.get("phase", "")), step, losses) if p)
    return text or str(data.get("message", ""))


class TrainWidget(QWidget):
    """Start a job with a preset, a progress bar fed by the job's events, Cancel."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.job_id: int | None = None

        self.kind = QComboBox()
        self.kind.addItems(list(KINDS))
        self.preset = QComboBox()
        self.preset.addItems(list(PRESETS))
        self.rounds = QSpinBox()
        self.rounds.setRange(1, 20)
        self.start_button = QPushButton("Start")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("idle")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Job", self.kind)
        form.addRow("Preset", self.preset)
        form.addRow("Rounds", self.rounds)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)

    def params(self) -> dict[str, Any]:
        """The job parameters the form describes."""
        params: dict[str, Any] = {"preset": self.preset.currentText()}
        if self.kind.currentText() == "cotrain":
            params["rounds"] = self.rounds.value()
        return params

    def start(self) -> None:
        """Start the job on the backend and follow its events."""
        if self.session.client is None:
            show_warning("Connect to a backend in the DiffSeg project widget first.")
            return
        self.start_button.setEnabled(False)
        self.status.setText("starting…")
        run_in_thread(
            _start_and_follow,
            self.session.client,
            self.kind.currentText(),
            self.params(),
            on_yield=self._on_event,
            on_finish=self._on_finished,
        )

    def cancel(self) -> None:
        """Ask the backend to cancel the running job (it stops at its next step)."""
        if self.session.client is None or self.job_id is None:
            return
        self.cancel_button.setEnabled(False)
        run_in_thread(self.session.client.cancel_job, self.job_id)

    def _on_event(self, item: dict[str, Any]) -> None:
        if "job" in item:
            job = item["job"]
            self.job_id = int(job["id"])
            self.cancel_button.setEnabled(job["state"] in ("queued", "running"))
            self.status.setText(f"job {job['id']} ({job['kind']}): {job['state']}")
            if job["state"] == "done":
                self.progress.setValue(self.progress.maximum())
                show_info(f"Job {job['id']} ({job['kind']}) finished.")
            return
        data = item.get("data") or {}
        if data.get("total"):
            self.progress.setRange(0, int(data["total"]))
            self.progress.setValue(min(int(data.get("step", 0)), int(data["total"])))
        self.status.setText(f"job {self.job_id}: {describe_event(data)}")

    def _on_finished(self) -> None:
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
