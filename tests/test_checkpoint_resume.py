"""Resuming from a training checkpoint saved while a trainable parameter had not yet had a gradient
(the demo's stage 2: the optimizer keeps no state for such a parameter, so the checkpoint holds none,
and dcp refused the resume with "Missing key in checkpoint state_dict")."""

from __future__ import annotations

import os

import pytest
import torch

from onepeace.errors import ConfigError
from onepeace_train import checkpoint as ckpt
from onepeace_train.distributed import DistInfo


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.used = torch.nn.Linear(3, 3)
        self.unused = torch.nn.Parameter(torch.zeros(3))  # trainable, never reached by a loss


def _trained(steps: int, seed: int = 0) -> tuple[Net, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    net = Net()
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        net.used(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    return net, opt


def test_resume_with_a_parameter_that_never_had_a_gradient(tmp_path):
    net, opt = _trained(2)
    path = ckpt.save(str(tmp_path), 2, net, opt, DistInfo())
    torch.manual_seed(1)
    fresh = Net()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    assert ckpt.load(path, fresh, fresh_opt) == 2
    for a, b in zip(net.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    # the used parameters resume with their moments; the unused one stays stateless, as when saved
    assert fresh_opt.state[fresh.used.weight]["exp_avg"].equal(opt.state[net.used.weight]["exp_avg"])
    assert fresh.unused not in fresh_opt.state or not fresh_opt.state[fresh.unused]
    # and the next step is the one the uninterrupted run takes
    x = torch.randn(4, 3)
    for n, o in ((net, opt), (fresh, fresh_opt)):
        o.zero_grad()
        n.used(x).pow(2).sum().backward()
        o.step()
    assert torch.equal(net.used.weight, fresh.used.weight) and torch.equal(net.unused, fresh.unused)


def test_an_unreadable_checkpoint_is_one_line_not_a_traceback(tmp_path):
    net, opt = _trained(1)
    path = ckpt.save(str(tmp_path), 1, net, opt, DistInfo())
    for name in os.listdir(path):
        if not name.startswith("."):
            with open(os.path.join(path, name), "r+b") as f:
                f.truncate(8)
    other = Net()
    with pytest.raises(ConfigError, match="cannot resume from the checkpoint .*--force"):
        ckpt.load(path, other, torch.optim.AdamW(other.parameters()))
