"""The adapter passes the core's conformance suite (nnsight_core.testing.AdapterConformance)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnsight_core.testing import AdapterConformance


class TestSentenceTransformerConformance(AdapterConformance):
    module_path = "0.model.encoder.layer.3"
    # Batched and solo runs differ by float noise only (padding to the batch's longest sentence).
    atol = 1e-5
    not_applicable = {"next": "one encode() is one forward pass of the Transformer, which runs each "
                              "module once"}

    @pytest.fixture(autouse=True)
    def _model(self, shared):
        self.shared = shared

    def make_model(self):
        from nnsight_sentence_transformers import SentenceTransformerModel

        return SentenceTransformerModel(self.shared)

    def make_inputs(self):
        # Sentences of different lengths, one invoke of two sentences, and a short one last.
        return [("The Eiffel Tower is in the city of Paris.",),
                (["A man is eating food.", "Two dogs run through a field of tall green grass."],),
                ("Hello",)]

    def final_tensor(self, output):
        # The root module returns the feature dict; a trace's result is encode()'s numpy array.
        if isinstance(output, dict):
            return output["sentence_embedding"]
        return torch.as_tensor(output) if isinstance(output, np.ndarray) else output

    def grad_loss(self, output):
        # The root module returns the feature dict; its embeddings are unit length, so sum them
        # (the sum of their squares would be constant).
        return output["sentence_embedding"].sum()

    def align(self, batched, solo):
        # Right padding: an invoke's tokens are the first positions of the batch's width.
        return batched[:, :solo.shape[1]]
