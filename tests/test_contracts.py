"""The shared typed contract (base.contracts): job parameters validated once, records convert from the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_diffseg.base.contracts import (
    IMAGE_STATES,
    JOB_STATES,
    TERMINAL_JOB_STATES,
    CotrainParams,
    Image,
    Job,
    JobCreate,
    ProposalsCreate,
    ProposeParams,
    parse_job_params,
)
from napari_diffseg.base.errors import ConfigError
from napari_diffseg.base.presets import PRESETS
from napari_diffseg.project import Project


@pytest.mark.parametrize(
    ("kind", "params", "needle"),
    [
        ("train", {}, "unknown job kind"),
        ("cotrain", {"rounds": 0}, "rounds"),
        ("cotrain", {"rounds": True}, "rounds"),  # a bool is not a number
        ("propose", {"steps": "3"}, "steps"),  # nor is a string
        ("propose", {"ids": "train_000"}, "ids"),
        ("propose", {"nproc": 2}, "nproc"),  # only cotrain takes nproc
        ("pretrain", {"preset": "huge"}, "preset"),
        ("pretrain", {"device": "tpu"}, "unknown device"),
        ("pretrain", {"overrides": {"cotrain_steps": -1}}, "cotrain_steps"),
        ("pretrain", {"overrides": {"student_channels": [8, "x"]}}, "student_channels"),
        ("pretrain", {"overrides": {"warp_speed": 9}}, "warp_speed"),
        ("pretrain", {"overrides": {"name": "gpu"}}, "name"),
        ("pretrain", {"seed": -1}, "seed"),
        ("cotrain", {"kind": "propose"}, "kind"),
    ],
)
def test_bad_job_parameters_are_one_config_error_naming_the_field(
    kind: str, params: dict, needle: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_job_params(kind, params)
    assert needle in str(err.value)


def test_job_parameters_resolve_the_preset_in_one_place() -> None:
    params = parse_job_params("cotrain", {"preset": "tiny", "overrides": {"cotrain_steps": 7, "lr": 1}})
    assert isinstance(params, CotrainParams) and (params.rounds, params.nproc, params.seed) == (1, 1, 0)
    preset = params.resolve_preset()
    assert (preset.name, preset.cotrain_steps, preset.lr) == ("tiny", 7, 1.0)
    assert isinstance(preset.lr, float)
    # stored as given, and what is stored parses back to the same parameters
    assert params.stored() == {"preset": "tiny", "overrides": {"cotrain_steps": 7, "lr": 1}}
    assert parse_job_params("cotrain", params.stored()) == params
    # no preset: the default given (a model's preset), else cpu
    bare = parse_job_params("propose", {})
    assert isinstance(bare, ProposeParams) and bare.steps is None
    assert bare.resolve_preset().name == "cpu"
    assert bare.resolve_preset(default=PRESETS["tiny"]).name == "tiny"
    assert parse_job_params("propose", {"preset": "gpu"}).resolve_preset(PRESETS["tiny"]).name == "gpu"


def test_http_bodies_give_the_same_typed_parameters() -> None:
    body = JobCreate(kind="propose", params={"ids": ["a"], "steps": 2})
    assert body.typed() == parse_job_params("propose", {"ids": ["a"], "steps": 2})
    req = ProposalsCreate(ids=["a"], steps=2)
    assert req.typed() == body.typed()
    with pytest.raises(ConfigError):
        JobCreate(kind="cotrain", params={"steps": 2}).typed()


def test_store_records_convert_to_the_contract(tmp_path: Path) -> None:
    with Project.create(tmp_path / "p") as proj:
        image_id = proj.import_array(np.zeros((8, 9), np.uint8), name="blank")
        job_id = proj.create_job("cotrain", {"rounds": 2})
        image = Image.model_validate(proj.image(image_id), from_attributes=True)
        job = Job.model_validate(proj.job(job_id), from_attributes=True)
    assert (image.id, image.name, image.state, image.height, image.width) == (
        image_id,
        "blank",
        "unlabeled",
        8,
        9,
    )
    assert image.latest_version is None
    assert (job.kind, job.state, job.params, job.ended, job.resumable) == (
        "cotrain",
        "queued",
        {"rounds": 2},
        False,
        False,
    )
    assert set(TERMINAL_JOB_STATES) < set(JOB_STATES) and "excluded" in IMAGE_STATES
