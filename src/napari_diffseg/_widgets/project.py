"""The project dock widget: connect to (or start) a backend, the image table, "Next image"."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_diffseg._layers import to_display
from napari_diffseg._widgets._session import run_in_thread, session_for
from napari_diffseg.backend.errors import BackendUnavailable

__all__ = ["ProjectWidget", "start_local_backend"]

COLUMNS = ("name", "state", "uncertainty", "split")
DEFAULT_URL = "http://127.0.0.1:8765"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_local_backend(project: Path, timeout: float = 60.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``diffseg serve PROJECT`` on a free loopback port and wait for ``/health`` (worker thread).

    Raises:
        BackendUnavailable: The server exited or did not answer within ``timeout`` (its log is quoted).
    """
    from napari_diffseg.backend.client import DiffsegClient
    from napari_diffseg.backend.errors import BackendError

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.gettempdir()) / f"diffseg-serve-{port}.log"
    cmd = [sys.executable, "-m", "napari_diffseg.cli", "serve", str(project), "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != "DIFFSEG_TOKEN"}  # loopback: no token
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    with DiffsegClient(url, retries=0, timeout=2) as probe:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                probe.health()
                return proc, url
            except BackendError:
                time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    raise BackendUnavailable(
        0, f"the local backend for {project} did not start: {' / '.join(tail) or 'no output'} (log: {log})"
    )


def _fetch_image(client: Any, record: dict[str, Any] | None) -> tuple[dict[str, Any], np.ndarray] | None:
    """Worker: the record (``None`` → ``/next``) and the pixels of the image to open."""
    if record is None:
        record = client.next_image()
        if record is None:
            return None
    return record, client.image_pixels(record["id"])


class ProjectWidget(QWidget):
    """Connect to a backend (URL + token) or start one for a project folder; browse and open images."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.images: list[dict[str, Any]] = []

        self.url = QLineEdit(DEFAULT_URL)
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.Password)
        self.token.setPlaceholderText("only for a remote backend")
        self.connect_button = QPushButton("Connect")
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("project folder (with project.db)")
        browse = QPushButton("Browse…")
        self.start_button = QPushButton("Start local backend")
        self.status = QLabel("not connected")
        self.status.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.refresh_button = QPushButton("Refresh")
        self.next_button = QPushButton("Next image")
        self.next_button.setToolTip("Open the unreviewed image with the highest uncertainty")

        form = QFormLayout()
        form.addRow("Backend URL", self.url)
        form.addRow("Token", self.token)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder)
        folder_row.addWidget(browse)
        buttons = QHBoxLayout()
        buttons.addWidget(self.refresh_button)
        buttons.addWidget(self.next_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.connect_button)
        layout.addLayout(folder_row)
        layout.addWidget(self.start_button)
        layout.addWidget(self.status)
        layout.addWidget(self.table)
        layout.addLayout(buttons)

        self.connect_button.clicked.connect(self._on_connect)
        browse.clicked.connect(self._on_browse)
        self.start_button.clicked.connect(self._on_start_local)
        self.refresh_button.clicked.connect(self.refresh)
        self.next_button.clicked.connect(self.open_next)
        self.table.cellDoubleClicked.connect(self._on_row_activated)
        self.session.connected.connect(self._on_connected)
        self.destroyed.connect(self.session.stop_server)

    # ------------------------------------------------------------------------------ connection

    def connect_to(self, url: str, token: str | None = None) -> None:
        """Connect to a running backend (its health is checked off the Qt thread)."""
        from napari_diffseg.backend.client import DiffsegClient

        client = DiffsegClient(url, token=token or None, retries=1)
        self.status.setText(f"connecting to {url}…")
        run_in_thread(
            client.health,
            on_done=lambda _health: self.session.set_client(client),
            on_error=partial(self._on_connect_failed, client),
        )

    def _on_connect_failed(self, client: Any, exc: BaseException) -> None:
        client.close()
        self._failed(exc)

    def start_local(self, folder: str | os.PathLike[str]) -> None:
        """Start ``diffseg serve FOLDER`` on a free loopback port and connect to it."""
        path = Path(folder).expanduser()
        if not (path / "project.db").is_file():
            self._failed(
                BackendUnavailable(
                    0, f"{path} is not a diffseg project (no project.db); create one with `diffseg init`."
                )
            )
            return
        self.session.stop_server()
        self.status.setText(f"starting a backend for {path}…")
        self.start_button.setEnabled(False)
        run_in_thread(
            start_local_backend,
            path,
            on_done=self._on_local_started,
            on_error=self._failed,
            on_finish=lambda: self.start_button.setEnabled(True),
        )

    def _on_connect(self) -> None:
        self.connect_to(self.url.text().strip(), self.token.text().strip())

    def _on_browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Project folder")
        if folder:
            self.folder.setText(folder)

    def _on_start_local(self) -> None:
        self.start_local(self.folder.text().strip())

    def _on_local_started(self, result: tuple[subprocess.Popen[bytes], str]) -> None:
        proc, url = result
        self.session.server = proc
        self.url.setText(url)
        self.connect_to(url)

    def _on_connected(self, client: Any) -> None:
        self.status.setText(f"connected to {client.base_url}")
        self.refresh()

    def _failed(self, exc: BaseException) -> None:
        from napari_diffseg._widgets._session import notify_error

        self.status.setText("not connected" if self.session.client is None else self.status.text())
        notify_error(exc)

    # ------------------------------------------------------------------------------ images

    def refresh(self) -> None:
        """Reload the image table from the backend."""
        if self.session.client is None:
            return
        run_in_thread(self.session.client.images, on_done=self._show_images)

    def _show_images(self, images: list[dict[str, Any]]) -> None:
        self.images = list(images)
        self.table.setRowCount(len(self.images))
        for row, rec in enumerate(self.images):
            unc = rec.get("uncertainty")
            cells = (rec["name"], rec["state"], "" if unc is None else f"{unc:.3f}", rec["split"])
            for col, text in enumerate(cells):
                self.table.setItem(row, col, QTableWidgetItem(str(text)))
        self.table.resizeColumnsToContents()

    def open_next(self) -> None:
        """Open the most uncertain unreviewed image as an Image layer."""
        self.open_image(None)

    def open_image(self, record: dict[str, Any] | None) -> None:
        """Open one image (``None``: the backend's next one) as an Image layer."""
        if self.session.client is None:
            self._failed(BackendUnavailable(0, "not connected to a backend: connect or start one first."))
            return
        run_in_thread(_fetch_image, self.session.client, record, on_done=self._add_image)

    def _on_row_activated(self, row: int, _col: int) -> None:
        if 0 <= row < len(self.images):
            self.open_image(self.images[row])

    def _add_image(self, result: tuple[dict[str, Any], np.ndarray] | None) -> None:
        if result is None:
            show_info("Every image has been reviewed: start a training round in the DiffSeg train widget.")
            return
        record, pixels = result
        data, rgb = to_display(pixels)
        if record["name"] in self.viewer.layers:
            self.viewer.layers.remove(record["name"])
        self.viewer.add_image(data, name=record["name"], rgb=rgb, metadata={"diffseg_image": record})
        self.session.set_image(record)
