"""benchmarks/uncertainty_errors.py's report: one row per result file, seeds named, and the mean and sample
std over seeds of the same dataset and overrides (the run itself needs a real dataset and minutes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "uncertainty_errors.py"


def _module():
    spec = importlib.util.spec_from_file_location("uncertainty_errors", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _result(mod, seed: int, dice: list[float], error_rate: float, auroc: float, **overrides) -> dict:
    scores = {
        "auroc": auroc,
        "area": 0.6,
        "error_rate": error_rate,
        "at_threshold": {"0.5": [0.3, 0.5]},
        "curve": {"inspected": [0.0, 0.5, 1.0], "found": [0.0, 0.7, 1.0]},
        "proposal_dice": dice,
        "flat_maps": 0,
    }
    return {
        "dataset": "glas",
        "seed": seed,
        "held_out": ["a", "b"],
        "overrides": {**mod.OVERRIDES, **overrides},
        "machine": "test",
        "rounds": {"round 1": scores},
        "seconds": {"cotrain_0": 1.0},
    }


def test_report_over_seeds(tmp_path: Path) -> None:
    mod = _module()
    runs = {
        "glas.json": _result(mod, 0, [0.6, 0.8], 0.30, 0.60),
        "glas_s1.json": _result(mod, 1, [0.9, 0.9], 0.10, 0.80),
        "glas_s2.json": _result(mod, 2, [0.5, 0.7], 0.20, 0.70),
        # other overrides: its own group, one seed, so no row over seeds
        "glas_pretrain_smooth_weight=0.json": _result(mod, 0, [0.1, 0.1], 0.9, 0.5, pretrain_smooth_weight=0),
    }
    for name, res in runs.items():
        (tmp_path / name).write_text(json.dumps(res))
    mod.report(tmp_path)
    text = (tmp_path / "summary.md").read_text()
    assert "| glas, seed 1 | round 1 | 2 | 0.900 | 10.0 % |" in text
    assert "| glas (pretrain_smooth_weight=0) | round 1 | 2 | 0.100 |" in text
    dice = [0.7, 0.9, 0.6]
    expect = f"{np.mean(dice):.3f} ± {np.std(dice, ddof=1):.3f} | 20.0 ± 10.0 | 0.700 ± 0.100 |"
    over = [line for line in text.splitlines() if line.startswith("| glas | round 1 | 0, 1, 2 |")]
    assert over == [f"| glas | round 1 | 0, 1, 2 | {expect}"]
    assert not any(
        line.startswith("| glas (pretrain_smooth_weight=0) | round 1 | 0 |") for line in text.splitlines()
    )
    assert (tmp_path / "errors.png").stat().st_size > 0
