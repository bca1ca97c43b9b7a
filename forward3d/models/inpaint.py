"""Image inpainters behind one interface: ``inpaint(image, mask, prompt) -> image``.

- :class:`TeleaInpainter`: OpenCV's Telea fast marching fill (``cv2.inpaint``); weight-free, runs
  anywhere (``pip install forward3d[data]`` for OpenCV). It smears the seam colours into the hole: the
  scene loop runs, the new regions are plausible colour continuations, not new content.
- :class:`DiffusersInpainter`: a Stable Diffusion 2 inpainting pipeline from a LOCAL folder
  (``StableDiffusionInpaintPipeline``, ``pip install 'forward3d[gen]'``), text-conditioned by
  ``prompt``: what the Invisible Stitch paper uses.

Arrays: ``image [H, W, 3]`` uint8, ``mask [H, W]`` bool (True = pixels to fill). The result keeps
every pixel outside the mask as it was.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Inpainter", "TeleaInpainter", "DiffusersInpainter", "make_inpainter"]


def _check(image: np.ndarray, mask: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{where}: expected a uint8 image [H, W, 3], found {image.dtype} {list(image.shape)}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"{where}: expected mask of shape {list(image.shape[:2])}, found {list(mask.shape)}")
    return image, mask.astype(bool)


class Inpainter:
    """Interface: ``inpaint(image, mask, prompt=None, c2w=None) -> [H, W, 3] uint8``.

    ``c2w`` (``[4, 4]``, the view's camera in the scene frame) is for inpainters that need it (the
    test oracle renders the ground truth there); real inpainters ignore it."""

    name = "inpainter"

    def inpaint(self, image: np.ndarray, mask: np.ndarray, prompt: str | None = None,
                c2w: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError


class TeleaInpainter(Inpainter):
    """OpenCV Telea fill with ``radius`` pixels of neighbourhood."""

    name = "telea"

    def __init__(self, radius: int = 5):
        if radius < 1:
            raise ValueError(f"TeleaInpainter: radius expected >= 1, found {radius}")
        self.radius = int(radius)

    def inpaint(self, image, mask, prompt=None, c2w=None) -> np.ndarray:
        from forward3d.io._cv import import_cv2

        image, mask = _check(image, mask, "TeleaInpainter.inpaint")
        if not mask.any():
            return image.copy()
        if mask.all():
            raise ValueError("TeleaInpainter: the mask covers the whole image: nothing to continue from")
        cv2 = import_cv2()
        out = cv2.inpaint(np.ascontiguousarray(image), mask.astype(np.uint8), self.radius, cv2.INPAINT_TELEA)
        return np.where(mask[..., None], out, image)


class DiffusersInpainter(Inpainter):
    """Stable Diffusion (2) inpainting from a local folder (``diffusers`` format).

    The image is resized to ``size`` (multiples of 8; 512x512 is what SD-2 inpainting was trained at),
    inpainted with ``steps`` denoising steps and ``guidance`` classifier-free guidance, resized back and
    pasted into the hole only. ``seed`` makes runs repeatable.
    """

    name = "diffusers"

    def __init__(self, folder: str | os.PathLike, device: str = "cpu", steps: int = 30, guidance: float = 7.5,
                 size: tuple[int, int] = (512, 512), seed: int = 0, default_prompt: str = ""):
        try:
            import diffusers  # noqa: F401
            from diffusers import StableDiffusionInpaintPipeline
        except ImportError as exc:
            raise ImportError("the diffusion inpainter needs diffusers: pip install 'forward3d[gen]' "
                              "(or use the weight-free --inpainter telea)") from exc
        p = Path(folder)
        if not (p / "model_index.json").is_file():
            raise ValueError(f"{p}: expected a local diffusers inpainting folder with model_index.json "
                             "(e.g. a download of stabilityai/stable-diffusion-2-inpainting)")
        import json

        import torch

        unet_cfg = p / "unet" / "config.json"
        try:
            in_channels = json.loads(unet_cfg.read_text(encoding="utf-8")).get("in_channels")
        except (OSError, ValueError) as exc:
            raise ValueError(f"{unet_cfg}: cannot read the UNet config of the inpainting pipeline ({exc})") from exc
        if in_channels != 9:
            raise ValueError(f"{unet_cfg}: in_channels is {in_channels}, an inpainting UNet has 9 (latents + "
                             "mask + masked image): this looks like a text-to-image model, not an inpainting one")
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        try:
            self.pipe = StableDiffusionInpaintPipeline.from_pretrained(str(p), torch_dtype=dtype,
                                                                       local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ValueError(f"{p}: cannot load the diffusers inpainting pipeline: {exc}") from exc
        self.pipe = self.pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.device, self.steps, self.guidance = device, int(steps), float(guidance)
        self.size = (int(size[0]) // 8 * 8, int(size[1]) // 8 * 8)
        self.seed, self.default_prompt = int(seed), default_prompt

    def inpaint(self, image, mask, prompt=None, c2w=None) -> np.ndarray:
        import torch
        from PIL import Image

        image, mask = _check(image, mask, "DiffusersInpainter.inpaint")
        if not mask.any():
            return image.copy()
        h, w = image.shape[:2]
        W, H = self.size[1], self.size[0]
        img = Image.fromarray(image).resize((W, H), Image.BICUBIC)
        m = Image.fromarray(mask.astype(np.uint8) * 255).resize((W, H), Image.NEAREST)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        out = self.pipe(prompt=prompt or self.default_prompt, image=img, mask_image=m, height=H, width=W,
                        num_inference_steps=self.steps, guidance_scale=self.guidance, generator=gen).images[0]
        out = np.asarray(out.convert("RGB").resize((w, h), Image.BICUBIC))
        return np.where(mask[..., None], out, image)


def make_inpainter(spec: str | None = "telea", device: str = "cpu", **kwargs) -> Inpainter:
    """``"telea"`` (default) or the path of a local diffusers inpainting folder; ``kwargs`` go to
    :class:`DiffusersInpainter` (ignored by Telea)."""
    if spec in (None, "", "telea"):
        return TeleaInpainter()
    return DiffusersInpainter(spec, device=device, **kwargs)
