import pytest
import torch

import cifarlab
from cifarlab.config import OptimConfig
from cifarlab.engine.lookahead import Lookahead
from cifarlab.engine.muon import Muon, orthogonalize
from cifarlab.engine.optim import build_optimizers, param_roles, set_learning_rates
from cifarlab.errors import CifarlabError


def test_param_roles_of_airbench():
    model = cifarlab.create_model("airbench")
    roles = param_roles(model)
    assert set(roles) == {"whiten_bias", "norm", "filters", "head"}
    assert roles["whiten_bias"] == [model.whiten.bias] and roles["head"] == [model.head.weight]
    assert all(p.ndim == 4 for p in roles["filters"]) and all(p.ndim == 1 for p in roles["norm"])
    frozen = {id(model.whiten.weight)} | {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert not frozen & {id(p) for ps in roles.values() for p in ps}  # frozen parameters get no optimizer


def test_per_1024_scaling_and_decoupled_weight_decay():
    model = cifarlab.create_model("airbench")
    cfg = OptimConfig(lr=2.0, weight_decay=0.01, per_1024=True, decay_norm_and_bias=True,
                      groups={"head": {"lr": 8.0}, "filters": {"optimizer": "muon", "lr": 0.3, "momentum": 0.5}})  # fmt: skip
    sgd, muon = build_optimizers(model, cfg, batch_size=2048)
    assert isinstance(sgd, torch.optim.SGD) and isinstance(muon, Muon)
    groups = {g["role"]: g for g in sgd.param_groups}
    assert groups["norm"]["lr"] == pytest.approx(4.0) and groups["head"]["lr"] == pytest.approx(16.0)
    for g in groups.values():  # the same fraction of the weights decays per step, whatever the lr
        assert g["lr"] * g["weight_decay"] == pytest.approx(0.01 * 2)
    (muon_group,) = muon.param_groups
    assert muon_group["lr"] == 0.3 and muon_group["momentum"] == 0.5  # per step, not scaled


def test_group_schedule_lengths():
    model = cifarlab.create_model("airbench")
    cfg = OptimConfig(lr=1.0, schedule="linear", groups={"whiten_bias": {"decay_epochs": 2}})
    optimizers = build_optimizers(model, cfg, batch_size=128)
    lrs = lambda: {g["role"]: g["lr"] for o in optimizers for g in o.param_groups}  # noqa: E731
    set_learning_rates(optimizers, step=10, total_steps=100, steps_per_epoch=10, cfg=cfg)
    assert lrs()["whiten_bias"] == pytest.approx(0.5) and lrs()["norm"] == pytest.approx(0.9)
    set_learning_rates(optimizers, step=30, total_steps=100, steps_per_epoch=10, cfg=cfg)
    assert lrs()["whiten_bias"] == 0.0 and lrs()["norm"] == pytest.approx(0.7)


def test_bad_groups_are_named():
    model = cifarlab.create_model("resnet20")
    with pytest.raises(CifarlabError, match="roles this model lacks: \\['whiten_bias'\\]"):
        build_optimizers(model, OptimConfig(groups={"whiten_bias": {"lr": 1}}), 128)
    with pytest.raises(CifarlabError, match="unknown option"):
        build_optimizers(model, OptimConfig(groups={"head": {"learning_rate": 1}}), 128)


def test_orthogonalize_flattens_the_spectrum():
    g = torch.randn(64, 576) * torch.logspace(-2, 2, 576)  # badly conditioned
    singular = torch.linalg.svdvals(orthogonalize(g, steps=5))
    assert singular.min() > 0.3 and singular.max() < 1.6
    tall = torch.linalg.svdvals(orthogonalize(g.T.contiguous(), steps=5))
    assert torch.allclose(singular, tall, atol=1e-3)


def test_muon_normalizes_filters_then_takes_an_orthogonal_step():
    conv = torch.nn.Conv2d(16, 32, 3)
    optimizer = Muon([conv.weight], lr=0.0, momentum=0.6)
    conv(torch.randn(4, 16, 8, 8)).square().mean().backward()
    optimizer.step()
    assert conv.weight.norm().item() == pytest.approx(32**0.5, rel=1e-5)  # lr 0: only the renormalization
    before = conv.weight.detach().clone()
    optimizer.param_groups[0]["lr"] = 0.1
    optimizer.step()
    step = (before - conv.weight).reshape(32, -1) / 0.1
    singular = torch.linalg.svdvals(step)
    assert singular.min() > 0.3 and singular.max() < 1.6  # the update is ~orthogonal
    assert "momentum_buffer" in optimizer.state_dict()["state"][0]


def test_lookahead_averages_and_round_trips():
    model = torch.nn.Linear(4, 2)
    lookahead = Lookahead(model, every=1, decay=0.5, power=0.0, start_step=1, total_steps=10)
    lookahead.update(1)  # first call: start the average at the current weights
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    lookahead.update(2)  # rho = 0.5: halfway back, and the net gets the average
    assert torch.allclose(model.weight, start + 0.5)
    copy = Lookahead(model, every=1, decay=0.5, power=0.0, start_step=1, total_steps=10)
    copy.load_state_dict(lookahead.state_dict())
    assert torch.equal(copy.average["weight"], lookahead.average["weight"])
