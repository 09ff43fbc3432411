"""Measure the peak memory of a training job per (batch x patch pixel x first-level network width).

The backend's pre-flight (``napari_diffseg.backend.preflight``) refuses a job whose memory estimate does
not fit the machine; its constant ``BYTES_PER_PIXEL_PER_WIDTH`` comes from this script. Each run is a fresh
interpreter that builds a diffseg bundle (3 input channels, 2 classes, widths (w, 2w, 4w, 8w)) and runs
every stage of ``run_stages`` (pretrain, teacher, co-training: 2 steps each, one pseudo-label refresh) on
CPU; its peak resident memory above the memory after the imports and the data is what the stages cost.
A least-squares fit of ``peak = a + batch * patch**2 * (k0 + k1 * (student_w + teacher_w))`` over the
grid gives the bytes per pixel of a batch (``k0``, what does not grow with the width: inputs, masks,
noise, the fixed-width heads) and per pixel and channel of the networks' first level (``k1``), and the
fixed cost ``a`` (parameters, optimiser state, torch's own buffers).

    python benchmarks/training_memory.py [--json benchmarks/results/training_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

GRID = [(b, p, w) for w in (8, 16) for p in (64, 128) for b in (2, 8)]

CHILD = r"""
import os, resource, sys, json
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
torch.set_num_threads(1)
from napari_diffseg.base.presets import get_preset
from napari_diffseg.core.models import ModelBundle, ModelSpec
from napari_diffseg.core.pipeline import run_stages
from napari_diffseg.core.training import TrainData

batch, patch, width = (int(a) for a in sys.argv[1:4])
chans = (width, 2 * width, 4 * width, 8 * width)
preset = get_preset("cpu").with_overrides(
    batch_size=batch, patch_size=patch, student_channels=chans, teacher_channels=chans, emb_dim=4 * width,
    pretrain_steps=2, teacher_steps=2, cotrain_steps=2, refresh_every=2, refresh_ddim_steps=1,
    refresh_samples=1, roi_size=patch, sw_batch_size=1, checkpoint_every=10**6,
)
g = torch.Generator().manual_seed(0)
imgs = [torch.randn(3, patch, patch, generator=g) for _ in range(4)]
masks = [(torch.rand(patch, patch, generator=g) > 0.5).long() for _ in range(2)]
data = TrainData(imgs[:2], masks, [1.0, 1.0], imgs[2:])
bundle = ModelBundle(ModelSpec("diffseg", 3, 2, chans, chans, 4 * width), seed=0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
for _ in run_stages(bundle, data, preset, generator=torch.Generator().manual_seed(1), seed=0,
                    device=torch.device("cpu")):
    pass
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"batch": batch, "patch": patch, "width": width, "peak_above_base": peak - base}))
"""


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write the runs and the fit here")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = []
    for b, p, w in GRID:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(b), str(p), str(w)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        run = json.loads(out.stdout.strip().splitlines()[-1])
        runs.append(run)
        print(run, flush=True)
    import numpy as np

    px = np.array([r["batch"] * r["patch"] ** 2 for r in runs], dtype=float)
    width = np.array([2 * r["width"] for r in runs], dtype=float)
    y = np.array([r["peak_above_base"] for r in runs], dtype=float)
    a, k0, k1 = np.linalg.lstsq(np.stack([np.ones_like(px), px, px * width], 1), y, rcond=None)[0]
    predicted = a + px * (k0 + k1 * width)
    fit = {
        "fixed_bytes": float(a),
        "bytes_per_pixel": float(k0),
        "bytes_per_pixel_per_width": float(k1),
        "worst_underestimate": float(np.max(y / predicted)),
    }
    print(json.dumps(fit, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"runs": runs, "fit": fit, "torch": _torch_version()}, fh, indent=2)


if __name__ == "__main__":
    main()
