"""Validation of job parameters, shared by the job runner and the HTTP service.

Light on purpose (no torch): the HTTP service validates a job request before it queues it, and
:mod:`napari_diffseg.backend.jobs` validates again before it runs one.

Parameters every kind takes: ``preset`` (``tiny`` | ``cpu`` | ``gpu``), ``overrides`` (a dict of preset
fields, e.g. ``{"cotrain_steps": 50}``, applied with :meth:`Preset.with_overrides`), ``seed`` and
``device`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``). ``propose`` also takes ``ids`` (image
ids or names), ``steps``, ``samples`` and ``rounds``; ``cotrain`` takes ``rounds`` and ``nproc`` (processes
under ``torchrun``: one per GPU, or gloo processes on the CPU).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from napari_diffseg.base.errors import ConfigError
from napari_diffseg.base.presets import PRESETS, Preset, get_preset

__all__ = ["JOB_KINDS", "TRAINING_KINDS", "preset_for", "validate_params"]

JOB_KINDS: tuple[str, ...] = ("pretrain", "propose", "cotrain")
"""Every job kind the backend runs."""
TRAINING_KINDS: tuple[str, ...] = ("pretrain", "cotrain")
"""Kinds that train (at most one of them runs per project at a time)."""

_COMMON = ("preset", "overrides", "seed", "device")
_ALLOWED: dict[str, tuple[str, ...]] = {
    "pretrain": _COMMON,
    "propose": (*_COMMON, "ids", "steps", "samples", "rounds"),
    "cotrain": (*_COMMON, "rounds", "nproc"),
}
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,2})?)$")
_LIMITS: dict[str, tuple[int, int]] = {
    "seed": (0, 2**31 - 1),
    "steps": (1, 1000),
    "samples": (1, 256),
    "rounds": (1, 100),
    "nproc": (1, 64),
}
_MAX_IDS = 100_000
_MAX_OVERRIDE_STEPS = 10**7


def _int(value: object, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"job parameter {name!r} must be an integer from {lo} to {hi}, got {value!r}.")
    return value


def _override_value(field: dataclasses.Field[Any], default: object, value: object) -> object:
    """Check one preset override against the type of the preset's own value; return it normalised."""
    name = field.name
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and name.endswith("_steps") and not 0 <= value <= _MAX_OVERRIDE_STEPS:  # type: ignore[operator]
            raise ConfigError(f"preset override {name!r} must lie in [0, {_MAX_OVERRIDE_STEPS}].")
        if ok and not name.endswith("_steps") and value <= 0:  # type: ignore[operator]
            raise ConfigError(f"preset override {name!r} must be a positive integer, got {value!r}.")
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value == value
        value = float(value) if ok else value  # type: ignore[arg-type]
    elif isinstance(default, tuple):
        ok = (
            isinstance(value, list | tuple)
            and 1 <= len(value) <= 8
            and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in value)
        )
        value = tuple(value) if ok else value  # type: ignore[arg-type]
    else:
        ok = False  # `name` and anything else that is not a number
    if not ok:
        raise ConfigError(
            f"preset override {name!r} must be of the same type as the preset's value {default!r}, "
            f"got {value!r}."
        )
    return value


def preset_for(params: Mapping[str, Any], default: Preset | None = None) -> Preset:
    """The preset a job runs with: ``params["preset"]`` (without one: ``default``, else ``cpu``) with
    ``params["overrides"]``.

    Raises:
        ConfigError: An unknown preset, override name or a badly typed override value.
    """
    if "preset" not in params and default is not None:
        preset = default
    else:
        name = params.get("preset", "cpu")
        if not isinstance(name, str) or name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
        preset = get_preset(name)
    overrides = params.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise ConfigError("job parameter 'overrides' must be an object of preset fields and values.")
    if not overrides:
        return preset
    fields = {f.name: f for f in dataclasses.fields(preset) if f.name != "name"}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(f"unknown preset option(s) {unknown}; known: {sorted(fields)}.")
    clean = {k: _override_value(fields[k], getattr(preset, k), v) for k, v in overrides.items()}
    return preset.with_overrides(**clean)


def validate_params(kind: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check a job's kind and parameters; returns them as a plain dict.

    Raises:
        ConfigError: An unknown kind or parameter, or a value of the wrong type or out of range (the
            message names it and says what is allowed).
    """
    if kind not in JOB_KINDS:
        raise ConfigError(f"unknown job kind {kind!r}; choose one of {', '.join(JOB_KINDS)}.")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ConfigError("job parameters must be an object (a JSON dict).")
    out = dict(params)
    unknown = sorted(set(out) - set(_ALLOWED[kind]))
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {unknown} for a {kind} job; allowed: {', '.join(_ALLOWED[kind])}."
        )
    preset_for(out)
    for name, (lo, hi) in _LIMITS.items():
        if out.get(name) is not None:
            _int(out[name], name, lo, hi)
    device = out.get("device", "auto")
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps.")
    ids = out.get("ids")
    if ids is not None:
        if (
            not isinstance(ids, list | tuple)
            or len(ids) > _MAX_IDS
            or not all(isinstance(i, str) and 0 < len(i) <= 200 for i in ids)
        ):
            raise ConfigError("job parameter 'ids' must be a list of image ids or names.")
        out["ids"] = list(ids)
    return out
