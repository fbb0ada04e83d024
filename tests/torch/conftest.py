import pytest
import torch

from tests.helpers import make_net


@pytest.fixture
def net() -> torch.nn.Sequential:
    return make_net()
