"""DiffusionModel: trace and edit a diffusers pipeline's components while it denoises."""

from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, Tuple

import torch
from diffusers import DiffusionPipeline

from nnsight_core import ModelKeyError, Runner
from nnsight_torch import NNsight

__all__ = ["DiffusionModel", "Diffuser"]


class Diffuser(torch.nn.Module):
    """One module holding a pipeline's ``nn.Module`` components; calling it runs the pipeline.

    The components (``unet`` or ``transformer``, ``vae``, ``text_encoder``, ...)
    are its children, so they print as one tree and are hooked like any
    submodule. Other attributes (``scheduler``, ``tokenizer``, ...) are read
    from the pipeline.

    Args:
        pipeline: The diffusers pipeline.
    """

    def __init__(self, pipeline: DiffusionPipeline) -> None:
        super().__init__()
        self.__dict__["pipeline"] = pipeline
        for name, component in pipeline.components.items():
            if isinstance(component, torch.nn.Module):
                self._modules[name] = component  # add_module would find the pipeline attribute

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the pipeline (``pipeline(*args, **kwargs)``) and return its output."""
        return self.pipeline(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            pipeline = self.__dict__.get("pipeline")
            if pipeline is None or name.startswith("__"):
                raise
            return getattr(pipeline, name)


class DiffusionModel(NNsight):
    """Wraps a diffusers pipeline: its components are envoys, ``generate`` runs it.

    Example:
        >>> import tempfile
        >>> from nnsight_diffusers.testing import tiny_stable_diffusion
        >>> folder = tiny_stable_diffusion(tempfile.mkdtemp())  # or a hub id
        >>> model = DiffusionModel(folder)                      # components on the meta device
        >>> with model.generate("a photo of a cat", num_inference_steps=4, seed=0):
        ...     steps = [model.unet.output[0].save()]
        ...     for _ in range(3):                              # the denoiser runs once per step
        ...         steps.append(model.unet.next().output[0].save())
        ...     images = model.output.save()
        >>> len(steps), steps[0].value.shape                  # guidance: [uncond; cond] rows
        (4, torch.Size([2, 4, 8, 8]))
        >>> images.value.images[0].size
        (16, 16)

    Args:
        model_key: A pipeline id or folder (loaded lazily), or a ``DiffusionPipeline`` object.
        dispatch: Load the real weights at once instead of at the first trace.
        **kwargs: Passed to ``DiffusionPipeline.from_pretrained`` (``dtype``, ``device_map``,
            ``variant``, ``revision``, ...).

    Inputs of ``trace``/``invoke``/``generate``: a prompt ``str`` or prompts
    ``List[str]`` for text-to-image pipelines, a class label (``int`` or a label
    name) or a list of them for class-conditioned pipelines (DiT). Several
    invokes are batched into one pipeline call.

    Execution keyword arguments go to the pipeline (``num_inference_steps``,
    ``guidance_scale``, ``height``, ``output_type``, ...), plus ``seed``: every
    image ``k`` of every prompt starts from the noise of
    ``torch.Generator().manual_seed(seed + k)`` (so batched prompts equal their
    solo runs, and different prompts share their starting noise). ``trace``
    runs one denoising step unless ``num_inference_steps`` is given;
    ``generate`` runs the whole pipeline.

    With classifier-free guidance the denoiser sees a doubled batch; each
    invoke still reads and edits exactly its own rows of it: the first half of
    what it sees is one guidance branch, the second half the other (for
    Stable Diffusion: unconditional, then conditional; for DiT: conditional,
    then unconditional).

    Attributes:
        pipeline: The diffusers pipeline (after dispatch, the loaded one).
    """

    def __init__(self, model_key: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(model_key, DiffusionPipeline):
            model_key = Diffuser(model_key)
        elif isinstance(model_key, torch.nn.Module) and not isinstance(model_key, Diffuser):
            raise ModelKeyError(
                f"DiffusionModel wraps a diffusers pipeline (a DiffusionPipeline or its id or folder), "
                f"not a {type(model_key).__name__} module: wrap a single module with NNsight instead."
            )
        super().__init__(model_key, *args, **kwargs)
        if self.custom_model:  # the seed's model_key: the class name of what the user passed
            self.__dict__["model_key"] = type(self._model.pipeline).__name__

    @property
    def pipeline(self) -> DiffusionPipeline:
        """The wrapped diffusers pipeline."""
        return self._model.pipeline

    def generate(self, *inputs: Any, invoker_args: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Runner:
        """A trace that runs the whole pipeline; keyword arguments go to it (see the class docs).

        The denoiser (``unet`` or ``transformer``) runs once per denoising step
        (twice-sized with classifier-free guidance), so ``.next()`` moves to the
        next step; ``model.output`` is the pipeline's output.
        """
        return self.runner(*inputs, method="generate", invoker_args=invoker_args, **kwargs)

    def batch_layout(self, batch_size: int, kwargs: Dict[str, Any],
                     method: Optional[str]) -> Dict[int, Tuple[int, int]]:
        """Rows per image (``num_images_per_prompt``) and the two guidance halves."""
        repeats = kwargs.get("num_images_per_prompt") or 1
        layouts = {}
        if repeats > 1:
            layouts[batch_size * repeats] = (1, repeats)
        if self._guided(kwargs):
            layouts[2 * batch_size * repeats] = (2, repeats)
        return layouts

    def _guided(self, kwargs: Dict[str, Any]) -> bool:
        """Whether the pipeline will run classifier-free guidance (a doubled denoiser batch)."""
        scale = kwargs.get("guidance_scale")
        if scale is None:
            parameter = inspect.signature(type(self.pipeline).__call__).parameters.get("guidance_scale")
            if parameter is None or not isinstance(parameter.default, (int, float)):
                return False
            scale = parameter.default
        unet = getattr(self.pipeline, "unet", None)
        if unet is not None and getattr(unet.config, "time_cond_proj_dim", None) is not None:
            return False  # guidance-distilled UNets (LCM) take the scale as an embedding
        return scale > 1
