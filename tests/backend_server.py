"""Test helper: a real ``diffseg serve`` (uvicorn) on a free loopback port, in a child process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``python -m napari_diffseg.cli serve ROOT --port P [args]``; :meth:`start` waits for ``/health``."""

    def __init__(self, root: Path, *args: str, token: str | None = None) -> None:
        self.root = Path(root)
        self.args = list(args)
        self.token = token
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.root.parent / f"{self.root.name}-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def start(self, timeout: float = 60.0) -> Server:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        }
        if self.token:
            env["DIFFSEG_TOKEN"] = self.token
        for _attempt in range(3):  # a free port can be taken in between: try another
            self.port = free_port()
            cmd = [
                sys.executable,
                "-m",
                "napari_diffseg.cli",
                "serve",
                str(self.root),
                "--port",
                str(self.port),
            ]
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [*cmd, *self.args], stdout=log, stderr=subprocess.STDOUT, env=env
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    if (
                        httpx.get(self.url + "/api/v1/health", headers=self.headers, timeout=2).status_code
                        == 200
                    ):
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            else:
                self.stop()
                raise RuntimeError(f"the server did not start in {timeout} s:\n{self.log.read_text()}")
        raise RuntimeError(f"the server exited at start-up:\n{self.log.read_text()}")

    def kill(self) -> None:
        """``kill -9`` the server process (its job workers notice and stop themselves)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (graceful: uvicorn shuts down, running jobs are cancelled); SIGKILL after 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def alive(self) -> bool:
        try:
            r = httpx.get(self.url + "/api/v1/health", headers=self.headers, timeout=5)
        except httpx.TransportError:
            return False
        return r.status_code == 200 and r.json()["status"] == "ok"

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_project(root: Path, n_train: int = 4, size: int = 64, annotate: int = 1) -> Path:
    """A project with ``n_train`` synthetic train images, 1 val image (with mask), ``annotate`` corrections."""
    from napari_diffseg.data.synthetic import make_sample_dataset
    from napari_diffseg.project import Project

    ds = make_sample_dataset(
        root.parent / f"{root.name}-ds", n_train=n_train, n_test=1, size=(size, size), seed=5
    )
    import imageio.v3 as iio

    with Project.create(root) as project:
        images = sorted((ds / "images").glob("train_*.png"))
        for i, path in enumerate(images):
            project.import_array(iio.imread(path), path.stem)
            if i < annotate:
                mask = (iio.imread(ds / "masks" / path.name) > 0).astype(np.uint8)
                project.save_annotation(path.stem, mask, replaces=None, author="test")
    return root
