import torch

from nnsight_core.testing import AdapterConformance
from nnsight_torch import NNsight

from .conftest import make_net


class TestNNsightConformance(AdapterConformance):
    module_path = "layer1"

    def make_model(self):
        return NNsight(make_net())

    def make_inputs(self):
        torch.manual_seed(1)
        return [(torch.rand(1, 5),), (torch.rand(3, 5),), (torch.rand(2, 5),)]
