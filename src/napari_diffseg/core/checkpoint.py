"""Versioned model checkpoints and resumable training state, stored as safetensors (never pickle).

A model checkpoint is a folder::

    weights.safetensors   tensors keyed "{module name}.{state-dict key}"
    config.json           {"format_version": 1, "package_version": ..., "modules": [...], "config": {...}}
    metrics.json          optional, whatever metrics the caller passed

A training state is one ``.safetensors`` file holding module weights, optimizer state, RNG generator
states and extra tensors; everything that is not a tensor (optimizer hyper-parameters, ``extra``) is JSON
in the file's metadata. Every file is written atomically: a temporary file in the same folder, fsync,
then `os.replace`, so a crash never leaves a half-written checkpoint behind.

Why one module of ~500 lines: the on-disk format, its version checks and the resumable training state
are one contract and change together.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from napari_diffseg.base.errors import CheckpointError
from napari_diffseg.base.fileio import atomic_write

FORMAT_VERSION = 1

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"

_TRAINING_STATE_KIND = "napari-diffseg training state"
_MAX_LISTED = 5

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "METRICS_FILE",
    "WEIGHTS_FILE",
    "load_into",
    "load_model_files",
    "load_training_state",
    "save_model",
    "save_training_state",
]


# --------------------------------------------------------------------------------------------- helpers


def _package_version() -> str:
    """napari-diffseg's version, or "unknown" if it cannot be read."""
    try:
        return str(importlib.import_module("napari_diffseg").__version__)
    except Exception:  # pragma: no cover - only when the package is broken
        return "unknown"


def _unwrap(module: nn.Module) -> nn.Module:
    """Strip `torch.compile` (``_orig_mod``) and DataParallel/DDP (``.module``) wrappers."""
    while True:
        orig = getattr(module, "_orig_mod", None)
        if isinstance(orig, nn.Module):
            module = orig
        elif isinstance(module, nn.DataParallel | nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def _storable(t: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous CPU copy that shares memory with nothing (safetensors refuses aliasing)."""
    t = t.detach()
    return t.to("cpu", copy=True).contiguous() if t.device.type != "cpu" else t.clone().contiguous()


def _write_json(path: Path, payload: Any, what: str) -> None:
    """Atomically write ``payload`` as indented JSON, turning serialisation failures into CheckpointError."""
    try:
        text = json.dumps(payload, indent=2, sort_keys=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"cannot save {what}: it is not JSON-serialisable ({exc}); keep it to dicts, lists, str, "
            "numbers, bools and None (convert tuples/arrays/paths first)."
        ) from exc

    def write(tmp: Path) -> None:
        tmp.write_text(text + "\n", encoding="utf-8")

    atomic_write(path, write)


def _read_json(path: Path, what: str) -> Any:
    """Read a JSON file, turning any failure into a CheckpointError that says what to do."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"cannot read the {what} {path}: {exc}. The checkpoint is damaged: "
            "copy it again from its source, or retrain."
        ) from exc


def _check_format(version: Any, package_version: Any, source: Path) -> None:
    """Refuse files whose format version is not `FORMAT_VERSION`."""
    if version == FORMAT_VERSION and not isinstance(version, bool):
        return
    raise CheckpointError(
        f"{source} was written by napari-diffseg {package_version}, format {version}; this version "
        f"({_package_version()}) reads format {FORMAT_VERSION}: upgrade napari-diffseg or retrain."
    )


def _check_names(names: Mapping[str, Any], what: str) -> None:
    """Names become key prefixes: they must be non-empty strings without "." or "/"."""
    for name in names:
        if not isinstance(name, str) or not name or "." in name or "/" in name:
            raise CheckpointError(
                f"{what} name {name!r} cannot be stored: use a non-empty string without '.' or '/' "
                "(e.g. 'denoiser', 'student_a')."
            )


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


# ------------------------------------------------------------------------------------------ model files


def save_model(
    directory: str | os.PathLike[str],
    modules: Mapping[str, nn.Module],
    config: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Save module weights, the config they were built from, and optional metrics into ``directory``.

    Args:
        directory: checkpoint folder (created if missing; existing files are replaced atomically).
        modules: networks by name (e.g. ``{"denoiser": net}``); DDP/`torch.compile` wrappers are unwrapped.
        config: JSON-serialisable configuration that rebuilds the networks.
        metrics: optional JSON-serialisable metrics written to ``metrics.json``.

    Returns:
        The checkpoint folder as a `Path`.

    Raises:
        CheckpointError: a bad module name, a config/metrics that is not JSON, or a write failure.
    """
    directory = Path(directory)
    _check_names(modules, "module")
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in _unwrap(module).state_dict().items():
            tensors[f"{name}.{key}"] = _storable(value)
    header = {
        "format_version": FORMAT_VERSION,
        "package_version": _package_version(),
        "modules": list(modules),
        "config": dict(config),
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(
            directory / WEIGHTS_FILE,
            lambda tmp: save_file(tensors, str(tmp), metadata={"format_version": str(FORMAT_VERSION)}),
        )
        _write_json(directory / CONFIG_FILE, header, "the config")
        if metrics is not None:
            _write_json(directory / METRICS_FILE, dict(metrics), "the metrics")
    except OSError as exc:
        raise CheckpointError(
            f"cannot write the checkpoint to {directory}: {exc}. Check that the folder is writable and the "
            "disk is not full."
        ) from exc
    return directory


def load_model_files(
    directory: str | os.PathLike[str],
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict[str, Any]]:
    """Read a checkpoint folder written by `save_model`.

    Returns:
        ``(state_dicts, config, metrics)``: one state dict per module name (every name listed in
        ``config.json``, possibly empty), the ``config`` passed to `save_model`, and the metrics
        (``{}`` when the checkpoint has none).

    Raises:
        CheckpointError: missing folder or files, unreadable JSON, a corrupt weights file, a format
            version other than `FORMAT_VERSION`, or weights that do not match the listed modules.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(
            f"checkpoint folder {directory} does not exist: pick a folder written by napari-diffseg "
            f"(it holds {WEIGHTS_FILE} and {CONFIG_FILE})."
        )
    missing = [n for n in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / n).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint folder {directory} lacks {', '.join(missing)}: it is incomplete or not a "
            "napari-diffseg checkpoint; pick another folder or save the model again."
        )

    header = _read_json(directory / CONFIG_FILE, "checkpoint config")
    if not isinstance(header, dict) or "format_version" not in header:
        raise CheckpointError(
            f"{directory / CONFIG_FILE} has no format_version: it was not written by napari-diffseg; "
            "pick a folder saved by napari-diffseg or retrain."
        )
    _check_format(header["format_version"], header.get("package_version", "unknown"), directory)
    names = header.get("modules")
    config = header.get("config")
    if (
        not isinstance(names, list)
        or not all(isinstance(n, str) for n in names)
        or not isinstance(config, dict)
    ):
        raise CheckpointError(
            f"{directory / CONFIG_FILE} is malformed ('modules' must be a list of names and 'config' an "
            "object): the checkpoint is damaged; copy it again from its source, or retrain."
        )

    try:
        flat = load_file(str(directory / WEIGHTS_FILE), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ...
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE} is corrupt or unreadable ({exc}): copy the checkpoint again from "
            "its source, or retrain."
        ) from exc

    state_dicts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}
    strays: list[str] = []
    for key, value in flat.items():
        name, _, param = key.partition(".")
        if name in state_dicts and param:
            state_dicts[name][param] = value
        else:
            strays.append(key)
    if strays:
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE} holds tensors for modules not listed in {CONFIG_FILE} "
            f"(modules {names}; e.g. {strays[:_MAX_LISTED]}): the two files come from different saves; "
            "copy the checkpoint again, or retrain."
        )

    metrics: dict[str, Any] = {}
    if (directory / METRICS_FILE).exists():
        loaded = _read_json(directory / METRICS_FILE, "checkpoint metrics")
        if not isinstance(loaded, dict):
            raise CheckpointError(
                f"{directory / METRICS_FILE} must hold a JSON object: delete it or save the model again."
            )
        metrics = loaded
    return state_dicts, config, metrics


def load_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, name: str) -> None:
    """Strictly load ``state_dict`` into ``module`` (unwrapping DDP/`torch.compile`).

    Raises:
        CheckpointError: missing or unexpected keys, or shape mismatches. The message names the module,
            the first offending keys with their shapes, and says that the checkpoint's config does not
            match this network.
    """
    target = _unwrap(module)
    expected = target.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        k for k in expected if k in state_dict and tuple(expected[k].shape) != tuple(state_dict[k].shape)
    ]
    problems: list[str] = []
    if mismatched:
        listed = ", ".join(
            f"{k}: checkpoint {_shape(state_dict[k])} vs network {_shape(expected[k])}"
            for k in mismatched[:_MAX_LISTED]
        )
        problems.append(f"{len(mismatched)} shape mismatch(es) [{listed}]")
    if missing:
        listed = ", ".join(f"{k} {_shape(expected[k])}" for k in missing[:_MAX_LISTED])
        problems.append(f"{len(missing)} key(s) missing from the checkpoint [{listed}]")
    if unexpected:
        listed = ", ".join(f"{k} {_shape(state_dict[k])}" for k in unexpected[:_MAX_LISTED])
        problems.append(f"{len(unexpected)} unexpected key(s) in the checkpoint [{listed}]")
    if problems:
        raise CheckpointError(
            f"checkpoint weights for module '{name}' do not fit this network: {'; '.join(problems)}. "
            "The checkpoint's config does not match this network: build the network from the "
            "checkpoint's config.json, or retrain with the current settings."
        )
    try:
        target.load_state_dict(dict(state_dict), strict=True)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint weights for module '{name}' could not be loaded ({exc}). The checkpoint's config "
            "does not match this network: build the network from the checkpoint's config.json, or retrain."
        ) from exc


# ------------------------------------------------------------------------------------- training state


class _Encoder:
    """Turn nested optimizer state into JSON, moving every tensor into a flat ``tensors`` dict.

    Tensors become ``{"__tensor__": key}``, tuples ``{"__tuple__": [...]}`` and dicts with non-string
    (e.g. integer parameter index) keys ``{"__items__": [[key, value], ...]}``.
    """

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def encode(self, obj: Any, key: str) -> Any:
        if isinstance(obj, torch.Tensor):
            unique = key
            n = 1
            while unique in self.tensors:
                unique, n = f"{key}#{n}", n + 1
            self.tensors[unique] = _storable(obj)
            return {"__tensor__": unique}
        if isinstance(obj, tuple):
            return {"__tuple__": [self.encode(v, f"{key}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, f"{key}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in obj):
                return {k: self.encode(v, f"{key}/{k}") for k, v in obj.items()}
            return {
                "__items__": [
                    [self.encode(k, f"{key}/k"), self.encode(v, f"{key}/{k}")] for k, v in obj.items()
                ]
            }
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        raise CheckpointError(
            f"cannot store {key}: values of type {type(obj).__name__} are not supported in a training "
            "state (use tensors, numbers, strings, bools, None, lists, tuples and dicts)."
        )


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of `_Encoder.encode`."""
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if set(obj) == {"__items__"}:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


def save_training_state(
    path: str | os.PathLike[str],
    *,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    generators: Mapping[str, torch.Generator],
    tensors: Mapping[str, torch.Tensor] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write everything needed to resume training bit-for-bit into one ``.safetensors`` file.

    Module weights are stored as ``module/{name}/{key}``, optimizer state tensors under
    ``optim/{name}/...`` with the rest of the optimizer state dict (param groups, non-tensor entries) as
    JSON metadata, generator states as ``generator/{name}`` and ``tensors`` as ``tensor/{name}``.
    ``extra`` (JSON-serialisable: epoch, step, config...) goes into the metadata.

    Raises:
        CheckpointError: a bad name, a value that cannot be stored, or a write failure.
    """
    path = Path(path)
    tensors = dict(tensors or {})
    for what, names in (("module", modules), ("optimizer", optimizers), ("generator", generators)):
        _check_names(names, what)
    _check_names(tensors, "tensor")

    flat: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in _unwrap(module).state_dict().items():
            flat[f"module/{name}/{key}"] = _storable(value)
    encoder = _Encoder(flat)
    optim_json: dict[str, Any] = {
        name: encoder.encode(opt.state_dict(), f"optim/{name}") for name, opt in optimizers.items()
    }
    for name, gen in generators.items():
        flat[f"generator/{name}"] = _storable(gen.get_state())
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"tensors['{name}'] is a {type(value).__name__}, not a torch.Tensor.")
        flat[f"tensor/{name}"] = _storable(value)

    try:
        extra_json = json.dumps(dict(extra or {}))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"cannot save the training state: `extra` is not JSON-serialisable ({exc}); keep it to dicts, "
            "lists, str, numbers, bools and None."
        ) from exc
    metadata = {
        "kind": _TRAINING_STATE_KIND,
        "format_version": str(FORMAT_VERSION),
        "package_version": _package_version(),
        "modules": json.dumps(list(modules)),
        "optimizers": json.dumps(optim_json),
        "generators": json.dumps(list(generators)),
        "tensors": json.dumps(list(tensors)),
        "extra": extra_json,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_file(flat, str(tmp), metadata=metadata))
    except OSError as exc:
        raise CheckpointError(
            f"cannot write the training state to {path}: {exc}. Check that the folder is writable and the "
            "disk is not full."
        ) from exc


def _training_metadata(path: Path) -> dict[str, str]:
    """The metadata of the training state at ``path`` (an existing file), checked for kind and version."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ...
        raise _unreadable(path, exc) from exc
    if metadata.get("kind") != _TRAINING_STATE_KIND:
        raise CheckpointError(
            f"{path} is not a napari-diffseg training state (is it a model's weights.safetensors?): "
            "pick the training-state file of a run."
        )
    raw_version = metadata.get("format_version", "?")
    version: int | str = int(raw_version) if raw_version.isdigit() else raw_version
    _check_format(version, metadata.get("package_version", "unknown"), path)
    return metadata


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"training state {path} is corrupt or unreadable ({exc}): delete it and resume from an earlier "
        "state, or start training from scratch."
    )


def _damaged(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(
        f"the metadata of training state {path} is damaged ({detail}): resume from an earlier state or "
        "start training from scratch."
    )


def saved_module_names(path: str | os.PathLike[str]) -> list[str] | None:
    """The module names a training state written by `save_training_state` holds; None when the file
    does not exist (nothing to resume), so a loop can build what the state needs before loading it.

    Raises:
        CheckpointError: a file that exists but is not a readable napari-diffseg training state.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        names = json.loads(_training_metadata(path)["modules"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise _damaged(path, repr(exc)) from exc
    if not isinstance(names, list):
        raise _damaged(path, "'modules' is not a list")
    return [str(n) for n in names]


def load_training_state(
    path: str | os.PathLike[str],
    *,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    generators: Mapping[str, torch.Generator],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore a file written by `save_training_state` into the given modules, optimizers and generators.

    The optimizers must have been built on the given modules' parameters, in the same order as when
    saving. Every name passed must be present in the file (names in the file that are not passed are
    ignored).

    Returns:
        ``(tensors, extra)``: the extra tensors and the ``extra`` dict that were saved.

    Raises:
        CheckpointError: missing or corrupt file, other format version, a missing name, or state that
            does not fit the given module/optimizer/generator.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"training state {path} does not exist: start training from scratch or pick another run folder."
        )
    metadata = _training_metadata(path)
    try:
        flat = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ...
        raise _unreadable(path, exc) from exc

    try:
        saved_modules = set(json.loads(metadata["modules"]))
        optim_json = json.loads(metadata["optimizers"])
        saved_generators = set(json.loads(metadata["generators"]))
        tensor_names = json.loads(metadata["tensors"])
        extra = json.loads(metadata["extra"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise _damaged(path, repr(exc)) from exc

    for what, wanted, saved in (
        ("module", modules, saved_modules),
        ("optimizer", optimizers, set(optim_json)),
        ("generator", generators, saved_generators),
    ):
        absent = [n for n in wanted if n not in saved]
        if absent:
            raise CheckpointError(
                f"training state {path} has no {what} {absent} (it holds {sorted(saved)}): it belongs "
                "to a different training setup; start training from scratch."
            )

    for name, module in modules.items():
        prefix = f"module/{name}/"
        load_into(module, {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}, name=name)

    for name, optimizer in optimizers.items():
        try:
            optimizer.load_state_dict(_decode(optim_json[name], flat))
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"the optimizer state '{name}' in {path} does not fit this optimizer ({exc}): the model or "
                "optimizer settings changed since it was saved; start training from scratch."
            ) from exc

    for name, gen in generators.items():
        try:
            gen.set_state(flat[f"generator/{name}"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(
                f"the generator state '{name}' in {path} does not fit this generator ({exc}): it may be for "
                "another device type; start training from scratch."
            ) from exc

    return {name: flat[f"tensor/{name}"] for name in tensor_names}, extra
