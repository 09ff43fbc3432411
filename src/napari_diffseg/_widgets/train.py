"""The train dock widget: start a pretraining, co-training or propose job on the backend, follow its
events (progress and ETA over the whole job, a live plot of the losses grouped for people, the validation
Dice), cancel it; the table of model versions, set the active one, export weights.

Why one module of ~900 lines: one dock widget (the job form with its cost line, progress, two plots, the
model table) whose handlers share the followed job's state; the plot is ``_plot.py``, and what is not Qt
(the job follower, the job history, ETA, loss names, the cost text, the suggested job) is in
:mod:`napari_diffseg.review`. A next split would move the model table into its own widget.

Before a job starts the widget says what it will cost for this project (:func:`napari_diffseg.base.cost.job_plan`
over the project's images, at the speed the last job measured on this backend); the job offered is
:func:`~napari_diffseg.review.suggested_kind`'s: ``cotrain`` once an image is annotated, else ``pretrain``
on a project without a model and ``propose`` on one with a model.

Training never runs in the napari process, and no backend call runs on the Qt thread: the job's events
arrive from a worker thread; :class:`JobHistory` (no Qt) turns them into what is drawn, and the view is
refreshed at most four times a second. The job follower and :class:`JobHistory` live in
:mod:`napari_diffseg.review`.
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

from napari_diffseg._widgets._bioimageio import local_project, run_export
from napari_diffseg._widgets._plot import COLORS, CurvePlot
from napari_diffseg._widgets._session import header as _header
from napari_diffseg._widgets._session import notify_error, run_in_thread, session_for
from napari_diffseg.backend.errors import BackendError, BackendUnavailable
from napari_diffseg.base.contracts import Image, Job, JobEventOut, Model
from napari_diffseg.base.cost import REFERENCE, Plan, is_label_free, job_plan
from napari_diffseg.base.presets import get_preset
from napari_diffseg.review import (
    LOSS_GROUPS,
    JobHistory,
    cost_text,
    describe_event,
    first_proposal_plan,
    follow_job,
    format_duration,
    latest_open_job,
    loss_name,
    suggested_kind,
)

__all__ = ["PRESETS", "JobHistory", "TrainWidget", "describe_event", "format_duration", "suggested_kind"]

PRESETS = ("tiny", "cpu", "gpu")
KINDS = ("pretrain", "cotrain", "propose")  # the job choices, in the order the combo box lists them
KIND_HELP = {
    "pretrain": (
        "Label-free: the teacher learns from the images alone; a rough first model to correct. With an "
        "annotation, cotrain instead: it does not need this step."
    ),
    "cotrain": "Teacher and students learn from your annotations (at least one) and the other images.",
    "propose": "The active model proposes masks with uncertainty; 'Next image' then picks the most uncertain.",
}
PROPOSE_SCOPES = (
    ("unreviewed images", "unreviewed"),  # the job's default: images without an annotation
    ("all images (also annotated)", "all"),
)
MODEL_COLUMNS = ("active", "model", "round", "method", "val Dice", "created")

#: How a model's validation figures are named in the val Dice cell's tooltip (the others: their key).
_VAL_NAMES = {
    "val_dice": "Dice",
    "val_iou": "IoU",
    "val_ap_50": "objects AP@0.5",
    "val_f1_50": "objects F1@0.5",
    "val_class_accuracy": "objects with the right class",
    "val_ap_50_default_watershed": "objects AP@0.5 with the default watershed (the model's own is tuned here)",
}


def val_tooltip(metrics: dict[str, Any]) -> str:
    """Every validation figure of a model, one per line (an instance project's objects' AP@0.5 and F1@0.5,
    the share of matched objects with the right class, a multiclass project's Dice per class)."""
    n = metrics.get("val_n")
    lines = [f"validation on {int(n)} image(s)" if n else "no validation images scored"]
    for key, value in metrics.items():
        if not key.startswith("val_") or key == "val_n" or not isinstance(value, int | float):
            continue
        name = _VAL_NAMES.get(key) or key.removeprefix("val_").replace("dice_class", "Dice of class ")
        lines.append(f"{name}: {float(value):.3f}")
    return "\n".join(lines)


IMAGES_CHANGED_INTERVAL_S = 2.0  # while a propose job runs, the image table is refreshed at most this often
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
        self.images: list[Image] = []  # the project's images, as last listed (for the cost estimate)
        self.plan: Plan | None = None  # what the form's job would cost (None before the images are known)
        self._kind_chosen = False  # the job kind was chosen (by a person or a script): keep it
        self._auto_kind = False
        self._images_changed_at = 0.0
        self._alone = False  # the followed job was started here while no other job was queued or running
        self._alive = [True]  # False once Qt has deleted the widget (a worker may still deliver)
        self.destroyed.connect(partial(_mark_deleted, self._alive))

        self.kind = QComboBox()
        self.kind.addItems(list(KINDS))
        self.kind.setToolTip("\n".join(f"{k}: {v}" for k, v in KIND_HELP.items()))
        self.kind_help = QLabel(KIND_HELP[KINDS[0]])
        self.kind_help.setWordWrap(True)
        self.kind_help.setMinimumHeight(2 * self.kind_help.fontMetrics().lineSpacing() + 2)
        self.preset = QComboBox()
        self.preset.addItems(list(PRESETS))
        self.preset.setCurrentText("cpu")  # a laptop's budget; tiny is a first look, gpu for a GPU server
        self.preset.setToolTip(
            "tiny: seconds, a first look (its proposals are rough)\n"
            "cpu: minutes on a laptop\n"
            "gpu: the paper's budget, for a GPU backend"
        )
        self.rounds = QSpinBox()
        self.rounds.setRange(1, 20)
        self.scope = QComboBox()
        for text, data in PROPOSE_SCOPES:
            self.scope.addItem(text, data)
        self.scope.setToolTip(
            "unreviewed images: every image without an annotation (not the test split)\n"
            "all images: also the corrected and ground-truth ones (their uncertainty, to compare)"
        )
        self.estimate = QLabel("")
        self.estimate.setWordWrap(True)
        self.estimate.setMinimumHeight(5 * self.estimate.fontMetrics().lineSpacing() + 2)  # never cut
        self.estimate.setToolTip(
            f"Predicted from the project's image sizes and counts and the preset's measured cost on {REFERENCE} "
            "(benchmarks/preset_cost.py), at the speed this backend measured when it started (a few training "
            "steps) and, once a job has run, at the speed that job showed."
        )
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
        self.bioimageio_button = QPushButton("Export → bioimage.io…")
        self.bioimageio_button.setToolTip(
            "Write the selected (else the active) model as a bioimage.io model package (.zip) that "
            "deepImageJ / Fiji, QuPath, ilastik, BiaPy and bioimageio.core open; it is tested before it is "
            "written (local backend only)"
        )
        self.refresh_button = QPushButton("Refresh")

        form = QFormLayout()
        form.addRow("Job", self.kind)
        form.addRow("", self.kind_help)
        form.addRow("Preset", self.preset)
        form.addRow("Rounds", self.rounds)
        form.addRow("Images", self.scope)
        form.addRow("Cost", self.estimate)
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
        model_buttons.addWidget(self.bioimageio_button)
        model_buttons.addWidget(self.refresh_button)
        self.loss_group = QComboBox()
        self.loss_group.addItems(list(LOSS_GROUPS))
        self.loss_group.setToolTip(
            "students: the twin students' losses (labelled images, the teacher's pseudo-labels, agreement "
            "between the twins)\nteacher: the diffusion teacher's (labelled masks, the students' consensus, "
            "label-free pretraining)\ntotal: what each stage minimises"
        )
        self._group_chosen = False
        self._preferred_group = "students"
        group_row = QHBoxLayout()
        group_row.addWidget(QLabel("Losses of"))
        group_row.addWidget(self.loss_group, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.eta)
        layout.addWidget(self.status)
        layout.addLayout(group_row)
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
        self.bioimageio_button.clicked.connect(lambda: self.export_bioimageio())
        self.refresh_button.clicked.connect(self.refresh_models)
        self.kind.currentIndexChanged.connect(self._on_kind_changed)
        self.preset.currentIndexChanged.connect(self._update_estimate)
        self.rounds.valueChanged.connect(self._update_estimate)
        self.scope.currentIndexChanged.connect(self._update_estimate)
        self.loss_group.currentIndexChanged.connect(self._on_group_changed)
        self.session.connected.connect(self._on_connected)
        self.session.follow_job.connect(self.follow)  # e.g. a job resumed from the session's notification
        self.session.images_changed.connect(self.refresh_images)
        self.session.speed_changed.connect(self._update_estimate)
        self._show_kind()
        if self.session.client is not None:
            self._on_connected(self.session.client)

    # ------------------------------------------------------------------------------------ jobs

    def params(self) -> dict[str, Any]:
        """The job parameters the form describes."""
        params: dict[str, Any] = {"preset": self.preset.currentText()}
        kind = self.kind.currentText()
        if kind == "cotrain":
            params["rounds"] = self.rounds.value()
        elif kind == "propose" and self.scope.currentData() == "all":
            params["ids"] = [im.id for im in self._all_images()]
        return params

    def _all_images(self) -> list[Image]:
        """What 'all images' proposes for: every image that is not excluded and not in a test split."""
        return [im for im in self.images if im.state != "excluded" and not im.split.startswith("test")]

    def start(self) -> None:
        """Start the job on the backend and follow its events."""
        if self.session.client is None:
            show_warning("Connect to a backend in the DiffSeg project widget first.")
            return
        kind = self.kind.currentText()
        if kind == "propose" and self.scope.currentData() == "all" and not self._all_images():
            show_warning("There are no images to propose for: import images in the DiffSeg project widget.")
            return
        self.status.setText("starting…")
        self.follow_job(None, kind, self.params())

    # ------------------------------------------------------------------------------------ the form

    def _on_kind_changed(self, _index: int = 0) -> None:
        if not self._auto_kind:
            self._kind_chosen = True
        self._show_kind()

    def _show_kind(self) -> None:
        kind = self.kind.currentText()
        self.kind_help.setText(KIND_HELP.get(kind, ""))
        self.rounds.setEnabled(kind == "cotrain")
        self.scope.setEnabled(kind == "propose")
        self._update_estimate()

    def _suggest_kind(self) -> None:
        """Until a kind is chosen: :func:`~napari_diffseg.review.suggested_kind`."""
        if self._kind_chosen:
            return
        kind = suggested_kind(self.images, self.models)
        if kind != self.kind.currentText():
            self._auto_kind = True
            try:
                self.kind.setCurrentText(kind)
            finally:
                self._auto_kind = False

    def refresh_images(self) -> None:
        """Reload the project's images (for the cost estimate and the default job) in a worker."""
        client = self.session.client
        if client is None:
            return
        run_in_thread(client.images, on_done=self._on_images, on_error=lambda _exc: None)

    def _on_images(self, images: list[Image]) -> None:
        if not self._alive[0]:
            return
        self.images = list(images)
        self._suggest_kind()
        self._update_estimate()

    def current_plan(self) -> Plan | None:
        """The plan of the job the form describes, from the images last listed (None before that)."""
        if not self.images and self.session.client is None:
            return None
        kind = self.kind.currentText()
        try:
            preset = get_preset(self.preset.currentText())
            params = self.params()
            return job_plan(
                kind,
                preset,
                self.images,
                warm_start=self.active_model() is not None,
                label_free=self.active_is_label_free(),
                rounds=self.rounds.value(),
                ids=params.get("ids"),
            )
        except Exception:  # an estimate must never break the form
            return None

    def _update_estimate(self, *_args: Any) -> None:
        self.plan = self.current_plan()
        self.estimate.setText(self.estimate_text(self.plan))

    def estimate_text(self, plan: Plan | None) -> str:
        """What the form's job will cost for this project, in words (:func:`~napari_diffseg.review.cost_text`)."""
        first = None
        if plan is not None and plan.kind == "pretrain":
            try:
                first = first_proposal_plan(get_preset(self.preset.currentText()), self.images)
            except Exception:  # an estimate must never break the form
                first = None
        return cost_text(
            plan,
            self.images,
            self.active_model() is not None,
            self.session.speed,
            self.session.speed_source,
            first_proposal=first,
        )

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
        self._alone = False
        self.job_id, self.job = job_id, None
        plan = self.current_plan() if job_id is None else None
        self.history = JobHistory(plan, factor=self.session.speed or 1.0)
        self.loss_plot.empty_text = (
            "no losses: a propose job trains nothing" if kind == "propose" else "no losses yet"
        )
        # the students' losses are what co-training is about (shown once they come, after the teacher's)
        self._preferred_group = "teacher" if kind == "pretrain" else "students"
        if not self._group_chosen:
            self._syncing, was = True, self._syncing
            try:
                self.loss_group.setCurrentText(self._preferred_group)
            finally:
                self._syncing = was
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.eta.setText(self.history.eta_text())  # with a plan: the predicted time of the whole job
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
        if token != self._token or not self._alive[0]:
            return
        if "alone" in item:
            self._alone = bool(item["alone"])
        if "job" in item:
            self._on_job(item["job"], final=bool(item.get("final")))
        events: list[JobEventOut] = item.get("events") or []
        for event in events:
            self.history.add(event.data, event.time)
        if events:
            self._status_pending = True  # the view shows the latest event at its next refresh
            self._schedule_view()
        if len(events) == 1 and events[0].data.kind == "metrics":
            self.refresh_models()  # a co-training round saved its model
        if (
            events
            and self.job is not None
            and self.job.kind == "propose"
            and time.monotonic() - self._images_changed_at > IMAGES_CHANGED_INTERVAL_S
        ):
            self._images_changed_at = time.monotonic()
            self.session.images_changed.emit()  # the table's uncertainty column fills as images are done

    def _on_job(self, job: Job, final: bool) -> None:
        if self.history.plan is None and self.history.count == 0:
            self.history.set_plan(self._plan_for(job))  # a job started elsewhere (or resumed)
        self.job, self.job_id = job, job.id
        self.history.set_started(job.started_at)
        self._status_pending = False
        state = job.state
        self.cancel_button.setEnabled(not job.ended and not job.cancel_requested)
        text = f"job {job.id} ({job.kind}): {state}"
        if not final:
            self.status.setText(text)
            return
        if state == "done":
            self.history.ended = True
            top = 1000 if self.history.plan is not None else max(1, self.progress.maximum())
            self.progress.setRange(0, top)
            self.progress.setValue(top)
            self.status.setText(f"{text} in {format_duration(_ran(job))}" if _ran(job) else text)
            # the next estimates use what this backend showed: the whole job, queue to end (start-up
            # included), when it waited for no other job; else its speed while it ran
            overall = self.history.overall_speed(job) if self._alone else None
            speed = overall if overall is not None else self.history.speed()
            if speed is not None:
                self.session.set_speed(speed, "job")
            show_info(f"Job {job.id} ({job.kind}) finished{self._what_next(job)}")
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
        if token != self._token:
            return
        if self.job_id is not None:
            self.status.setText(
                f"lost contact with job {self.job_id}; reconnect in the project widget to follow it again"
            )
        elif isinstance(exc, BackendError) and not isinstance(exc, BackendUnavailable) and exc.status:
            # refused before it was created (the backend's pre-flight): say why, here too
            self.status.setText(f"the job did not start: {exc.message}")
        else:
            self.status.setText("the job did not start")

    def _on_finished(self, token: int) -> None:
        if token != self._token or not self._alive[0]:
            return
        self._sync_view(final=True)  # the last events reach the view before napari's bar closes
        self.following = False
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.resume_button.setEnabled(self.job is not None and self.job.resumable)
        self._close_napari_progress()
        if self.job is not None:
            self.session.images_changed.emit()  # states, uncertainties and models changed: listings too
            self.session.refresh_model()

    def _plan_for(self, job: Job) -> Plan | None:
        """The plan of an existing job, from its parameters and the images as now listed."""
        if not self.images:
            return None
        try:
            params = job.params
            preset = get_preset(str(params.get("preset") or "cpu"))
            if params.get("overrides"):
                preset = preset.parse_overrides(params["overrides"])
            return job_plan(
                job.kind,
                preset,
                self.images,
                warm_start=self.active_model() is not None,
                label_free=self.active_is_label_free(),
                rounds=int(params.get("rounds") or 1),
                ids=params.get("ids"),
                steps=params.get("steps"),
                samples=params.get("samples"),
                sample_rounds=params.get("rounds") if job.kind == "propose" else None,
            )
        except Exception:
            return None

    def _what_next(self, job: Job) -> str:
        """The end of the 'finished' notification: what to do now."""
        if job.kind == "pretrain":
            return (
                ": its model is active. Open an image (Next image) to see its proposal, or run 'propose' to "
                "rank every image by uncertainty."
            )
        if job.kind == "propose":
            return (
                ": the project table shows each image's uncertainty; 'Next image' opens the most uncertain."
            )
        return ": the new model is active; its proposals are shown from now on."

    def _on_connected(self, client: Any) -> None:
        self.refresh_models()
        if client is None:
            return
        self.refresh_images()
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
                    kind = f" ({self.job.kind})" if self.job is not None else ""
                    self.status.setText(f"job {self.job_id}{kind}: {describe_event(h.last)}")
                fraction = h.fraction()
                if self.job is not None and self.job.ended:
                    pass  # the final state set the bar
                elif fraction is not None:  # the whole job, by predicted cost
                    self.progress.setRange(0, 1000)
                    self.progress.setValue(round(1000 * fraction))
                elif h.total:
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

    def _on_group_changed(self, _index: int) -> None:
        if not self._syncing:
            self._group_chosen = True
        self._redraw_losses()

    def loss_series(self, group: str) -> dict[str, tuple[list[float], list[float]]]:
        """The history's losses of ``group`` (:data:`~napari_diffseg.review.LOSS_GROUPS`) under their plain
        names; two loop keys with one name (the teacher's labelled-mask loss in Stage B and in
        co-training) are one curve."""
        h = self.history
        out: dict[str, tuple[list[float], list[float]]] = {}
        for (phase, key), (xs, ys) in h.by_phase.items():
            g, name = loss_name(phase, key)
            if g != group:
                continue
            if name in out:
                pts = sorted(zip([*out[name][0], *xs], [*out[name][1], *ys], strict=True), key=lambda p: p[0])
                out[name] = ([p[0] for p in pts], [p[1] for p in pts])
            else:
                out[name] = (list(xs), list(ys))
        return out

    def _redraw_losses(self) -> None:
        group = self.loss_group.currentText()
        series = self.loss_series(group)
        preferred = self._preferred_group
        if not self._group_chosen and group != preferred and self.loss_series(preferred):
            series = {}  # the job's own group has curves now (co-training starts after the teacher)
        if not series and not self._group_chosen:  # show a group that has curves (pretraining: teacher)
            for other in (preferred, *LOSS_GROUPS):
                found = self.loss_series(other)
                if found:
                    self._syncing, was = True, self._syncing
                    try:
                        self.loss_group.setCurrentText(other)
                    finally:
                        self._syncing = was
                    group, series = other, found
                    break
        self.loss_plot.title = {"students": "students' losses", "teacher": "teacher's losses"}.get(
            group, "total loss per stage"
        )
        names = sorted(series)
        self.loss_plot.set_data(
            {name: series[name] for name in names},
            {name: _color(name) for name in names},
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
        if not self._alive[0]:
            return
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
                _when(model.created_at),
            )
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col == len(cells) - 1:
                    item.setToolTip(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(model.created_at)))
                elif col == MODEL_COLUMNS.index("val Dice"):
                    item.setToolTip(val_tooltip(model.metrics))
                table.setItem(row, col, item)
            if model.id == selected:
                table.selectRow(row)
        self._redraw_dice()
        self._suggest_kind()
        self._update_estimate()

    def active_model(self) -> str | None:
        """The id of the active model, as the table last showed it."""
        return next((m.id for m in self.models if m.active), None)

    def active_is_label_free(self) -> bool:
        """Is the active model (as the table last showed it) label-free? Its proposals take one step."""
        return is_label_free(next((m for m in self.models if m.active), None))

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

    def export_bioimageio(self, model_id: str | None = None, dest: str | Path | None = None) -> None:
        """Export a model (default: the selected, else the active one) as a bioimage.io package to ``dest``
        (default: ask with a file dialog), with ``diffseg export`` in a child process next to the local
        backend's project; a remote backend gets the command to run on the server instead."""
        model_id = model_id or self.selected_model() or self.active_model()
        if model_id is None:
            show_warning("There is no model to export yet: run pretraining or a co-training round first.")
            return
        project = local_project(self.session.server)
        if project is None:
            show_warning(
                "The package is built where the model is, and this backend runs elsewhere: on the server, run "
                f"`diffseg export PROJECT --model {model_id} --out {model_id}.zip` and copy the zip here."
            )
            return
        if dest is None:
            dest, _filter = QFileDialog.getSaveFileName(
                self, "Export to bioimage.io", f"{model_id}.zip", "bioimage.io model package (*.zip)"
            )
            if not dest:
                return
        show_info(f"Exporting model {model_id}: building and testing the bioimage.io package…")

        def done(report: dict[str, Any]) -> None:
            show_info(
                f"Saved model {model_id} as a bioimage.io package to {report['path']} (bioimageio.core test "
                f"{report['test_status']}; same prediction as `diffseg predict` within "
                f"{report['max_abs_difference']:.0e})."
                + "".join(
                    f" Note: {d}." for d in report.get("details", []) if "deploy_best" in d
                )  # a model that deploys its teacher exports its students
            )

        run_in_thread(run_export, project, model_id, str(dest), on_done=done)

    # ------------------------------------------------------------------------------------ teardown

    def closeEvent(self, event: Any) -> None:
        self._token += 1  # a worker still streaming ends quietly
        self._close_napari_progress()
        super().closeEvent(event)


def _when(created_at: float) -> str:
    """``14:05`` for today, ``03-12 14:05`` before (the full time is the cell's tooltip)."""
    t = time.localtime(created_at)
    today = time.localtime()
    same_day = (t.tm_year, t.tm_yday) == (today.tm_year, today.tm_yday)
    return time.strftime("%H:%M" if same_day else "%m-%d %H:%M", t)


def _ran(job: Job) -> float:
    """Seconds a job ran (0 when unknown)."""
    if job.started_at is None or job.finished_at is None:
        return 0.0
    return max(0.0, job.finished_at - job.started_at)


_NAMED: dict[str, str] = {}


def _color(name: str) -> str:
    """One colour per curve name for the widget's lifetime (a curve keeps its colour when others come)."""
    if name not in _NAMED:
        _NAMED[name] = COLORS[len(_NAMED) % len(COLORS)]
    return _NAMED[name]


def _mark_deleted(alive: list[bool], *_args: Any) -> None:
    alive[0] = False
