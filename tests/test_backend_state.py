"""``POST /images/{ref}/state``: reject an image (excluded) and include it again, through the client."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from backend_server import Server
from napari_diffseg.backend.client import DiffsegClient
from napari_diffseg.backend.errors import BackendError

pytestmark = pytest.mark.timeout(240)


def _fake_model(root: Path) -> Path:
    folder = root / "teacher0"
    folder.mkdir()
    (folder / "config.json").write_text('{"format_version": 1}')
    (folder / "weights.safetensors").write_bytes(b"\x00" * 64)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    """Images: ``plain`` (nothing), ``proposed`` (a proposal, uncertainty 0.9), ``quiet`` (a proposal,
    uncertainty 0.1), ``gt`` (a ground-truth mask)."""
    from napari_diffseg.project import Project

    tmp = tmp_path_factory.mktemp("state")
    rng = np.random.default_rng(0)
    with Project.create(tmp / "proj") as proj:
        for name in ("plain", "proposed", "quiet", "gt"):
            proj.import_array(rng.integers(0, 255, (24, 32), dtype=np.uint8), name)
        proj.register_model(_fake_model(tmp), round=0, method="teacher")
        for name, unc in (("proposed", 0.9), ("quiet", 0.1)):
            probs = np.stack([np.full((24, 32), 0.4, np.float32), np.full((24, 32), 0.6, np.float32)])
            proj.save_proposal("teacher0", name, probs, np.full((24, 32), unc, np.float32))
        proj.save_annotation("gt", np.ones((24, 32), np.uint8), kind="ground_truth", replaces=None)
    with Server(tmp / "proj") as srv:
        yield srv


@pytest.fixture
def client(server: Server) -> DiffsegClient:
    with DiffsegClient(server.url, timeout=30) as c:
        yield c


def test_excluding_skips_the_image_in_next_and_including_restores_its_state(client: DiffsegClient) -> None:
    assert client.next_image().name == "proposed"
    rejected = client.set_image_state("proposed", "excluded")
    assert rejected.name == "proposed" and rejected.state == "excluded"
    assert client.image("proposed").state == "excluded"
    assert [r.name for r in client.images(state="excluded")] == ["proposed"]
    assert client.next_image().name != "proposed"  # the rejected image is skipped

    restored = client.set_image_state("proposed", "included")
    assert restored.state == "proposed"  # it has a proposal
    assert client.next_image().name == "proposed"


@pytest.mark.parametrize(("name", "implied"), [("plain", "unlabeled"), ("gt", "ground_truth")])
def test_including_gives_back_the_state_the_data_implies(
    client: DiffsegClient, name: str, implied: str
) -> None:
    assert client.set_image_state(name, "excluded").state == "excluded"
    assert client.set_image_state(name, "included").state == implied
    assert client.set_image_state(name, "included").state == implied  # idempotent


def test_saving_a_correction_includes_an_excluded_image(client: DiffsegClient) -> None:
    client.set_image_state("quiet", "excluded")
    client.save_annotation("quiet", np.zeros((24, 32), np.uint8), replaces=None)
    assert client.image("quiet").state == "corrected"
    client.set_image_state("quiet", "excluded")
    assert client.set_image_state("quiet", "included").state == "corrected"


def test_bad_state_requests_are_refused_and_change_nothing(client: DiffsegClient, server: Server) -> None:
    before = {r.name: r.state for r in client.images()}
    with pytest.raises(BackendError) as err:
        client.set_image_state("plain", "corrected")  # only excluded / included may be set
    assert err.value.status == 422
    with pytest.raises(BackendError) as err:
        client.set_image_state("no-such-image", "excluded")
    assert err.value.status == 404 and "GET /images" in err.value.message
    raw = httpx.post(server.url + "/api/v1/images/plain/state", json={"state": "excluded", "x": 1})
    assert raw.status_code == 422  # unknown fields are refused
    assert {r.name: r.state for r in client.images()} == before


def test_the_endpoint_is_in_the_openapi_schema(server: Server) -> None:
    schema = httpx.get(server.url + "/openapi.json").json()
    op = schema["paths"]["/api/v1/images/{ref}/state"]["post"]
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Image")
