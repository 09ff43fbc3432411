"""What each preset costs, per unit of work: the constants of ``napari_diffseg/base/cost.py``.

    OMP_NUM_THREADS=1 python benchmarks/preset_cost.py [--out benchmarks/results/preset_cost.json]

For each preset (tiny, cpu, gpu) and one torch thread on the CPU:

* seconds per training step of Stage A (``pretrain``), Stage B (``teacher``) and Stage C (``cotrain``,
  without its pseudo-label refreshes), from the difference of an (n + 1)-step and a 1-step run, so the
  set-up is not counted;
* seconds per megapixel of window area of one teacher denoiser evaluation (a proposal / pseudo-label
  step, sample E = 1) and of one student evaluation (prediction, validation), with the preset's tile size;
* the start-up of a job process (``import napari_diffseg.backend.jobs``).

Times are **CPU seconds of this process** (``time.process_time``), which is what one thread costs on a
quiet machine; the development machine is shared with other work, and wall time there would measure the
load, not the method. A job's ETA (review.JobHistory) corrects the prediction by the speed it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from napari_diffseg.base.cost import windowed_pixels
from napari_diffseg.base.presets import get_preset
from napari_diffseg.core.diffusion import SamplerConfig
from napari_diffseg.core.inference import predict_probs, propose
from napari_diffseg.core.models import ModelBundle, ModelSpec
from napari_diffseg.core.training import TrainData, cotrain, pretrain_teacher, train_teacher

CPU = torch.device("cpu")
STEPS = {"tiny": 40, "cpu": 8, "gpu": 3}


def _cpu(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def _per_step(run, n: int) -> float:
    """CPU seconds per step: (time of n + 1 steps - time of 1 step) / n."""
    run(1)  # warm-up (allocator, MONAI imports)
    one = _cpu(lambda: run(1))
    many = _cpu(lambda: run(n + 1))
    return max(0.0, (many - one) / n)


def measure(name: str) -> dict[str, float]:
    pr = get_preset(name)
    g = torch.Generator().manual_seed(0)
    imgs = [torch.randn(3, 256, 256, generator=g) for _ in range(6)]
    masks = [(x[0] > 0).long() for x in imgs]
    data = TrainData(imgs[:2], masks[:2], unlabeled_images=imgs[2:])
    spec = ModelSpec("diffseg", 3, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim)
    n = STEPS[name]

    def bundle() -> ModelBundle:
        return ModelBundle(spec, seed=0)

    out = {
        "pretrain": _per_step(
            lambda k: list(
                pretrain_teacher(
                    bundle(), data.all_images, pr.with_overrides(pretrain_steps=k), generator=g, device=CPU
                )
            ),
            n,
        ),
        "teacher": _per_step(
            lambda k: list(
                train_teacher(bundle(), data, pr.with_overrides(teacher_steps=k), generator=g, device=CPU)
            ),
            n,
        ),
    }
    # Stage C's steps without the refreshes: the refresh at step 0 is in both runs and cancels out
    cheap = pr.with_overrides(refresh_every=10**6, refresh_ddim_steps=1, refresh_samples=1, rounds=1)
    out["cotrain"] = _per_step(
        lambda k: list(
            cotrain(bundle(), data, cheap.with_overrides(cotrain_steps=k), generator=g, seed=0, device=CPU)
        ),
        n,
    )
    b = bundle()
    side = 512
    x = torch.randn(1, 3, side, side, generator=g)
    area = windowed_pixels(side, side, pr.roi_size, b.spec.multiple) / 1e6
    reps = 3 if name != "gpu" else 1

    def teacher_eval() -> None:
        for _ in range(reps):
            propose(
                b.mask_net,
                b.diffusion(),
                x,
                SamplerConfig(steps=1, samples=1, rounds=1),
                torch.Generator().manual_seed(0),
                multiple=b.spec.multiple,
                roi=pr.roi_size,
                sw_batch=pr.sw_batch_size,
            )

    def student_eval() -> None:
        for _ in range(reps):
            predict_probs(
                [b.nets["student_a"]], x, multiple=b.spec.multiple, roi=pr.roi_size, sw_batch=pr.sw_batch_size
            )

    teacher_eval()
    out["teacher_eval_per_mpx"] = _cpu(teacher_eval) / reps / area
    out["student_eval_per_mpx"] = _cpu(student_eval) / reps / area
    return {k: round(v, 5) for k, v in out.items()}


def startup() -> float:
    """CPU seconds of a fresh process that imports what a job process imports."""
    code = "import time; import napari_diffseg.backend.jobs; print(time.process_time())"
    runs = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(3)
    ]
    return round(min(runs), 2)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/preset_cost.json"))
    ap.add_argument("--presets", nargs="+", default=["tiny", "cpu", "gpu"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = {
        "what": "CPU seconds (one thread) per unit of work of each preset; see benchmarks/preset_cost.py",
        "machine": {
            "processor": _cpu_name(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "load_average_at_start": os.getloadavg()[0],
        },
        "startup_s": startup(),
        "presets": {},
    }
    for name in args.presets:
        t0 = time.perf_counter()
        result["presets"][name] = measure(name)
        print(name, result["presets"][name], f"({time.perf_counter() - t0:.0f} s wall)", flush=True)
    result["machine"]["load_average_at_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
