"""NNsight passes the core's conformance suite (nnsight_core.testing.AdapterConformance)."""

import torch

from nnsight_core.testing import AdapterConformance
from nnsight_torch import NNsight

from tests.helpers import Shared, make_net


class TestNNsightConformance(AdapterConformance):
    module_path = "layer1"
    source_site = ("", "module_0", "layer1")  # Sequential.forward: `input = module(input)`, call 0
    not_applicable = {"next": "every module of this Sequential runs once; "
                              "TestNNsightSharedModuleConformance covers .next()"}

    def make_model(self):
        return NNsight(make_net())

    def make_inputs(self):
        torch.manual_seed(1)
        return [(torch.rand(1, 5),), (torch.rand(3, 5),), (torch.rand(2, 5),)]


class TestNNsightSharedModuleConformance(AdapterConformance):
    """The suite on a model that calls ``block`` twice per forward pass (``head(block(block(x)))``)."""

    module_path = "head"
    repeated_module_path = "block"
    # head(block(block(x))): sites are named in source order, so the inner call, which runs
    # first, is block_1.
    source_site = ("", "block_1", "block")

    def make_model(self):
        return NNsight(Shared())

    def make_inputs(self):
        torch.manual_seed(2)
        return [(torch.rand(2, 4),), (torch.rand(1, 4),)]
