"""The model bundles that are trained, saved together and deployed.

A bundle is a dict of named networks plus a ``ModelSpec`` that says how to rebuild them. Every method
(diffseg and the baselines) produces one; ``deploy`` names the networks whose mean softmax is the
prediction that ``predict`` and ``evaluate`` use — unless the bundle deploys its diffusion teacher
(``teacher_sampler``, set by co-training's opt-in ``deploy_best`` where the teacher scored the validation
images better than the students): then :func:`deployed_probs` is the teacher's mean sample, or with
``teacher_weight`` below 1 (``deploy_mean``) that sample blended with the students' mean softmax.
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
from .diffusion import MaskDiffusion, SamplerConfig
from .inference import predict_probs, propose
from .networks import CondUNet, NetConfig, StudentNet, build_image_denoiser, build_mask_denoiser

__all__ = [
    "METHODS",
    "TEACHER_SEED",
    "ModelBundle",
    "ModelSpec",
    "deployed_probs",
    "preprocess",
    "teacher_probs",
]

T = TypeVar("T")
METHODS = ("diffseg", "supervised", "mean-teacher", "cps")
#: the teacher's samples of the ``i``-th image of a list start from this seed + ``i`` (one image: this seed),
#: so that its validation checks, its test score and its deployed predictions are the same numbers
TEACHER_SEED = 7_919


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
        # set where the bundle deploys its teacher (co-training's ``deploy_best``): how it samples
        self.teacher_sampler: SamplerConfig | None = None
        # the teacher's share of a deployed prediction (the rest: the students'): 1 the teacher alone,
        # 0.5 their mean (``deploy_mean``); read only where ``teacher_sampler`` is set
        self.teacher_weight: float = 1.0
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
        """The students (the ``deploy`` networks); what a prediction is: :func:`deployed_probs`."""
        return [self.nets[n] for n in self.deploy]

    @property
    def deploys_teacher(self) -> bool:
        """Whether predictions sample the teacher (alone, or blended with the students)."""
        return self.teacher_sampler is not None

    @property
    def deployed_name(self) -> str:
        """What predicts: ``students``, ``teacher`` or ``teacher+students`` (their mean: ``deploy_mean``)."""
        if self.teacher_sampler is None:
            return "students"
        return "teacher" if self.teacher_weight >= 1.0 else "teacher+students"


def teacher_probs(
    bundle: ModelBundle,
    x: torch.Tensor,
    config: SamplerConfig,
    *,
    roi: int,
    sw_batch: int,
    index: int = 0,
) -> torch.Tensor:
    """The teacher's mean sample of a ``(C, H, W)`` image → ``(K, H, W)`` probabilities: DDIM with
    ``config``, its denoiser on sliding windows of ``roi`` pixels at every step, seeded with
    ``TEACHER_SEED + index`` (``index``: the image's place in a list, 0 for one image)."""
    prop = propose(
        bundle.mask_net,
        bundle.diffusion(),
        x[None],
        config,
        torch.Generator().manual_seed(TEACHER_SEED + index),
        multiple=bundle.spec.multiple,
        roi=roi,
        sw_batch=sw_batch,
    )
    return prop.probs[0]


def deployed_probs(
    bundle: ModelBundle, x: torch.Tensor, *, roi: int, sw_batch: int = 4, index: int = 0
) -> torch.Tensor:
    """What the bundle predicts for normalised ``(B, C, H, W)`` images → ``(B, K, H, W)`` probabilities:
    the mean softmax of its students on sliding windows or, where it deploys its teacher
    (``teacher_sampler``), the teacher's mean sample of each image (:func:`teacher_probs`; image ``b`` of
    the batch seeded as the ``index + b``-th of a list), blended with the students' as
    ``teacher_weight`` says (1: the teacher alone)."""

    def students() -> torch.Tensor:
        return predict_probs(bundle.deployed(), x, multiple=bundle.spec.multiple, roi=roi, sw_batch=sw_batch)

    if bundle.teacher_sampler is None:
        return students()
    with torch.no_grad():
        teacher = torch.stack(
            [
                teacher_probs(bundle, xb, bundle.teacher_sampler, roi=roi, sw_batch=sw_batch, index=index + b)
                for b, xb in enumerate(x)
            ]
        )
    w = bundle.teacher_weight
    if w >= 1.0:
        return teacher
    s = students()
    return w * teacher.to(s.device) + (1.0 - w) * s


def save_bundle(
    bundle: ModelBundle, directory: str | Path, *, extra: dict | None = None, metrics: dict | None = None
) -> Path:
    """Write weights (safetensors), config.json (spec, normalisation + ``extra``) and metrics.json to
    ``directory``."""
    from .checkpoint import save_model

    norm = bundle.normalization.to_dict() if bundle.normalization is not None else dict(PER_IMAGE_CONFIG)
    config = {"spec": bundle.spec.to_dict(), "deploy": bundle.deploy, "normalization": norm, **(extra or {})}
    if bundle.teacher_sampler is not None:  # predictions are the teacher's samples (deploy_best)
        t = bundle.teacher_sampler
        config["deploy_teacher"] = {
            "ddim_steps": t.steps,
            "samples": t.samples,
            "rounds": t.rounds,
            "weight": bundle.teacher_weight,
        }
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
    bundle.teacher_sampler, bundle.teacher_weight = _teacher_sampler(config, directory, bundle.has_teacher)
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


def _teacher_sampler(
    config: dict, directory: str | Path, has_teacher: bool
) -> tuple[SamplerConfig | None, float]:
    """A saved ``deploy_teacher`` entry → how the deployed teacher samples (None: the students deploy) and
    its share of the prediction (``weight``, 1 where the entry has none: models saved before it existed)."""
    entry = config.get("deploy_teacher")
    if entry is None:
        return None, 1.0
    try:
        sampler = SamplerConfig(
            steps=int(entry["ddim_steps"]), samples=int(entry["samples"]), rounds=int(entry["rounds"])
        )
        weight = float(entry.get("weight", 1.0))
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"weight {weight} is not in (0, 1]")
    except (AttributeError, KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(
            f"{directory}: config.json's deploy_teacher must hold ddim_steps, samples and rounds "
            f"(integers >= 1) and optionally weight (in (0, 1]), got {entry!r} ({exc}); delete the entry "
            "to deploy the students"
        ) from exc
    if not has_teacher:
        raise CheckpointError(f"{directory}: config.json says deploy_teacher, but the model has no teacher")
    return sampler, weight
