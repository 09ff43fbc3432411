"""Model checkpoints and training states: round trips, helpful errors, no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from napari_diffseg.base.errors import CheckpointError
from napari_diffseg.core.checkpoint import (
    FORMAT_VERSION,
    load_into,
    load_model_files,
    load_training_state,
    save_model,
    save_training_state,
    saved_module_names,
)


class TinyNet(nn.Module):
    """Conv → BatchNorm (buffers, int64 counter) → conv, width set by the config."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.norm(self.conv1(x))))


def build(config: dict) -> TinyNet:
    torch.manual_seed(config.get("seed", 0))
    return TinyNet(config["width"])


def trained_net(width: int = 4) -> TinyNet:
    net = build({"width": width, "seed": 1})
    net.train()
    net(torch.randn(2, 1, 8, 8))  # update BatchNorm running stats
    return net.eval()


def test_model_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    net = trained_net()
    config = {"width": 4, "name": "tiny"}
    out = save_model(tmp_path / "ckpt", {"student": net}, config, metrics={"dice": 0.8, "hd95": float("nan")})
    assert out == tmp_path / "ckpt"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.json", "weights.safetensors"]

    state_dicts, loaded_config, metrics = load_model_files(out)
    assert loaded_config == config
    assert metrics["dice"] == 0.8
    fresh = build({"width": loaded_config["width"], "seed": 99}).eval()
    x = torch.randn(1, 1, 8, 8)
    assert not torch.equal(fresh(x), net(x))
    load_into(fresh, state_dicts["student"], name="student")
    assert torch.equal(fresh(x), net(x))


def test_config_json_header_and_no_metrics(tmp_path: Path) -> None:
    save_model(tmp_path, {"a": trained_net(), "b": nn.Linear(2, 3)}, {"width": 4})
    header = json.loads((tmp_path / "config.json").read_text())
    assert header["format_version"] == FORMAT_VERSION
    assert header["modules"] == ["a", "b"]
    assert header["config"] == {"width": 4}
    assert isinstance(header["package_version"], str)
    state_dicts, _, metrics = load_model_files(tmp_path)
    assert metrics == {}
    assert set(state_dicts) == {"a", "b"}
    assert set(state_dicts["b"]) == {"weight", "bias"}
    assert not list(tmp_path.glob("*.tmp")), "temporary files must not be left behind"


def test_weights_are_plain_safetensors(tmp_path: Path) -> None:
    net = trained_net()
    save_model(tmp_path, {"student": net}, {"width": 4})
    flat = load_file(str(tmp_path / "weights.safetensors"))
    expected = net.state_dict()
    assert set(flat) == {f"student.{k}" for k in expected}
    for key, value in expected.items():
        assert torch.equal(flat[f"student.{key}"], value)
    assert (
        not list(tmp_path.glob("*.pt"))
        and not list(tmp_path.glob("*.pth"))
        and not list(tmp_path.glob("*.pkl"))
    )


def test_wrapped_modules_are_unwrapped(tmp_path: Path) -> None:
    net = trained_net()
    save_model(tmp_path, {"student": nn.DataParallel(net)}, {"width": 4})
    state_dicts, _, _ = load_model_files(tmp_path)
    assert "conv1.weight" in state_dicts["student"]  # no "module." prefix


def test_different_channel_width_names_the_key(tmp_path: Path) -> None:
    save_model(tmp_path, {"student": trained_net(width=4)}, {"width": 4})
    state_dicts, _, _ = load_model_files(tmp_path)
    wider = build({"width": 8})
    with pytest.raises(CheckpointError) as info:
        load_into(wider, state_dicts["student"], name="student")
    message = str(info.value)
    assert "'student'" in message
    assert "conv1.weight" in message
    assert "(4, 1, 3, 3)" in message and "(8, 1, 3, 3)" in message
    assert "config does not match" in message


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    state = trained_net().state_dict()
    state["extra.weight"] = torch.zeros(2)
    del state["conv2.bias"]
    with pytest.raises(CheckpointError, match=r"conv2\.bias.*extra\.weight"):
        load_into(build({"width": 4}), state, name="student")


def test_corrupt_weights_file(tmp_path: Path) -> None:
    save_model(tmp_path, {"student": trained_net()}, {"width": 4})
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_model_files(tmp_path)
    assert info.value.__cause__ is not None


def test_future_format_version(tmp_path: Path) -> None:
    save_model(tmp_path, {"student": trained_net()}, {"width": 4})
    header = json.loads((tmp_path / "config.json").read_text())
    header["format_version"] = FORMAT_VERSION + 1
    header["package_version"] = "9.9.9"
    (tmp_path / "config.json").write_text(json.dumps(header))
    with pytest.raises(
        CheckpointError, match=r"napari-diffseg 9\.9\.9, format 2.*upgrade napari-diffseg or retrain"
    ):
        load_model_files(tmp_path)


def test_missing_folder_files_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model_files(tmp_path / "nope")
    save_model(tmp_path, {"student": trained_net()}, {"width": 4})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model_files(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"lacks config\.json"):
        load_model_files(tmp_path)


def test_unserialisable_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="JSON"):
        save_model(tmp_path, {"student": trained_net()}, {"path": object()})


# ------------------------------------------------------------------------------------- training state


def make_run(seed: int, opt_cls: type[torch.optim.Optimizer]):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = opt_cls(model.parameters(), lr=1e-2, weight_decay=1e-2, betas=(0.8, 0.95))
    gen = torch.Generator().manual_seed(seed + 1000)
    return model, opt, gen


def train(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(8, 4, generator=gen)
        y = torch.randn(8, 1, generator=gen)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("opt_cls", [torch.optim.Adam, torch.optim.AdamW])
def test_training_state_resumes_bitwise(tmp_path: Path, opt_cls: type[torch.optim.Optimizer]) -> None:
    model, opt, gen = make_run(0, opt_cls)
    train(model, opt, gen, 3)
    path = tmp_path / "run" / "state.safetensors"
    ema = torch.arange(5, dtype=torch.float64)
    save_training_state(
        path,
        modules={"model": model},
        optimizers={"opt": opt},
        generators={"data": gen},
        tensors={"ema": ema},
        extra={"step": 3, "config": {"lr": 1e-2}},
    )
    train(model, opt, gen, 4)
    expected = [p.detach().clone() for p in model.parameters()]

    model2, opt2, gen2 = make_run(123, opt_cls)
    tensors, extra = load_training_state(
        path, modules={"model": model2}, optimizers={"opt": opt2}, generators={"data": gen2}
    )
    assert extra == {"step": 3, "config": {"lr": 1e-2}}
    assert torch.equal(tensors["ema"], ema) and tensors["ema"].dtype == torch.float64
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95)
    train(model2, opt2, gen2, 4)
    for a, b in zip(expected, model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_training_state_without_generator_restore_diverges(tmp_path: Path) -> None:
    """Guards the test above: if the generator were not restored, parameters would differ."""
    model, opt, gen = make_run(0, torch.optim.Adam)
    train(model, opt, gen, 2)
    path = tmp_path / "state.safetensors"
    save_training_state(path, modules={"model": model}, optimizers={"opt": opt}, generators={"data": gen})
    train(model, opt, gen, 2)
    model2, opt2, gen2 = make_run(5, torch.optim.Adam)
    load_training_state(path, modules={"model": model2}, optimizers={"opt": opt2}, generators={})
    train(model2, opt2, gen2, 2)
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters(), strict=True))


def test_training_state_is_plain_safetensors(tmp_path: Path) -> None:
    model, opt, gen = make_run(0, torch.optim.Adam)
    train(model, opt, gen, 1)
    path = tmp_path / "state.safetensors"
    save_training_state(path, modules={"model": model}, optimizers={"opt": opt}, generators={"data": gen})
    flat = load_file(str(path))
    assert torch.equal(flat["generator/data"], gen.get_state())
    assert any(k.startswith("optim/opt/") for k in flat)


def test_training_state_errors(tmp_path: Path) -> None:
    model, opt, gen = make_run(0, torch.optim.Adam)
    train(model, opt, gen, 1)
    path = tmp_path / "state.safetensors"
    with pytest.raises(CheckpointError, match="does not exist"):
        load_training_state(path, modules={"model": model}, optimizers={}, generators={})
    assert saved_module_names(path) is None  # nothing to resume
    save_training_state(path, modules={"model": model}, optimizers={"opt": opt}, generators={"data": gen})
    assert saved_module_names(path) == ["model"]
    with pytest.raises(CheckpointError, match="no optimizer"):
        load_training_state(path, modules={}, optimizers={"other": opt}, generators={})
    bigger = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))
    with pytest.raises(CheckpointError, match=r"0\.weight"):
        load_training_state(path, modules={"model": bigger}, optimizers={}, generators={})
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_training_state(path, modules={"model": model}, optimizers={}, generators={})
    with pytest.raises(CheckpointError, match="corrupt"):
        saved_module_names(path)


def test_model_weights_are_not_a_training_state(tmp_path: Path) -> None:
    save_model(tmp_path, {"student": trained_net()}, {"width": 4})
    with pytest.raises(CheckpointError, match="not a napari-diffseg training state"):
        load_training_state(tmp_path / "weights.safetensors", modules={}, optimizers={}, generators={})
    with pytest.raises(CheckpointError, match="not a napari-diffseg training state"):
        saved_module_names(tmp_path / "weights.safetensors")
