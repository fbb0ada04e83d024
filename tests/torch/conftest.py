from collections import OrderedDict

import pytest
import torch


def make_net(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(OrderedDict([
        ("layer1", torch.nn.Linear(5, 10)),
        ("sigma1", torch.nn.Sigmoid()),
        ("layer2", torch.nn.Linear(10, 2)),
        ("sigma2", torch.nn.Sigmoid()),
    ]))


@pytest.fixture
def net() -> torch.nn.Sequential:
    return make_net()
