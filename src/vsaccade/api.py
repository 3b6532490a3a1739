"""The Python API's predict call: one image (array, tensor, LargeImage or path) -> probabilities and glimpse boxes."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .geometry import proxy_valid_mask
from .images import ArrayImage, ImageError, LargeImage, check_fits_a_glimpse
from .evaluate import head_probabilities
from .model.glimpse_sampler import glimpse_boxes_pixels
from .config import parse_policy
from .model.noise import Noise, sample_key


@dataclass
class Prediction:
    probabilities: dict  # head -> (classes,) tensor (softmax, or per-class sigmoid for multilabel heads)
    boxes: torch.Tensor  # (T, 4) glimpse windows (x0, y0, x1, y1) in the image's pixel coordinates
    z: torch.Tensor  # (T, 3) latents (s, u, v)

    def label(self, head: str | None = None) -> int:
        probs = self.probabilities[head or next(iter(self.probabilities))]
        return int(probs.argmax())


def open_image(source, channels: int) -> LargeImage:
    """An array, tensor, LargeImage or image file path -> a LargeImage with `channels` channels.

    Files are read lazily through pyvips (`FileImage`) when it is installed (`pip install vsaccade[files]`);
    without it they are decoded whole with Pillow."""
    if isinstance(source, LargeImage):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"image not found: {path}")
        try:
            import pyvips  # noqa: F401
        except (ImportError, OSError):
            return decode_with_pillow(path, channels)
        from .file_images import FileImage

        return FileImage(path, channels=channels if channels in (1, 3) else None)
    return ArrayImage(source)


def decode_with_pillow(path: Path, channels: int) -> ArrayImage:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as handle:
            handle.load()
            pixels = np.asarray(ImageOps.exif_transpose(handle).convert("L" if channels == 1 else "RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageError(f"cannot read image {path}: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    return ArrayImage(pixels)


def match_channels(pixels: torch.Tensor, channels: int) -> torch.Tensor:
    """(C, H, W) -> (channels, H, W): grey from the channel mean, colour by repeating a single channel."""
    if pixels.shape[0] == channels:
        return pixels
    if channels == 1:
        return pixels.mean(0, keepdim=True)
    if pixels.shape[0] == 1:
        return pixels.expand(channels, -1, -1)
    raise ImageError(f"cannot convert a {pixels.shape[0]}-channel image to {channels} channels")


@dataclass
class ModelInput:
    """One image made ready for a model: the image, its proxy (C', P, P) and the proxy's valid mask (P, P)."""
    image: LargeImage
    proxy: torch.Tensor
    mask: torch.Tensor


def model_input(model, image) -> ModelInput:
    """An image (array, tensor, LargeImage or path) checked against the model, with its proxy made (the proxy read is
    a prediction's file I/O: `vsaccade predict` does it in its reading threads)."""
    c = model.config
    image = open_image(image, c.image_channels)
    if image.channels != c.image_channels:
        raise ImageError(f"model expects {c.image_channels}-channel images, got {image.channels} channels")
    if model.glimpses_per_image:
        check_fits_a_glimpse(image, c.glimpse_size)
    proxy = (match_channels(image.proxy(c.proxy_size), c.proxy_channels) if getattr(model, "reads_proxy", True)
             else torch.zeros(c.proxy_channels, c.proxy_size, c.proxy_size))  # a model that never looks at it
    return ModelInput(image, proxy, proxy_valid_mask(image.height, image.width, c.proxy_size))


def own_policy(model) -> str:
    """The policy a loaded checkpoint's run evaluated with (train.eval_policy; a fit-reader stage chooses its own on
    validation); "mode" for a model built in code."""
    return getattr(model, "checkpoint", {}).get("train_config", {}).get("eval_policy", "mode")


@torch.inference_mode()
def predict_inputs(model, inputs: list[ModelInput], policy: str | None = None, names: list[str] | None = None) -> list[Prediction]:
    """Classify a batch of prepared images in one forward (per sample of `policy`, default the model's own_policy).
    With `names` (e.g. file paths), the draws of `samples:K` are keyed by each name: a file's prediction does not
    depend on its batch."""
    samples = parse_policy(policy or own_policy(model))
    model.eval()
    device = next(model.parameters()).device
    images = [i.image for i in inputs]
    proxy = torch.stack([i.proxy for i in inputs]).to(device)
    mask = torch.stack([i.mask for i in inputs]).to(device)
    keys = [zlib.crc32(name.encode()) for name in names] if names else None
    runs = [model(images, proxy, mask, sample=samples > 0, kl=False,
                  **({"noise": Noise.keyed([sample_key(0, k, key) for key in keys], device)} if keys else {}))
            for k in range(max(samples, 1))]
    probs = [head_probabilities(run.logits, model.config.heads) for run in runs]
    mean = {k: torch.stack([p[k] for p in probs]).mean(0).cpu() for k in probs[0]}
    z = runs[0].z
    boxes = glimpse_boxes_pixels(images, z)
    return [Prediction({k: v[b] for k, v in mean.items()}, boxes[b].cpu(), z[b].cpu()) for b in range(len(inputs))]


def predict(model, image, policy: str | None = None) -> Prediction:
    """Classify one image: `policy` is "mode" (posterior mode) or "samples:K" (average over K posterior samples);
    default the model's own (own_policy)."""
    return predict_inputs(model, [model_input(model, image)], policy)[0]
