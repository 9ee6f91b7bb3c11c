"""How a photo was captured, against its references: the fine detail of the plain background around
a part.

A good part photographed noisier (raised gain, low light), blurred (focus, motion) or compressed
harder than its references differs from them everywhere, and the engine's score rises with it: on
tire, 1 reference, sensor noise takes image AUROC from 84.0 to 70.4 and the verdict's balanced
accuracy from 74.2 to 55.5 %, blur takes AUROC to 76.9 (docs/method.md, "Capture changes"). The
engine cannot undo that, but it can say so. The background beside a part shows only what the
camera adds, so its fine detail (the mean absolute response to a 3 x 3 second-difference kernel,
Immerkaer's noise estimate, in grey levels) is the same from one good photo to the next, rises
with noise and falls with blur and JPEG compression. A surface that fills the frame has no
background: its fine detail is its own texture, which varies from part to part as much as a capture
change moves it (magnetic tile, docs/method.md), so surfaces get no capture check.
"""
from __future__ import annotations

import cv2
import numpy as np

from .foreground import as_rgb_array, estimate_foreground
from .result import CaptureChange

# Second differences in both directions: zero on any plane of grey levels, so shading and smooth
# gradients of the background do not count as detail.
SECOND_DIFFERENCE = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
# Pixels closer than this to the part (the mask's edge blurs into it) are not background.
PART_MARGIN_PX = 9
# Too few background pixels to read (a part filling the frame): no reading.
MIN_BACKGROUND_SHARE = 0.05
# Below this the reading is quantisation, not a capture property (a synthetic, noise-free
# background); readings are clamped here so a ratio against it stays finite.
DETAIL_FLOOR = 0.25


def background_detail(image, mask: np.ndarray | None = None) -> float | None:
    """Fine detail of the plain background around the part, in grey levels; None when the photo has
    no plain background (a surface) or too little of it. `mask` is `estimate_foreground(image)`
    when the caller has it already."""
    mask = estimate_foreground(image) if mask is None else mask
    if mask.all():
        return None
    grey = cv2.cvtColor(as_rgb_array(image), cv2.COLOR_RGB2GRAY).astype(np.float32)
    near_part = cv2.dilate(mask.astype(np.uint8), np.ones((2 * PART_MARGIN_PX + 1,) * 2, np.uint8)).astype(bool)
    # Clipped pixels (black or white background) hide noise rather than show it.
    background = ~near_part & (grey > 2) & (grey < 253)
    background[[0, -1], :], background[:, [0, -1]] = False, False  # the kernel needs both neighbours
    if background.mean() < MIN_BACKGROUND_SHARE:
        return None
    response = np.abs(cv2.filter2D(grey, -1, SECOND_DIFFERENCE, borderType=cv2.BORDER_REPLICATE))
    detail = float(np.sqrt(np.pi / 2) / 6 * response[background].mean())
    return max(detail, DETAIL_FLOOR)


def reference_details(images: list) -> np.ndarray | None:
    """Each reference's background detail, or None when any has no background to read."""
    details = [background_detail(image) for image in images]
    return None if any(d is None for d in details) else np.asarray(details, np.float32)


def capture_change(detail: float | None, references: np.ndarray | None, tolerance: float) -> CaptureChange | None:
    """The change when `detail` lies outside the references' range widened by a factor of
    `tolerance` on each side; None within it or when either side has no reading."""
    if detail is None or references is None or len(references) == 0:
        return None
    low, high = float(references.min()), float(references.max())
    if detail > high * tolerance:
        return CaptureChange("noisier", detail / high)
    if detail < low / tolerance:
        return CaptureChange("smoother", detail / low)
    return None
