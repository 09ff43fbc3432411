"""The model bundles that are trained, saved together and deployed.

A bundle is a dict of named networks plus a ``ModelSpec`` that says how to rebuild them. Every method
(diffseg and the baselines) produces one; ``deploy`` names the networks whose mean softmax is the
prediction that ``predict`` and ``evaluate`` use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from ..base.errors import CheckpointError, ConfigError
from ..base.preprocessing import PER_IMAGE_CONFIG, Normalization, match_channels, normalize_image
from .diffusion import MaskDiffusion
from .networks import CondUNet, NetConfig, StudentNet, build_image_denoiser, build_mask_denoiser

__all__ = ["METHODS", "ModelBundle", "ModelSpec", "preprocess"]

T = TypeVar("T")
METHODS = ("diffseg", "supervised", "mean-teacher", "cps")


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a bundle's networks (saved in config.json)."""

    method: str
    in_channels: int
    num_classes: int
    student_channels: tuple[int, ...]
    teacher_channels: tuple[int, ...]
    emb_dim: int
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.in_channels < 1:
            raise ConfigError(f"images must have at least 1 channel, got {self.in_channels}")
        if self.num_classes < 2:
            raise ConfigError("num_classes must be >= 2 (background + at least one class)")

    @property
    def multiple(self) -> int:
        return 2 ** max(len(self.student_channels), len(self.teacher_channels))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["student_channels"] = list(self.student_channels)
        d["teacher_channels"] = list(self.teacher_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        try:
            return cls(
                **{
                    **d,
                    "student_channels": tuple(d["student_channels"]),
                    "teacher_channels": tuple(d["teacher_channels"]),
                }
            )
        except (KeyError, TypeError) as exc:
            raise CheckpointError(
                f"the model's config.json does not describe a napari-diffseg model ({exc}); "
                "retrain it with this version"
            ) from exc


def preprocess(image: np.ndarray, channels: int, normalization: Normalization | None = None) -> torch.Tensor:
    """The input every network sees: a raw ``(C, H, W)`` image → ``channels`` channels (1 → 3 replicates,
    3 → 1 averages), normalised with ``normalization`` (the model's statistics, computed over its training
    images by :func:`~napari_diffseg.base.preprocessing.dataset_statistics`) → float32 tensor. Without
    statistics (a model saved before they existed) each channel is clipped to its own 0.5 / 99.5
    percentiles and standardised, as then.

    The one preprocessing of training, proposals, prediction, the demo and the benchmarks; with a bundle,
    use :meth:`ModelBundle.preprocess`. Only for training data read before the bundle exists call it
    directly, with the statistics the bundle will carry.

    Raises:
        DataError: Not a ``(C, H, W)`` array, NaN / infinite values, or channels that cannot be matched.
    """
    return torch.from_numpy(normalize_image(match_channels(image, channels), normalization))


def _seeded(seed: int, build: Callable[[], T]) -> T:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class ModelBundle:
    """Named networks for one method, built deterministically from ``seed``, and the normalisation of
    their input (``None``: per image, as models saved before statistics existed)."""

    def __init__(self, spec: ModelSpec, seed: int = 0, normalization: Normalization | None = None) -> None:
        self.spec = spec
        if normalization is not None and normalization.channels != spec.in_channels:
            raise ConfigError(
                f"the normalisation has {normalization.channels} channel(s), the networks take {spec.in_channels}"
            )
        self.normalization = normalization
        s = spec
        student_cfg = NetConfig(s.in_channels, s.num_classes, s.student_channels)
        self.nets: dict[str, nn.Module] = {}
        if s.method == "diffseg":
            self.nets["teacher_mask"] = _seeded(
                seed * 10 + 1,
                lambda: build_mask_denoiser(s.num_classes, s.in_channels, s.teacher_channels, s.emb_dim),
            )
            self.nets["teacher_image"] = _seeded(
                seed * 10 + 2,
                lambda: build_image_denoiser(s.num_classes, s.in_channels, s.teacher_channels, s.emb_dim),
            )
        if s.method in ("diffseg", "cps"):
            self.nets["student_a"] = _seeded(seed * 10 + 3, lambda: StudentNet(student_cfg))
            self.nets["student_b"] = _seeded(seed * 10 + 4, lambda: StudentNet(student_cfg))
        if s.method in ("supervised", "mean-teacher"):
            self.nets["student"] = _seeded(seed * 10 + 3, lambda: StudentNet(student_cfg))
        if s.method == "mean-teacher":
            ema = _seeded(seed * 10 + 3, lambda: StudentNet(student_cfg))
            ema.load_state_dict(self.nets["student"].state_dict())
            for p in ema.parameters():
                p.requires_grad_(False)
            self.nets["ema"] = ema

    @property
    def deploy(self) -> list[str]:
        """Networks averaged at prediction time."""
        return {
            "diffseg": ["student_a", "student_b"],
            "cps": ["student_a", "student_b"],
            "supervised": ["student"],
            "mean-teacher": ["ema"],
        }[self.spec.method]

    @property
    def mask_net(self) -> CondUNet:
        net = self.nets.get("teacher_mask")
        if net is None:
            raise ConfigError(
                f"a {self.spec.method!r} model has no diffusion teacher; train with method diffseg"
            )
        return net  # type: ignore[return-value]

    @property
    def has_teacher(self) -> bool:
        return "teacher_mask" in self.nets

    def diffusion(self) -> MaskDiffusion:
        return MaskDiffusion(self.spec.num_classes, self.spec.num_train_timesteps)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """A raw ``(C, H, W)`` image → the normalised ``(in_channels, H, W)`` float32 tensor the networks
        take, with the bundle's own statistics (see :func:`preprocess`)."""
        return preprocess(image, self.spec.in_channels, self.normalization)

    def to(self, device: torch.device) -> ModelBundle:
        from .device import prepare_module

        self.nets = {k: prepare_module(v, device) for k, v in self.nets.items()}
        return self

    def deployed(self) -> list[nn.Module]:
        return [self.nets[n] for n in self.deploy]


def save_bundle(
    bundle: ModelBundle, directory: str | Path, *, extra: dict | None = None, metrics: dict | None = None
) -> Path:
    """Write weights (safetensors), config.json (spec, normalisation + ``extra``) and metrics.json to
    ``directory``."""
    from .checkpoint import save_model

    norm = bundle.normalization.to_dict() if bundle.normalization is not None else dict(PER_IMAGE_CONFIG)
    config = {"spec": bundle.spec.to_dict(), "deploy": bundle.deploy, "normalization": norm, **(extra or {})}
    return save_model(directory, bundle.nets, config, metrics)


def load_bundle(directory: str | Path, device: torch.device | None = None) -> tuple[ModelBundle, dict, dict]:
    """Rebuild a bundle from a model folder; returns (bundle, config, metrics). A config without
    normalisation statistics (a model saved before they existed) gives a bundle that normalises per image."""
    from .checkpoint import load_into, load_model_files

    states, config, metrics = load_model_files(directory)
    if "spec" not in config:
        raise CheckpointError(
            f"{directory} holds no model spec in config.json; it was not written by napari-diffseg"
        )
    try:
        norm = Normalization.from_config(config)
    except ConfigError as exc:
        raise CheckpointError(f"{directory}: {exc}") from exc
    bundle = ModelBundle(ModelSpec.from_dict(config["spec"]), normalization=norm)
    missing = set(bundle.nets) - set(states)
    if missing:
        raise CheckpointError(
            f"{directory} lacks the weights of {sorted(missing)}; the model folder is incomplete"
        )
    for name, net in bundle.nets.items():
        load_into(net, states[name], name=name)
    if device is not None:
        bundle.to(device)
    for net in bundle.nets.values():
        net.eval()
    return bundle, config, metrics
