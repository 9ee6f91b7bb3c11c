"""The colour distribution of a part: quantiles of its pixels' CIELAB values over its foreground mask.

A part turned or moved keeps its distribution, so a recoloured, missing or extra piece, which a patch
bank divided by its own mean does not see (every patch still has a normal match, and the map's mean
rises with its peak), moves it. The mask is found on the whole photo, not on the engine's crop of
it: a crop's thin border is a poor background sample (tire crops: masks of 31-42 % of the same
tires, normal pairs 2-4 times further apart than on whole photos; docs/method.md, "Colour
distribution")."""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from ..foreground import as_rgb_array, estimate_foreground

QUANTILES = np.linspace(0.05, 0.95, 19)
# Longest side the statistic is read at: quantiles of ~20,000 part pixels are stable, and a photo
# costs about 4 ms (mask included; docs/method.md, "Colour distribution").
MAX_SIDE = 256


def colour_quantiles(image: Image.Image) -> np.ndarray:
    """19 x 3 quantiles (5 % to 95 %) of the L, a, b values (OpenCV's 8-bit scale) over the part."""
    small = image.convert("RGB")
    small.thumbnail((MAX_SIDE, MAX_SIDE))
    array = as_rgb_array(small)
    pixels = cv2.cvtColor(array, cv2.COLOR_RGB2LAB).astype(np.float32)[estimate_foreground(small)]
    return np.quantile(pixels, QUANTILES, axis=0).astype(np.float32)


def centre(quantiles: np.ndarray) -> np.ndarray:
    """R x 19 x 3 -> 19 x 3: the mean quantile function, per channel the distribution closest to all
    R in the 1-D Wasserstein sense, so no reference's pixels have to be kept."""
    return quantiles.mean(axis=0)


def colour_shift(quantiles: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """B x 19 x 3 against 19 x 3 -> B: mean absolute quantile difference over the three channels (a
    1-D Wasserstein distance per channel, in CIELAB units)."""
    return np.abs(quantiles - reference[None]).mean(axis=(1, 2))
