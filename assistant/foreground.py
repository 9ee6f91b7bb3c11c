"""Where the object is: a rough foreground mask, so maps and synthetic defects can focus on the part
and ignore an empty background. Textures (no plain background) get the whole image."""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def as_rgb_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3].astype(np.uint8))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill regions of False that do not touch the border."""
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = flood == 0
    return mask | holes[1:-1, 1:-1]


def estimate_foreground(image, max_side: int = 128) -> np.ndarray:
    """A rough boolean object mask (HxW); all True when there is no clear object on a background.

    On a downscaled, blurred copy: a pixel is foreground when its Lab colour is far from the median
    border colour, or its local contrast is high, compared with what the border itself shows. The
    largest connected components are kept and holes filled (the small-scale filters make the mask
    reach a little past the object's edge, a slight dilation). Falls back
    to the whole image when the border is not a plain background (a texture) or the object is tiny.
    """
    array = as_rgb_array(image)
    height, width = array.shape[:2]
    everything = np.ones((height, width), dtype=bool)
    scale = min(1.0, max_side / max(height, width))
    small_w, small_h = max(8, round(width * scale)), max(8, round(height * scale))
    small = cv2.resize(array, (small_w, small_h), interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab = cv2.GaussianBlur(lab, (3, 3), 0.6)
    band = max(1, round(0.04 * min(small_h, small_w)))
    border = np.zeros((small_h, small_w), dtype=bool)
    border[:band], border[-band:], border[:, :band], border[:, -band:] = True, True, True, True
    reference = np.median(lab[border], axis=0)
    distance = np.sqrt(((lab - reference) ** 2).sum(axis=2))
    lightness = lab[:, :, 0]
    mean = cv2.blur(lightness, (3, 3))
    contrast = np.sqrt(np.maximum(cv2.blur(lightness * lightness, (3, 3)) - mean * mean, 0.0))
    border_distance = float(np.percentile(distance[border], 95))
    if border_distance > 15.0:
        return everything  # the border is not a plain background: a texture or a cropped object
    distance_threshold = max(2.0 * border_distance + 1.5, 5.0)
    contrast_threshold = max(2.5 * float(np.percentile(contrast[border], 95)), 0.8)
    fg = ((distance > distance_threshold) | (contrast > contrast_threshold)).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if count <= 1:
        return everything
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.flatnonzero(areas >= 0.2 * areas.max())
    fg = fill_holes(np.isin(labels, keep))
    # The blur and the 3x3 contrast window already reach about a pixel past the object's edge.
    fg = fg.astype(np.uint8)
    if not 0.02 <= fg.mean() <= 0.97:
        return everything
    full = cv2.resize(fg, (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    return full if full.sum() >= 64 else everything


def border_pixels(array: np.ndarray, share: float = 0.04) -> np.ndarray:
    """N x C pixels of the outer `share` of each side."""
    height, width = array.shape[:2]
    band = max(2, round(share * min(height, width)))
    return np.concatenate([array[:band].reshape(-1, array.shape[-1]), array[-band:].reshape(-1, array.shape[-1]),
                           array[band:-band, :band].reshape(-1, array.shape[-1]),
                           array[band:-band, -band:].reshape(-1, array.shape[-1])])


def plain_background(array: np.ndarray, max_std: float = 12.0) -> tuple[np.ndarray, np.ndarray] | None:
    """(median colour, per-channel spread) of the image border when it is one plain colour (a part
    photographed on a background: the blurred border varies by less than `max_std` grey levels),
    else None (a surface or texture fills the frame)."""
    blurred = cv2.GaussianBlur(as_rgb_array(array).astype(np.float32), (0, 0), 2.0)
    if float(border_pixels(blurred).mean(axis=1).std()) >= max_std:
        return None
    border = border_pixels(as_rgb_array(array).astype(np.float32))
    return np.median(border, axis=0), border.std(axis=0)


def warp_keep_size(array: np.ndarray, matrix: np.ndarray, seed: int = 0,
                   size: tuple[int, int] | None = None) -> np.ndarray:
    """An RGB array moved by a 2 x 3 affine matrix onto a canvas of `size` (width, height; default
    the array's). Uncovered pixels of a part on a plain background get that background (its colour
    and grain), so no piece of the part is mirrored in as reflection would; a surface is continued
    by reflection."""
    array = as_rgb_array(array)
    width, height = size or (array.shape[1], array.shape[0])
    background = plain_background(array)
    if background is None:
        return cv2.warpAffine(array, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    moved = cv2.warpAffine(array, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    covered = cv2.warpAffine(np.ones(array.shape[:2], np.uint8), matrix, (width, height), flags=cv2.INTER_NEAREST,
                             borderMode=cv2.BORDER_CONSTANT).astype(bool)
    median, spread = background
    fill = median + np.random.default_rng(seed).normal(0.0, 1.0, moved.shape) * spread
    moved[~covered] = np.clip(fill, 0, 255).astype(np.uint8)[~covered]
    return moved


def rotate_image(array: np.ndarray, degrees: float) -> np.ndarray:
    """`array` turned by `degrees` about its centre. A part on a plain background gets a canvas
    large enough to hold every corner (the crop that follows finds it wherever it is); a surface
    keeps its frame, continued by reflection."""
    matrix, size = rotation(array, degrees)
    return warp_keep_size(array, matrix, size=size)


def rotation(array: np.ndarray, degrees: float) -> tuple[np.ndarray, tuple[int, int]]:
    """(2 x 3 affine matrix, canvas width and height) with which `rotate_image` turns `array`."""
    height, width = array.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    if plain_background(array) is None:
        return matrix, (width, height)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_width, new_height = int(np.ceil(width * cos + height * sin)), int(np.ceil(width * sin + height * cos))
    matrix[:, 2] += ((new_width - width) / 2, (new_height - height) / 2)
    return matrix, (new_width, new_height)


def foreground_box(image: Image.Image, margin: float = 0.04,
                   mask: np.ndarray | None = None) -> tuple[int, int, int, int] | None:
    """Bounding box (x0, y0, x1, y1) of the object with a small margin, or None for textures;
    `mask` is `estimate_foreground(image)` when the caller has it already."""
    mask = estimate_foreground(image) if mask is None else mask
    if mask.all():
        return None
    ys, xs = np.nonzero(mask)
    width, height = image.size
    mx, my = int(margin * width), int(margin * height)
    return (max(0, int(xs.min()) - mx), max(0, int(ys.min()) - my),
            min(width, int(xs.max()) + 1 + mx), min(height, int(ys.max()) + 1 + my))
