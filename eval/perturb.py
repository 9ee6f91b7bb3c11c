"""Realistic capture changes for test images (never for references): pose (rotation by any angle,
shift, scale), light (brightness and contrast), focus (blur), compression (JPEG) and sensor noise.

Each image gets its own parameters, drawn from a generator seeded by the perturbation's name and
the image's place in its set (`key_of`: set, folder and file name), so a run is reproducible, every
image sees a different change, and the same image gets the same change however its set's root was
spelled on the command line. Geometric
changes move the mask with the image.

A part on a plain background is warped onto a canvas that holds all of it, the uncovered corners
filled with that background (`assistant.foreground.warp_keep_size`). A surface that fills the frame
has no background to fill in, so after the warp the largest rectangle of the image's aspect ratio
that holds only real pixels is kept, at native pixel size: what a camera turned or moved over the
same surface would see. Reflecting the surface into the corners instead makes seams and mirrors
the image's edge rows inward as lines, which no camera shows.

That rectangle loses the photo's corners (a turn by 45 degrees keeps half of a square photo), and
with them the defects that lie there: on magnetic tile, rotate + shift cut 61 % of the defects out
of the frame entirely. So a surface's rectangle is placed where it holds most of the defect's mask,
`Sample.kept` says how much of the defect the frame still holds (the evaluation leaves out anomalous
images that kept less than half of it: they no longer show their defect), and a surface of a set
without masks, whose defects cannot be followed, is only turned by multiples of 90 degrees, which
keep every pixel (`keep_every_pixel`; shift and scale leave it as it is).
"""
from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from assistant.foreground import plain_background, warp_keep_size

# Changes when what a named change does to an image changes, so results of an older version are not
# mixed with new ones (a resumed matrix keeps only rows of the same version). 2: a surface's frame
# is placed over its defect, and sets without masks are turned by right angles only. 3: parameters
# are drawn for the image's place in its set, not its full path (`key_of`).
VERSION = 3

# Ranges of the protocol: shift and scale +-10 %, brightness and contrast +-20 %.
SHIFT = 0.10
SCALE = 0.10
LIGHT = 0.20
BLUR_SIGMA = (0.6, 1.5)  # pixels at native resolution: slightly out of focus
JPEG_QUALITY = 70
NOISE_SIGMA = (3.0, 8.0)  # grey levels of 255: a sensor at raised gain


@dataclass
class Sample:
    """An RGB image (H x W x 3 uint8) and its boolean mask (H x W), changed together; `kept` is the
    share of the defect's pixels the frame still holds after the changes so far."""

    image: np.ndarray
    mask: np.ndarray
    keep_every_pixel: bool = False
    kept: float = 1.0


def key_of(path: str | Path) -> str:
    """The image's place in its MVTec-layout set ("tire/test/defect/001.png"): the key its changes
    are drawn for. The full path is not: `../shared/datasets` and `/work/shared/datasets` name the
    same images, and on tire's 49 holdout images two draws of rotate + shift differ by 8 points of
    image AUROC."""
    return "/".join(Path(path).parts[-4:])


def rng_for(name: str, key: str) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256(f"{name}|{key}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed)


def rectangles_inside(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean map of top-left corners (y, x) where a height x width rectangle holds only True
    pixels of `mask`."""
    if mask.shape[0] < height or mask.shape[1] < width:
        return np.zeros((0, 0), bool)
    return window_sums(~mask.astype(bool), height, width) == 0


def largest_valid_rectangle(valid: np.ndarray, aspect: float, hold: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the largest rectangle of width/height `aspect` inside `valid`: among those
    of that size, the one holding the most pixels of `hold` (a defect's mask), then the one nearest
    the centre."""
    height, width = valid.shape
    low, high = 0.05, 1.0
    best = None
    for _ in range(16):  # bisection on the rectangle's size
        scale = (low + high) / 2
        rect_h = max(1, int(scale * height))
        rect_w = max(1, int(min(width, rect_h * aspect)))
        ys, xs = np.nonzero(rectangles_inside(valid, rect_h, rect_w))
        if len(ys):
            order = (ys + rect_h / 2 - height / 2) ** 2 + (xs + rect_w / 2 - width / 2) ** 2
            if hold is not None and hold.any():  # the defect's pixels first, the distance to the centre second
                order = order - window_sums(hold, rect_h, rect_w)[ys, xs] * (order.max() + 1)
            pick = int(np.argmin(order))
            best = (int(xs[pick]), int(ys[pick]), int(xs[pick]) + rect_w, int(ys[pick]) + rect_h)
            low = scale
        else:
            high = scale
    return best or (0, 0, width, height)


def window_sums(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels of `mask` inside the height x width rectangle at each top-left corner (y, x), from an
    integral image: one pass, whatever the rectangle's size."""
    total = np.pad(mask.astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    rows, cols = mask.shape[0] - height + 1, mask.shape[1] - width + 1
    return (total[height:height + rows, width:width + cols] - total[:rows, width:width + cols]
            - total[height:height + rows, :cols] + total[:rows, :cols])


def covering_canvas(matrix: np.ndarray, width: int, height: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The matrix moved and the canvas (width, height) grown so the whole warped frame fits."""
    corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]], np.float64) @ np.asarray(matrix, np.float64).T
    low, high = np.floor(corners.min(axis=0)), np.ceil(corners.max(axis=0))
    moved = np.asarray(matrix, np.float64).copy()
    moved[:, 2] -= low
    return moved, (int(high[0] - low[0]), int(high[1] - low[1]))


def warp(sample: Sample, matrix: np.ndarray) -> Sample:
    """Apply a 2 x 3 affine matrix to image and mask (see the module docstring for the borders). A
    part on a background gets a canvas that holds all of it: a person turning or moving a part in
    front of a camera keeps it in the picture."""
    height, width = sample.mask.shape
    seed = int(abs(matrix).sum() * 1000) % 2**31
    plain = plain_background(sample.image) is not None
    if plain:
        matrix, size = covering_canvas(matrix, width, height)
    else:
        size = (width, height)
    image = warp_keep_size(sample.image, matrix, seed=seed, size=size)
    mask = cv2.warpAffine(sample.mask.astype(np.uint8) * 255, matrix, size, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT) > 127
    if plain:
        return replace(sample, image=image, mask=mask)
    valid = cv2.warpAffine(np.ones((height, width), np.uint8), matrix, size, flags=cv2.INTER_NEAREST,
                           borderMode=cv2.BORDER_CONSTANT) > 0
    x0, y0, x1, y1 = largest_valid_rectangle(valid, width / height, mask)
    inside = mask[y0:y1, x0:x1].copy()
    # The defect's area after the warp, had the frame been endless (a turn can carry it off the canvas).
    area = sample.mask.sum() * abs(np.linalg.det(np.asarray(matrix, np.float64)[:, :2]))
    kept = sample.kept * (min(1.0, inside.sum() / area) if area > 0 else 1.0)
    return replace(sample, image=image[y0:y1, x0:x1].copy(), mask=inside, kept=float(kept))


def is_surface(sample: Sample) -> bool:
    return plain_background(sample.image) is None


def rotate(sample: Sample, rng: np.random.Generator) -> Sample:
    height, width = sample.mask.shape
    angle = float(rng.uniform(0, 360))
    if sample.keep_every_pixel and is_surface(sample):
        turns = int(round(angle / 90.0)) % 4
        return replace(sample, image=np.ascontiguousarray(np.rot90(sample.image, turns)),
                       mask=np.ascontiguousarray(np.rot90(sample.mask, turns)))
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    return warp(sample, matrix)


def shift(sample: Sample, rng: np.random.Generator) -> Sample:
    height, width = sample.mask.shape
    dx, dy = rng.uniform(-SHIFT, SHIFT, 2) * (width, height)
    if sample.keep_every_pixel and is_surface(sample):
        return sample
    return warp(sample, np.float32([[1, 0, dx], [0, 1, dy]]))


def scale(sample: Sample, rng: np.random.Generator) -> Sample:
    height, width = sample.mask.shape
    factor = float(math.exp(rng.uniform(math.log(1 - SCALE), math.log(1 + SCALE))))
    if sample.keep_every_pixel and is_surface(sample):
        return sample
    return warp(sample, cv2.getRotationMatrix2D((width / 2, height / 2), 0.0, factor))


def light(sample: Sample, rng: np.random.Generator) -> Sample:
    """Brightness (gain) and contrast (about the image's mean) each changed by up to +-20 %."""
    gain, contrast = rng.uniform(1 - LIGHT, 1 + LIGHT, 2)
    image = sample.image.astype(np.float32)
    mean = image.mean()
    image = ((image - mean) * contrast + mean) * gain
    return replace(sample, image=np.clip(image, 0, 255).astype(np.uint8))


def blur(sample: Sample, rng: np.random.Generator) -> Sample:
    return replace(sample, image=cv2.GaussianBlur(sample.image, (0, 0), float(rng.uniform(*BLUR_SIGMA))))


def jpeg(sample: Sample, rng: np.random.Generator) -> Sample:
    buffer = io.BytesIO()
    Image.fromarray(sample.image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return replace(sample, image=np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))


def noise(sample: Sample, rng: np.random.Generator) -> Sample:
    sigma = float(rng.uniform(*NOISE_SIGMA))
    image = sample.image.astype(np.float32) + rng.normal(0.0, sigma, sample.image.shape)
    return replace(sample, image=np.clip(image, 0, 255).astype(np.uint8))


PERTURBATIONS: dict[str, Callable[[Sample, np.random.Generator], Sample]] = {
    "rotate": rotate, "shift": shift, "scale": scale, "light": light, "blur": blur, "jpeg": jpeg, "noise": noise,
}


def parse(names: str | list[str] | None) -> list[str]:
    """"rotate,shift" -> ["rotate", "shift"], checked against PERTURBATIONS."""
    if not names:
        return []
    if isinstance(names, str):
        names = names.split(",")
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise ValueError(f"unknown perturbation {', '.join(unknown)}; choose from {', '.join(PERTURBATIONS)}")
    return names


def apply(names: list[str], image: Image.Image, mask: np.ndarray | None, key: str,
          keep_every_pixel: bool = False) -> tuple[Image.Image, np.ndarray | None, float]:
    """`image` (RGB PIL) and `mask` (bool H x W, or None for a normal image) after each named change
    in order, with parameters drawn for the image `key` (`key_of` its path), and the share of the mask's
    pixels the frame still holds (1 for a normal image). `keep_every_pixel`: for a set whose defects
    have no masks, surfaces are only turned by multiples of 90 degrees (module docstring)."""
    if not names:
        return image, mask, 1.0
    array = np.asarray(image.convert("RGB"))
    sample = Sample(array, mask if mask is not None else np.zeros(array.shape[:2], bool), keep_every_pixel)
    for name in names:
        sample = PERTURBATIONS[name](sample, rng_for(name, key))
    return Image.fromarray(sample.image), (sample.mask if mask is not None else None), sample.kept
