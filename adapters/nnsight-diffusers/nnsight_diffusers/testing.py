"""Tiny diffusers pipelines built offline, for tests, examples and benchmarks.

Both builders make every component from a small config with seeded random
weights and write the pipeline with ``save_pretrained``, so it loads back
through the real ``DiffusionPipeline.from_pretrained`` path. Nothing is
downloaded: the CLIP tokenizer's vocabulary and merges are written here.

Example:
    >>> import tempfile
    >>> from nnsight_diffusers import DiffusionModel
    >>> folder = tiny_stable_diffusion(tempfile.mkdtemp())
    >>> sorted(name for name in os.listdir(folder) if not name.startswith("_"))
    ['model_index.json', 'scheduler', 'text_encoder', 'tokenizer', 'unet', 'vae']
    >>> model = DiffusionModel(folder)
"""

from __future__ import annotations

import json
import os
import string
from typing import Union

import torch

__all__ = ["tiny_stable_diffusion", "tiny_dit", "clip_tokenizer_files"]

PathLike = Union[str, "os.PathLike[str]"]


def clip_tokenizer_files(folder: PathLike) -> str:
    """Write a small ``CLIPTokenizer`` (vocab.json, merges.txt) into ``folder`` and return it.

    The vocabulary holds every lowercase letter and digit (alone and as a
    word end), a few merged words and CLIP's start/end tokens; every text made
    of those characters tokenizes without unknown tokens.
    """
    os.makedirs(folder, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + ",.!?'-")
    words = ["the", "cat", "dog", "red", "blue", "a", "photo", "of", "in", "on"]
    merges = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
    tokens = symbols + [s + "</w>" for s in symbols]
    for merge in merges:
        joined = merge.replace(" ", "")
        if joined not in tokens:
            tokens.append(joined)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return str(folder)


def _vae(latent_channels: int = 4) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                         latent_channels=latent_channels, norm_num_groups=8, sample_size=16)


def tiny_stable_diffusion(folder: PathLike, seed: int = 0) -> str:
    """Save a tiny Stable-Diffusion-style text-to-image pipeline into ``folder``.

    Components: ``CLIPTextModel`` (2 layers, width 32) with a hand-written
    ``CLIPTokenizer`` (``model_max_length=77``), ``UNet2DConditionModel`` (two
    blocks, cross-attention width 32), ``AutoencoderKL`` (2 blocks) and a
    ``DDIMScheduler``; 16x16 images from 8x8 latents. No safety checker.

    Returns:
        ``folder``, for ``DiffusionModel(folder)`` or ``DiffusionPipeline.from_pretrained``.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tokenizer_dir = clip_tokenizer_files(os.path.join(folder, "_tokenizer_source"))
    tokenizer = CLIPTokenizer(os.path.join(tokenizer_dir, "vocab.json"),
                              os.path.join(tokenizer_dir, "merges.txt"), model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=4, norm_num_groups=8)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipeline = StableDiffusionPipeline(vae=_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                                       unet=unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(folder)
    return str(folder)


def tiny_dit(folder: PathLike, seed: int = 0) -> str:
    """Save a tiny class-conditioned DiT pipeline (no tokenizer) into ``folder``.

    Components: ``DiTTransformer2DModel`` (2 layers, 8x8 latents; the pipeline uses class 1000 as its "no class" label),
    ``AutoencoderKL`` and a ``DDIMScheduler``; labels ``"cat"`` (0) to ``"class 9"``.
    """
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                        out_channels=8, num_layers=2, norm_num_groups=8, sample_size=8,
                                        patch_size=2, num_embeds_ada_norm=1000)
    labels = {0: "cat", 1: "dog"} | {i: f"class {i}" for i in range(2, 10)}
    pipeline = DiTPipeline(transformer=transformer, vae=_vae(), scheduler=DDIMScheduler(),
                           id2label=labels)
    pipeline.save_pretrained(folder)
    return str(folder)
