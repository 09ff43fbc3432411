"""Export → bioimage.io from the Train widget: ``diffseg export`` in a child process (no Qt here).

Building a package loads torch, scripts the network and runs ``bioimageio.core``'s test, none of which may
happen in napari's process; the package is built where the model is, i.e. next to the project, so this
works when the widgets started the backend on this machine (:func:`local_project`). For a remote backend
the widget says which command to run on the server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from napari_diffseg.base.errors import DiffsegError

__all__ = ["export_command", "local_project", "run_export"]

TIMEOUT_S = 1800


def local_project(server: Any) -> Path | None:
    """The project folder of the local ``diffseg serve`` child process a session started, or None (no
    local backend, or it has exited)."""
    if server is None or server.poll() is not None:
        return None
    args = [str(a) for a in (server.args if isinstance(server.args, list | tuple) else [])]
    if "serve" not in args:
        return None
    i = args.index("serve")
    return Path(args[i + 1]) if i + 1 < len(args) else None


def export_command(project: Path, model_id: str, dest: str | Path) -> list[str]:
    """The ``diffseg export`` command line (the widget's file dialog already asked before replacing)."""
    return [
        sys.executable,
        "-m",
        "napari_diffseg.cli",
        "export",
        str(project),
        "--model",
        model_id,
        "--out",
        str(dest),
        "--overwrite",
        "--json",
    ]


def run_export(project: Path, model_id: str, dest: str | Path) -> dict[str, Any]:
    """Run the export; returns its JSON report.

    Raises:
        DiffsegError: The export failed (its one-line message; nothing was written at ``dest``).
    """
    proc = subprocess.run(
        export_command(project, model_id, dest),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        msg = lines[-1] if lines else f"exit status {proc.returncode}"
        raise DiffsegError(f"Export of model {model_id} to bioimage.io failed: {msg.removeprefix('error: ')}")
    return dict(json.loads(proc.stdout))
