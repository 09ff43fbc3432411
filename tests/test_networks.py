"""One contract test class run against every network (segmentation_models.pytorch style)."""

from __future__ import annotations

import pytest
import torch

from napari_diffseg.base.errors import ConfigError
from napari_diffseg.core.networks import NetConfig, StudentNet, build_image_denoiser, build_mask_denoiser

CH = (8, 16, 32)


def _student():
    return StudentNet(NetConfig(3, 2, CH)), lambda n, s: (torch.randn(n, 3, s, s),), 2


def _mask():
    net = build_mask_denoiser(2, 3, CH, emb_dim=16)
    return (
        net,
        lambda n, s: (torch.randn(n, 2, s, s), torch.randn(n, 3, s, s), torch.randint(0, 1000, (n,))),
        2,
    )


def _image():
    net = build_image_denoiser(2, 1, CH, emb_dim=16)
    return (
        net,
        lambda n, s: (torch.randn(n, 1, s, s), torch.rand(n, 2, s, s), torch.randint(0, 1000, (n,))),
        1,
    )


@pytest.fixture(params=[_student, _mask, _image], ids=["student", "mask_denoiser", "image_denoiser"])
def net_case(request):
    torch.manual_seed(0)
    return request.param()


class TestNetworkContract:
    def test_output_shape(self, net_case) -> None:
        net, make, out_ch = net_case
        y = net(*make(2, 32))
        assert y.shape == (2, out_ch, 32, 32)
        assert torch.isfinite(y).all()

    def test_odd_size_gives_helpful_error(self, net_case) -> None:
        net, make, _ = net_case
        with pytest.raises(ConfigError, match="divisible by"):
            net(*make(1, 30))

    def test_state_dict_round_trip(self, net_case) -> None:
        net, make, _ = net_case
        args = make(1, 32)
        net.eval()
        clone = type(net)(net.config)
        clone.load_state_dict(net.state_dict())
        clone.eval()
        assert torch.equal(net(*args), clone(*args))

    def test_eval_is_deterministic(self, net_case) -> None:
        net, make, _ = net_case
        net.eval()
        args = make(2, 32)
        with torch.no_grad():
            assert torch.equal(net(*args), net(*args))

    def test_no_buffers(self, net_case) -> None:
        # Instance norm without running stats: DDP replicas hold only parameters.
        net, _, _ = net_case
        assert [n for n, _ in net.named_buffers()] == []

    def test_gradients_reach_every_parameter(self, net_case) -> None:
        net, make, _ = net_case
        net(*make(2, 32)).square().mean().backward()
        # FiLM layers start at zero (identity modulation) but still receive gradients
        missing = [n for n, p in net.named_parameters() if p.grad is None]
        assert missing == []


def test_timestep_changes_the_denoiser_output_after_training_film() -> None:
    torch.manual_seed(0)
    net = build_mask_denoiser(2, 3, CH, emb_dim=16)
    for m in net.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.5)
    m, x = torch.randn(1, 2, 32, 32), torch.randn(1, 3, 32, 32)
    net.eval()
    assert not torch.allclose(net(m, x, torch.tensor([10])), net(m, x, torch.tensor([900])))


def test_bad_config() -> None:
    with pytest.raises(ConfigError):
        NetConfig(3, 2, (8,))
