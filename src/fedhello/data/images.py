"""Images for image-classification: decoded and transformed per batch.

The model's own image processor (``AutoImageProcessor`` of the model folder)
gives the input size, the rescale factor and the normalisation; the transforms
are those of the reference (and of Hugging Face's image-classification example),
written in plain torch so no torchvision is needed:

- training: ``RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))`` then a
  horizontal flip with probability 1/2;
- evaluation: resize to ``size`` (a ``shortest_edge`` processor: resize the short
  side, then centre-crop to ``crop_size``).

Interpolation is bilinear with antialiasing. Randomness comes from torch's global
generator, which :class:`~fedhello.federation.client.LocalTrainer` seeds per
client and round, so training stays reproducible. Images stay encoded in the
``datasets.Dataset`` (memory-mapped for hub data) and are decoded per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _size_get(size, key):
    if size is None:
        return None
    try:
        v = size[key]
    except (KeyError, TypeError, IndexError):
        v = getattr(size, key, None)
    return v


@dataclass(frozen=True)
class ImageTransform:
    """The training and evaluation image pipelines of a model (see the module docstring)."""
    size: tuple[int, int]  # (height, width) of the model input
    shortest_edge: int | None = None  # eval: resize the short side to this, then centre-crop to size
    rescale: float = 1 / 255
    mean: tuple[float, ...] | None = (0.5, 0.5, 0.5)
    std: tuple[float, ...] | None = (0.5, 0.5, 0.5)
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @classmethod
    def from_processor(cls, proc) -> "ImageTransform":
        """The transform a Hugging Face image processor describes.

        Input size from ``size`` (``height``/``width``, or ``shortest_edge`` with
        ``crop_size``), rescale factor and mean/std normalisation where the processor
        applies them. Raises ValueError when the input size cannot be read.
        """
        size = getattr(proc, "size", None)
        h, w = _size_get(size, "height"), _size_get(size, "width")
        short = _size_get(size, "shortest_edge")
        if h and w:
            target, short = (int(h), int(w)), None
        elif short:
            crop = getattr(proc, "crop_size", None)
            ch, cw = _size_get(crop, "height"), _size_get(crop, "width")
            target = (int(ch), int(cw)) if ch and cw else (int(short), int(short))
        else:
            raise ValueError(f"image processor {type(proc).__name__}: cannot read the input size from {size!r}")
        norm = getattr(proc, "do_normalize", True)
        mean = tuple(float(x) for x in proc.image_mean) if norm and proc.image_mean is not None else None
        std = tuple(float(x) for x in proc.image_std) if norm and proc.image_std is not None else None
        rescale = float(proc.rescale_factor) if getattr(proc, "do_rescale", True) else 1.0
        return cls(size=target, shortest_edge=int(short) if short else None, rescale=rescale, mean=mean, std=std)

    # -- pieces ---------------------------------------------------------------
    def _resize(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(hw):
            return x
        return F.interpolate(x[None], size=hw, mode="bilinear", align_corners=False, antialias=True)[0]

    def _crop_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.get_params, drawing from torch's generator."""
        area = h * w
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(self.scale[0], self.scale[1]))
            ar = math.exp(float(torch.empty(1).uniform_(log_r[0], log_r[1])))
            cw = int(round(math.sqrt(target * ar)))
            ch = int(round(math.sqrt(target / ar)))
            if 0 < cw <= w and 0 < ch <= h:
                i = int(torch.randint(0, h - ch + 1, (1,)))
                j = int(torch.randint(0, w - cw + 1, (1,)))
                return i, j, ch, cw
        in_ratio = w / h  # fallback: central crop of the nearest allowed ratio
        if in_ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.rescale
        if self.mean is not None and self.std is not None:
            m = torch.tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)
            s = torch.tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
            x = (x - m) / s
        return x

    # -- the two pipelines ------------------------------------------------------
    def train(self, x: torch.Tensor) -> torch.Tensor:
        """(C, H, W) float in [0, 255] -> augmented, normalised model input."""
        i, j, ch, cw = self._crop_box(x.shape[-2], x.shape[-1])
        x = self._resize(x[:, i : i + ch, j : j + cw], self.size)
        if float(torch.rand(1)) < 0.5:
            x = x.flip(-1)
        return self._normalize(x)

    def eval(self, x: torch.Tensor) -> torch.Tensor:
        """(C, H, W) float in [0, 255] -> the normalised model input, without randomness.

        Resize to ``size``; with ``shortest_edge``, resize the short side to it and
        centre-crop to ``size`` (resizing up what is smaller than the crop).
        """
        if self.shortest_edge is None:
            x = self._resize(x, self.size)
        else:
            h, w = x.shape[-2:]
            s = self.shortest_edge
            nh, nw = (s, max(1, round(w * s / h))) if h <= w else (max(1, round(h * s / w)), s)
            x = self._resize(x, (nh, nw))
            th, tw = self.size
            top, left = max(0, (nh - th) // 2), max(0, (nw - tw) // 2)
            x = x[:, top : top + th, left : left + tw]
            if tuple(x.shape[-2:]) != (th, tw):  # smaller than the crop: resize up
                x = self._resize(x, (th, tw))
        return self._normalize(x)


def to_tensor(img) -> torch.Tensor:
    """A PIL image (any mode) or array -> (3, H, W) float32 with values in [0, 255]."""
    if hasattr(img, "convert"):
        img = img.convert("RGB")
    a = np.array(img)  # a writable copy
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float()


class ImageData:
    """A split of images (``image`` column) with int labels, collated to ``pixel_values``."""

    def __init__(self, ds, transform: ImageTransform, augment: bool = False):
        self.ds = ds.select_columns(["image"])
        self.labels = np.asarray(ds["label"], dtype=np.int64)
        self.transform = transform
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        """All zeros: images have no length to group by."""
        # no length to group by: length-grouped batching degenerates to plain random batches
        return np.zeros(len(self), dtype=np.int64)

    def without_augmentation(self) -> "ImageData":
        """A view of the same split that collates with the evaluation transform."""
        out = object.__new__(ImageData)
        out.__dict__.update(self.__dict__, augment=False)
        return out

    def collate(self, idx: Sequence[int], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Decode and transform the images ``idx``: ``pixel_values`` (B, C, H, W) and ``labels``.

        Training augmentation when the split was built with ``augment``, else the
        evaluation transform.
        """
        idx = [int(i) for i in idx]
        images = self.ds[idx]["image"]
        fn = self.transform.train if self.augment else self.transform.eval
        pixels = torch.stack([fn(to_tensor(im)) for im in images])
        return {
            "pixel_values": pixels.to(device),
            "labels": torch.as_tensor(self.labels[np.asarray(idx, dtype=np.int64)], dtype=torch.long).to(device),
        }


# what read_image_file decodes: raster formats PIL reads by itself (no EPS, whose
# reader runs Ghostscript, and no other plugin that calls out of the process)
IMAGE_FILE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")


def read_image_file(path) -> torch.Tensor:
    """A user's image file -> (3, H, W) float32 in [0, 255] (:func:`to_tensor`), decoded as an image only.

    Untrusted input: only the raster formats of :data:`IMAGE_FILE_FORMATS` are
    decoded, and an image past PIL's decompression-bomb limit is refused, as is
    anything else (ValueError naming the file).
    """
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FILE_FORMATS) as img:
                img.load()
                return to_tensor(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        why = "not an image of a supported format" if isinstance(err, Image.UnidentifiedImageError) else (
            " ".join(str(err).split())[:200] or type(err).__name__)
        raise ValueError(f"{path}: cannot read it as an image ({why}; formats: {', '.join(IMAGE_FILE_FORMATS)})") from None


__all__ = ["ImageData", "ImageTransform", "IMAGE_FILE_FORMATS", "read_image_file", "to_tensor"]
