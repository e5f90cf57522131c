"""Naming the module where NaN first appears, by replaying the failing step with hooks."""

from __future__ import annotations

import numpy as np

from stabcheck.config import load_config
from tests.engine.test_sequential import run

LOG_MODEL = """
import torch
from torch import nn

class Log(nn.Module):
    '''log of its input: NaN once an input goes negative.'''
    def forward(self, x):
        return torch.log(x)

class LogNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(4, 8)
        with torch.no_grad():  # start with every pre-log activation positive (about 3)
            self.encoder.weight.mul_(0.1)
            self.encoder.bias.fill_(3.0)
        self.log = Log()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.log(self.encoder(x)))

def build():
    return LogNet()
"""


def test_first_nan_module_is_the_log_of_a_negative_activation(write_config,
                                                               write_module) -> None:
    write_module("lognet.py", LOG_MODEL)
    loaded = load_config(write_config({
        "model": {"builtin": None, "factory": "./lognet.py:build", "kwargs": {}},
        "sweep": {"learning_rates": [0.001, 10.0], "seeds": [0], "batch_sizes": [16]},
        "probe": {"steps": 40, "flush_every": 7}}))
    healthy = run(loaded, lr=0.001)
    assert healthy.outcome == "completed" and healthy.nonfinite_module is None
    broken = run(loaded, lr=10.0)
    assert broken.outcome == "nonfinite"
    assert broken.nonfinite_module == "log"
    step = broken.first_nonfinite_step
    assert step is not None and step > 0  # healthy at init: the large LR drove it negative
    loss = np.array([np.nan if v is None else v for v in broken.trace["loss"]])
    assert np.isfinite(loss[:step]).all() and not np.isfinite(loss[step])


NORM_MODEL = """
import torch
from torch import nn

class SqrtNorm(nn.Module):
    '''centre and scale by the standard deviation: sqrt at 0 has an infinite derivative.'''
    def forward(self, x):
        centred = x - x.mean(-1, keepdim=True)
        std = torch.sqrt(centred.pow(2).mean(-1, keepdim=True))
        return centred / (std + 1.0)

class NormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(4, 8)
        with torch.no_grad():  # every feature equal: variance 0, a finite forward
            self.encoder.weight.zero_()
            self.encoder.bias.fill_(1.0)
        self.norm = SqrtNorm()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.norm(self.encoder(x)))

def build():
    return NormNet()
"""


def test_nan_born_in_the_backward_pass_is_blamed_on_the_norm_and_its_line(
        write_config, write_module) -> None:
    write_module("normnet.py", NORM_MODEL)
    loaded = load_config(write_config({
        "model": {"builtin": None, "factory": "./normnet.py:build", "kwargs": {}},
        "sweep": {"learning_rates": [0.01], "seeds": [0], "batch_sizes": [16]},
        "probe": {"steps": 10, "flush_every": 5}}))
    broken = run(loaded, lr=0.01)
    assert broken.outcome == "nonfinite"
    assert broken.nonfinite_what != "loss"  # the forward and its loss were finite
    where = broken.nonfinite_module
    assert where is not None and where.startswith("norm (SqrtBackward0 at normnet.py:")
    assert "torch.sqrt" in where  # the source line, as detect_anomaly names it
