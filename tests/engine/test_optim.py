import copy

import pytest
import torch
from torch import nn

from cnnkit.engine.optim import build_optimizer


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_default_build_fuses_on_cpu_and_tracks_the_per_tensor_loop(name):
    model = mlp()
    nets = [copy.deepcopy(model) for _ in range(2)]
    loop = build_optimizer(nets[0], name, 0.01, 1e-2, fused=False)
    fused = build_optimizer(nets[1], name, 0.01, 1e-2)
    assert fused.defaults["fused"] is True and not loop.defaults["fused"]
    generator = torch.Generator().manual_seed(1)
    for _ in range(10):
        x, y = torch.randn(8, 6, generator=generator), torch.randint(0, 3, (8,), generator=generator)
        for net, optimizer in zip(nets, (loop, fused)):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
    moved = max((p - q).abs().max().item() for p, q in zip(model.parameters(), nets[0].parameters()))
    apart = max((p - q).abs().max().item() for p, q in zip(*(net.parameters() for net in nets)))
    assert moved > 1e-2 and apart < 1e-5


def test_fused_build_leaves_the_given_groups_unmarked_and_resumes_from_its_state():
    model = mlp()
    groups = [{"params": list(model.parameters()), "lr_scale": 0.5}]
    optimizer = build_optimizer(groups, "adamw", 0.02)
    assert "fused" not in groups[0] and groups[0]["lr"] == 0.01
    model(torch.randn(4, 6)).sum().backward()
    optimizer.step()
    again = build_optimizer([{"params": list(model.parameters())}], "adamw", 0.02)
    again.load_state_dict(optimizer.state_dict())
    assert again.param_groups[0]["fused"] is True and again.state[model[0].weight]["step"] == 1
