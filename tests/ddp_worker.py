"""Run by ``torchrun --nproc_per_node 2`` from test_distributed.py: co-train under DDP (gloo, CPU)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

from napari_diffseg.base.presets import get_preset
from napari_diffseg.core.distributed import cleanup, setup_from_env
from napari_diffseg.core.models import ModelBundle, ModelSpec
from napari_diffseg.core.training import TrainData, cotrain


def main(out: Path) -> None:
    torch.set_num_threads(1)
    info = setup_from_env("cpu")
    g = torch.Generator().manual_seed(0)
    imgs = [torch.randn((3, 40, 40), generator=g) for _ in range(5)]
    masks = [(x[0] > 0).long() for x in imgs[:2]]
    data = TrainData(imgs[:2], masks, unlabeled_images=imgs[2:])
    pr = get_preset("tiny").with_overrides(cotrain_steps=5, refresh_every=3)
    # a different seed per rank: DDP must broadcast rank 0's initial weights and average gradients
    bundle = ModelBundle(
        ModelSpec("diffseg", 3, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim), seed=info.rank
    )
    before = bundle.nets["student_a"].state_dict()["unet.model.0.conv.unit0.conv.weight"].clone()
    for _ in cotrain(
        bundle,
        data,
        pr,
        generator=torch.Generator().manual_seed(100 + info.rank),
        seed=0,
        device=info.device,
        distributed=True,
    ):
        pass
    h = hashlib.sha256()
    for name in ("teacher_mask", "student_a", "student_b"):
        for k, v in sorted(bundle.nets[name].state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().numpy().tobytes())
    after = bundle.nets["student_a"].state_dict()["unet.model.0.conv.unit0.conv.weight"]
    changed = not torch.equal(before, after)
    (out / f"rank{info.rank}.txt").write_text(f"{h.hexdigest()} {info.world} {changed}\n")
    cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
