"""Memory and time of `predict` on a 4000×4000 RGB image (sliding window, cpu preset networks).

    python benchmarks/large_image.py [--size 4000] [--model MODEL_DIR]

Prints seconds and the process's peak resident memory. Without --model, randomly initialised twin
students of the cpu preset are used (the cost does not depend on the weights).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from napari_diffseg.base.presets import get_preset
from napari_diffseg.core.inference import predict_probs
from napari_diffseg.core.models import ModelBundle, ModelSpec, load_bundle


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=4000)
    ap.add_argument("--model")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pr = get_preset("cpu")
    if args.model:
        bundle, _, _ = load_bundle(args.model)
    else:
        bundle = ModelBundle(ModelSpec("diffseg", 3, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim))
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((1, 3, args.size, args.size), dtype=np.float32))
    base = peak_rss_mib()
    t0 = time.perf_counter()
    probs = predict_probs(bundle.deployed(), x, multiple=bundle.spec.multiple, roi=pr.roi_size, sw_batch=4)
    secs = time.perf_counter() - t0
    assert probs.shape[-2:] == (args.size, args.size) and torch.isfinite(probs).all()
    print(
        f"{args.size}x{args.size} RGB, twin students, roi {pr.roi_size}: {secs:.1f} s, "
        f"peak RSS {peak_rss_mib():.0f} MiB (input alone {x.numel() * 4 / 2**20:.0f} MiB; before predict {base:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
