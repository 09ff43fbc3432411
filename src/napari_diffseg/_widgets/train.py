"""The train dock widget: start a pretraining or co-training job on the backend, follow its events (a
napari progress bar with ETA, a live plot of the losses and the validation Dice), cancel it; the table of
model versions, set the active one, export weights.

Training never runs in the napari process, and no backend call runs on the Qt thread: the job's events
arrive from a worker thread; :class:`JobHistory` (no Qt) turns them into what is drawn, and the view is
refreshed at most four times a second. The job follower and :class:`JobHistory` live in
:mod:`napari_diffseg.review`.

Why one module of ~520 lines: one dock widget (job controls, progress, two plots, the model table) whose
handlers share the followed job's state.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from napari.utils import cancelable_progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_diffseg._widgets._plot import COLORS, CurvePlot
from napari_diffseg._widgets._session import header as _header
from napari_diffseg._widgets._session import notify_error, run_in_thread, session_for
from napari_diffseg.base.contracts import Job, JobEventOut, Model
from napari_diffseg.review import JobHistory, describe_event, follow_job, format_duration, latest_open_job

__all__ = ["PRESETS", "JobHistory", "TrainWidget", "describe_event", "format_duration"]

PRESETS = ("tiny", "cpu", "gpu")
KINDS = ("cotrain", "pretrain")  # the job choices, in the order the combo box lists them (default first)
MODEL_COLUMNS = ("active", "model", "round", "method", "val Dice", "created")
VIEW_INTERVAL_MS = 250  # the progress bars, the ETA and the plots are refreshed at most 4× a second
BAR_INTERVAL_S = 1.0  # napari's progress bar at most once a second: each update runs the event loop


class TrainWidget(QWidget):
    """Start a job with a preset; follow it (progress with ETA, loss and Dice plots); cancel it; the
    model versions (set active, export weights).

    Attributes:
        job_id: The job followed now (or last).
        job: Its latest record from the backend.
        history: What its events said so far (:class:`JobHistory`).
        progress: The widget's own progress bar; ``napari_progress`` drives napari's activity dock.
        activity_progress: Whether jobs also show in napari's activity dock (the "activity dock" box; off
            by default). While a napari progress exists napari animates a spinner in its status bar; with
            software OpenGL (Xvfb + Mesa, remote desktops, many VMs) every frame of it recomposites the
            window: measured on our 2-core machine, the Qt event loop's p99 lateness during a round was
            62 ms with it and 4 ms without (``benchmarks/gui_responsiveness.py [--activity-progress]``).
        eta: The ETA line; status: the latest event or the job's state.
        loss_plot, dice_plot: The live plots (:class:`CurvePlot`).
        models_table: One row per model version; models: their records.
    """

    activity_progress: bool = False

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.job_id: int | None = None
        self.job: Job | None = None
        self.history = JobHistory()
        self.models: list[Model] = []
        self.napari_progress: cancelable_progress | None = None
        self.following = False
        self._token = 0  # events from a worker of an earlier follow are ignored
        self._view_dirty = False
        self._status_pending = False
        self._syncing = False
        self._bar_time = 0.0
        self._bar_pending = False

        self.kind = QComboBox()
        self.kind.addItems(list(KINDS))
        self.preset = QComboBox()
        self.preset.addItems(list(PRESETS))
        self.preset.setCurrentText("cpu")  # a laptop's budget; tiny is for tests, gpu for a GPU server
        self.rounds = QSpinBox()
        self.rounds.setRange(1, 20)
        self.start_button = QPushButton("Start")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue the cancelled, failed or interrupted job from its checkpoint")
        self.resume_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.eta = QLabel("")
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.loss_plot = CurvePlot(
            "training losses", "step (all phases)", integer_x=True, interval_ms=VIEW_INTERVAL_MS
        )
        self.dice_plot = CurvePlot(
            "validation Dice",
            "round",
            y_range=(0.0, 1.0),
            markers=True,
            integer_x=True,
            empty_text="no validation Dice yet: it needs annotated images in the val split",
            interval_ms=VIEW_INTERVAL_MS,
        )
        self.models_table = QTableWidget(0, len(MODEL_COLUMNS))
        self.models_table.setHorizontalHeaderLabels(list(MODEL_COLUMNS))
        self.models_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.models_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.models_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        _header(self.models_table.verticalHeader()).setVisible(False)
        _header(self.models_table.horizontalHeader()).setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents
        )
        self.models_table.setMinimumHeight(110)
        self.activate_button = QPushButton("Set active")
        self.export_button = QPushButton("Export weights…")
        self.refresh_button = QPushButton("Refresh")

        form = QFormLayout()
        form.addRow("Job", self.kind)
        form.addRow("Preset", self.preset)
        form.addRow("Rounds", self.rounds)
        self.activity_box = QCheckBox("also show jobs in napari's activity dock")
        self.activity_box.setChecked(self.activity_progress)
        self.activity_box.setToolTip(
            "napari animates a spinner while a job shows there; with software OpenGL that slows the whole "
            "window down. The progress bar and ETA below are always shown."
        )
        self.activity_box.toggled.connect(self._on_activity_toggled)
        form.addRow("", self.activity_box)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.resume_button)
        model_buttons = QHBoxLayout()
        model_buttons.addWidget(self.activate_button)
        model_buttons.addWidget(self.export_button)
        model_buttons.addWidget(self.refresh_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.eta)
        layout.addWidget(self.status)
        layout.addWidget(self.loss_plot, 2)
        layout.addWidget(self.dice_plot, 1)
        layout.addWidget(QLabel("Model versions"))
        layout.addWidget(self.models_table, 1)
        layout.addLayout(model_buttons)

        self._view_timer = QTimer(self)
        self._view_timer.setSingleShot(True)
        self._view_timer.setInterval(VIEW_INTERVAL_MS)
        self._view_timer.timeout.connect(self._sync_view)

        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.resume_button.clicked.connect(self.resume)
        self.activate_button.clicked.connect(lambda: self.set_active())
        self.export_button.clicked.connect(lambda: self.export_weights())
        self.refresh_button.clicked.connect(self.refresh_models)
        self.session.connected.connect(self._on_connected)
        self.session.follow_job.connect(self.follow)  # e.g. a job resumed from the session's notification
        if self.session.client is not None:
            self._on_connected(self.session.client)

    # ------------------------------------------------------------------------------------ jobs

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
        self.status.setText("starting…")
        self.follow_job(None, self.kind.currentText(), self.params())

    def follow(self, job_id: int) -> None:
        """Show a job that already exists (its whole history, then its live events until it ends)."""
        if self.session.client is None:
            show_warning("Connect to a backend in the DiffSeg project widget first.")
            return
        self.status.setText(f"following job {job_id}…")
        self.follow_job(int(job_id))

    def resume(self) -> None:
        """Queue the followed job again (cancelled, failed or interrupted) and follow it; it continues
        from its last checkpoint."""
        if self.job_id is None:
            return
        self.resume_button.setEnabled(False)
        self.status.setText(f"resuming job {self.job_id}…")
        self.session.resume_job(self.job_id)  # then the session asks us to follow it (follow_job)

    def cancel(self) -> None:
        """Ask the backend to cancel the running job (it stops at its next step)."""
        if self.session.client is None or self.job_id is None:
            return
        self.cancel_button.setEnabled(False)
        run_in_thread(self.session.client.cancel_job, self.job_id)

    def follow_job(self, job_id: int | None, kind: str = "", params: dict[str, Any] | None = None) -> None:
        self._token += 1
        token = self._token
        self._close_napari_progress()
        self.following = True
        self.job_id, self.job = job_id, None
        self.history = JobHistory()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.eta.setText("")
        self.start_button.setEnabled(False)
        self.resume_button.setEnabled(False)
        self._redraw_losses()
        run_in_thread(
            follow_job,
            self.session.client,
            job_id,
            kind,
            params,
            on_yield=partial(self._on_item, token),
            on_error=partial(self._on_follow_error, token),
            on_finish=partial(self._on_finished, token),
        )

    def _on_item(self, token: int, item: dict[str, Any]) -> None:
        if token != self._token:
            return
        if "job" in item:
            self._on_job(item["job"], final=bool(item.get("final")))
        events: list[JobEventOut] = item.get("events") or []
        for event in events:
            self.history.add(event.data)
        if events:
            self._status_pending = True  # the view shows the latest event at its next refresh
            self._schedule_view()
        if len(events) == 1 and events[0].data.kind == "metrics":
            self.refresh_models()  # a co-training round saved its model

    def _on_job(self, job: Job, final: bool) -> None:
        self.job, self.job_id = job, job.id
        self._status_pending = False
        state = job.state
        self.cancel_button.setEnabled(not job.ended and not job.cancel_requested)
        text = f"job {job.id} ({job.kind}): {state}"
        if not final:
            self.status.setText(text)
            return
        if state == "done":
            self.progress.setRange(0, max(1, self.progress.maximum()))
            self.progress.setValue(self.progress.maximum())
            self.status.setText(text)
            show_info(f"Job {job.id} ({job.kind}) finished.")
        elif state == "failed":
            error = job.error or "no message"
            self.status.setText(f"{text}: {error}")
            show_error(
                f"Job {job.id} ({job.kind}) failed: {error}. "
                "Fix what the message says, then press Resume (it continues from its last checkpoint) "
                "or Start a new job."
            )
        elif state == "cancelled":
            self.status.setText(text)
            show_info(f"Job {job.id} ({job.kind}) was cancelled; Resume continues it from its checkpoint.")
        else:
            self.status.setText(text)
            show_warning(
                f"Job {job.id} ({job.kind}) is {state}: the backend stopped while it ran. "
                "Press Resume to continue it from its last checkpoint."
            )
        self.refresh_models()

    def _on_follow_error(self, token: int, exc: BaseException) -> None:
        notify_error(exc)
        if token == self._token:
            self.status.setText(
                f"lost contact with job {self.job_id}; reconnect in the project widget to follow it again"
                if self.job_id is not None
                else "the job did not start"
            )

    def _on_finished(self, token: int) -> None:
        if token != self._token:
            return
        self._sync_view(final=True)  # the last events reach the view before napari's bar closes
        self.following = False
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.resume_button.setEnabled(self.job is not None and self.job.resumable)
        self._close_napari_progress()

    def _on_connected(self, client: Any) -> None:
        self.refresh_models()
        if client is None:
            return
        token = self._token
        run_in_thread(
            latest_open_job,
            client,
            on_done=lambda job: self._follow_open_job(token, job),
            on_error=lambda exc: None,  # the models refresh already reports an unreachable backend
        )

    def _follow_open_job(self, token: int, job: Job | None) -> None:
        if job is not None and token == self._token and not self.following:
            self.follow(job.id)

    # ------------------------------------------------------------------------------------ view

    def _schedule_view(self) -> None:
        self._view_dirty = True
        if not self._view_timer.isActive():
            self._view_timer.start()

    def _sync_view(self, final: bool = False) -> None:
        """Bring the status, the progress bars, the ETA and the plots up to date with the history; runs
        at most every ``VIEW_INTERVAL_MS`` however fast events come, so the Qt thread stays free."""
        if self._syncing:  # napari's progress bar runs the event loop: do not nest
            self._schedule_view()
            return
        if not (self._view_dirty or self._bar_pending):
            return
        self._syncing = True
        try:
            h = self.history
            if self._view_dirty:
                self._view_dirty = False
                if self._status_pending and h.last is not None:
                    self._status_pending = False
                    self.status.setText(f"job {self.job_id}: {describe_event(h.last)}")
                if h.total and (self.job is None or not self.job.ended):
                    self.progress.setRange(0, h.total)
                    self.progress.setValue(min(h.step, h.total))
                self.eta.setText(h.eta_text())
                self._redraw_losses()
                self._redraw_dice()
            if self.following or self.napari_progress is not None:
                self._update_napari_progress(final)
        finally:
            self._syncing = False

    def _update_napari_progress(self, final: bool = False) -> None:
        """Create, move or reset (new phase) napari's progress bar; at the job's end only move it."""
        h = self.history
        if h.total <= 0 or not self.activity_progress:
            self._bar_pending = False
            return
        desc = f"DiffSeg job {self.job_id}: {h.phase}"
        pbar = self.napari_progress
        new_phase = pbar is not None and (
            pbar.desc.rstrip(": ") != desc or pbar.total != h.total or h.step < pbar.n
        )
        if pbar is not None and not new_phase and h.step == pbar.n:
            self._bar_pending = False
            return
        if pbar is not None and not final and time.monotonic() - self._bar_time < BAR_INTERVAL_S:
            self._bar_pending = True  # catch up at a later refresh
            if not self._view_timer.isActive():
                self._view_timer.start()
            return
        self._bar_time = time.monotonic()
        self._bar_pending = False
        if pbar is None:
            if final or not self.following:
                return
            token = self._token
            pbar = cancelable_progress(total=h.total, desc=desc, cancel_callback=self.cancel)
            if token != self._token or not self.following:  # the job ended while the bar was made
                pbar.close()
                return
            self.napari_progress = pbar
        elif new_phase:
            pbar.set_description(desc)
            if self.napari_progress is not None:  # the one bar this widget owns (pbar is it)
                self.napari_progress.reset(total=h.total)
        bar = self.napari_progress
        if bar is not None and h.step > bar.n:
            bar.update(min(h.step, h.total) - bar.n)

    def _on_activity_toggled(self, checked: bool) -> None:
        self.activity_progress = bool(checked)
        if checked:
            self._schedule_view()
        else:
            self._close_napari_progress()

    def _close_napari_progress(self) -> None:
        pbar, self.napari_progress = self.napari_progress, None
        if pbar is not None:
            pbar.close()

    def _redraw_losses(self) -> None:
        names = sorted(self.history.losses)
        self.loss_plot.set_data(
            {name: self.history.losses[name] for name in names},
            {name: COLORS[i % len(COLORS)] for i, name in enumerate(names)},
            self.history.marks,
        )

    def _redraw_dice(self) -> None:
        dice = {**self._table_dice(), **self.history.val_dice}
        rounds = sorted(dice)
        series: dict[str, tuple[Sequence[float], Sequence[float]]] = (
            {"val Dice": (rounds, [dice[r] for r in rounds])} if dice else {}
        )
        self.dice_plot.set_data(series, {"val Dice": COLORS[2]})

    def _table_dice(self) -> dict[int, float]:
        dice: dict[int, float] = {}
        for model in sorted(self.models, key=lambda m: m.created_at):
            value = model.metrics.get("val_dice")
            if value is not None:
                dice[model.round] = float(value)
        return dice

    # ------------------------------------------------------------------------------------ models

    def refresh_models(self) -> None:
        """Reload the model versions from the backend."""
        if self.session.client is None:
            return
        run_in_thread(self.session.client.models, on_done=self._show_models)

    def _show_models(self, models: list[Model]) -> None:
        selected = self.selected_model()
        self.models = list(models)
        self.session.set_model_id(self.active_model())  # the proposals shown come from the active model
        table = self.models_table
        table.setRowCount(len(self.models))
        for row, model in enumerate(self.models):
            dice = model.metrics.get("val_dice")
            cells = (
                "●" if model.active else "",
                model.id,
                str(model.round),
                model.method,
                "–" if dice is None else f"{float(dice):.3f}",
                time.strftime("%Y-%m-%d %H:%M", time.localtime(model.created_at)),
            )
            for col, text in enumerate(cells):
                table.setItem(row, col, QTableWidgetItem(text))
            if model.id == selected:
                table.selectRow(row)
        self._redraw_dice()

    def active_model(self) -> str | None:
        """The id of the active model, as the table last showed it."""
        return next((m.id for m in self.models if m.active), None)

    def selected_model(self) -> str | None:
        """The id of the model selected in the table, or None."""
        selection = self.models_table.selectionModel()
        rows = set() if selection is None else {index.row() for index in selection.selectedRows()}
        if not rows or min(rows) >= len(self.models):
            return None
        return self.models[min(rows)].id

    def set_active(self, model_id: str | None = None) -> None:
        """Make ``model_id`` (default: the selected row) the active model: new proposals come from it."""
        model_id = model_id or self.selected_model()
        if model_id is None:
            show_warning("Select a model in the table first.")
            return
        if self.session.client is None:
            show_warning("Connect to a backend in the DiffSeg project widget first.")
            return

        def done(model: Model) -> None:
            show_info(f"Model {model.id} is now active: new proposals come from it.")
            self.refresh_models()

        run_in_thread(self.session.client.activate_model, model_id, on_done=done)

    def export_weights(self, model_id: str | None = None, dest: str | Path | None = None) -> None:
        """Save a model's ``.safetensors`` weights (default: the selected, else the active model) to
        ``dest`` (a file or a folder; default: ask with a file dialog)."""
        model_id = model_id or self.selected_model() or self.active_model()
        if model_id is None:
            show_warning("There is no model to export yet: run pretraining or a co-training round first.")
            return
        if self.session.client is None:
            show_warning("Connect to a backend in the DiffSeg project widget first.")
            return
        if dest is None:
            dest, _filter = QFileDialog.getSaveFileName(
                self, "Export weights", f"{model_id}.safetensors", "safetensors (*.safetensors)"
            )
            if not dest:
                return
        run_in_thread(
            self.session.client.download_weights,
            model_id,
            str(dest),
            on_done=lambda path: show_info(f"Saved the weights of model {model_id} to {path}."),
        )

    # ------------------------------------------------------------------------------------ teardown

    def closeEvent(self, event: Any) -> None:
        self._token += 1  # a worker still streaming ends quietly
        self._close_napari_progress()
        super().closeEvent(event)
