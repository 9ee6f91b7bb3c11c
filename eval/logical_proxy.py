"""A development proxy for logical anomalies, made from the normal test images of a set.

No shared set has logical anomalies (a component missing, extra, misplaced or turned; the wrong
colour or amount), which a patch bank that lets every patch match anywhere cannot see. This module
makes them from normal test images, with masks, in the MVTec layout, so they are evaluated like any
set. It is a proxy: a synthesised change is not a real product's logical defect, so it is reported
beside the real sets and never tuned to alone (docs/protocol.md).

Changes (each normal image gives one image per change that applies to its family):
- `missing` (parts on a plain background): a piece of the part replaced by background;
- `extra` (parts on a plain background): a piece of the part copied onto the background beside it;
- `turned`: a square piece of the part (or surface) turned by 90 degrees in place;
- `colour`: the part (or surface) beyond a random straight line made darker or brighter, or, in
  colour images, shifted in hue: wrong colour, wrong fill level.

Train images are linked, not copied; normal test images are linked under their own names, made
images are named "<stem>__<change>.png" so the dev / holdout split keeps them with their source.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from assistant.data import Split
from assistant.data.datasets import open_image
from assistant.foreground import estimate_foreground

from .perturb import rectangles_inside, rng_for
from .protocol import DERIVED_SEPARATOR

OBJECT_CHANGES = ("missing", "extra", "turned", "colour")
SURFACE_CHANGES = ("turned", "colour")
MAX_SOURCES = 50  # normal test images used per set: bounds the proxy's evaluation time
PIECE_AREA = (0.04, 0.10)  # share of the part's area a missing or extra piece covers
TURNED_SIDE = (0.14, 0.22)  # side of the turned square, share of the part's shorter side
COLOUR_AREA = (0.2, 0.45)  # share of the part whose colour changes


def sources(split: Split) -> list[Path]:
    """Up to MAX_SOURCES normal test images, spread over the sorted list."""
    good = [s.path for s in split.test if s.label == 0]
    if len(good) <= MAX_SOURCES:
        return good
    return [good[i] for i in np.linspace(0, len(good) - 1, MAX_SOURCES).round().astype(int)]


def part_mask(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """(mask of the part, True when it lies on a plain background); a surface is all part."""
    mask = estimate_foreground(image)
    return mask, not mask.all()


def background_fill(image: np.ndarray, part: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An image of plain background: the background's median colour with its own grain."""
    background = image[~part].astype(np.float32)
    median, spread = np.median(background, axis=0), background.std(axis=0)
    return np.clip(median + rng.normal(0, 1, image.shape) * spread, 0, 255).astype(np.uint8)


def blob(shape: tuple[int, int], centre: tuple[int, int], area: float, rng: np.random.Generator) -> np.ndarray:
    """A filled ellipse of about `area` pixels at `centre`, random aspect and angle."""
    aspect = rng.uniform(0.5, 2.0)
    axis_a = np.sqrt(area / np.pi * aspect)
    axis_b = area / (np.pi * axis_a)
    canvas = np.zeros(shape, np.uint8)
    cv2.ellipse(canvas, (int(centre[0]), int(centre[1])), (max(2, int(axis_a)), max(2, int(axis_b))),
                float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return canvas.astype(bool)


def random_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    index = rng.integers(len(ys))
    return int(xs[index]), int(ys[index])


def distinct(image: np.ndarray, part: np.ndarray) -> np.ndarray:
    """The half of the part that differs most from the background's colour (a piece taken from a
    shadow would be invisible once moved or erased)."""
    median = np.median(image[~part].astype(np.float32), axis=0)
    distance = np.linalg.norm(image.astype(np.float32) - median, axis=2)
    return part & (distance >= np.median(distance[part]))


def piece_of(image: np.ndarray, part: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    centre = random_point(distinct(image, part), rng)
    return blob(part.shape, centre, rng.uniform(*PIECE_AREA) * part.sum(), rng) & part


def missing(image: np.ndarray, part: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    region = piece_of(image, part, rng)
    out = image.copy()
    out[region] = background_fill(image, part, rng)[region]
    return out, region


def extra(image: np.ndarray, part: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A piece of the part pasted where there is only background, as near the part as it fits."""
    piece = piece_of(image, part, rng)
    ys, xs = np.nonzero(piece)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop, crop_mask = image[y0:y1, x0:x1], piece[y0:y1, x0:x1]
    free = rectangles_inside(~part, y1 - y0, x1 - x0)
    if not free.any():
        return turned(image, part, rng)
    ty, tx = np.nonzero(free)
    distance = np.hypot(ty - y0, tx - x0)
    near = np.flatnonzero(distance <= np.quantile(distance, 0.2))
    pick = near[rng.integers(len(near))]
    top, left = int(ty[pick]), int(tx[pick])
    out = image.copy()
    region = np.zeros(part.shape, bool)
    region[top:top + (y1 - y0), left:left + (x1 - x0)] = crop_mask
    out[region] = crop[crop_mask]
    return out, region


def turned(image: np.ndarray, part: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(part)
    short = min(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    side = max(8, int(rng.uniform(*TURNED_SIDE) * short))
    inner = rectangles_inside(part, side, side)
    if not inner.any():  # no square fits inside the part: the top-left one of the image
        inner = np.zeros((1, 1), bool)
        inner[0, 0] = True
    x, y = random_point(inner, rng)
    out = image.copy()
    out[y:y + side, x:x + side] = np.rot90(image[y:y + side, x:x + side], k=int(rng.choice([1, 3])))
    region = np.zeros(part.shape, bool)
    region[y:y + side, x:x + side] = True
    changed = np.abs(out.astype(np.int16) - image.astype(np.int16)).max(axis=2) > 0
    return out, region & (changed | part)


def colour(image: np.ndarray, part: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The part beyond a random line (covering COLOUR_AREA of it) darker, brighter or, in colour
    images, with its hue turned."""
    height, width = part.shape
    ys, xs = np.nonzero(part)
    angle = rng.uniform(0, 2 * np.pi)
    projection = (xs - xs.mean()) * np.cos(angle) + (ys - ys.mean()) * np.sin(angle)
    cut = np.quantile(projection, 1 - rng.uniform(*COLOUR_AREA))
    grid_y, grid_x = np.mgrid[:height, :width]
    region = (((grid_x - xs.mean()) * np.cos(angle) + (grid_y - ys.mean()) * np.sin(angle)) > cut) & part
    grey = np.ptp(image.astype(np.int16), axis=2).max() < 8
    if grey or rng.random() < 0.5:
        gain = rng.uniform(0.55, 0.75) if rng.random() < 0.5 else rng.uniform(1.35, 1.6)
        changed = np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    else:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.integers(30, 150))) % 180
        hsv[..., 1] = np.maximum(hsv[..., 1], 90)
        changed = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    out = image.copy()
    out[region] = changed[region]
    return out, region


CHANGES = {"missing": missing, "extra": extra, "turned": turned, "colour": colour}


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.symlink(source.resolve(), target)


def build(split: Split, out_root: Path) -> Path:
    """Write `<out_root>/<set>_logical` (MVTec layout) and return it; an existing one is reused."""
    root = Path(out_root) / f"{split.name}_logical"
    done = root / ".complete"
    if done.exists():
        return root
    for path in split.train_good:
        _link(path, root / "train" / "good" / path.name)
    for path in sources(split):
        _link(path, root / "test" / "good" / path.name)
        image = np.asarray(open_image(path))
        part, on_background = part_mask(image)
        for change in OBJECT_CHANGES if on_background else SURFACE_CHANGES:
            changed, region = CHANGES[change](image, part, rng_for(change, f"{split.name}/{path.name}"))
            if region.sum() < 16:
                continue
            name = f"{path.stem}{DERIVED_SEPARATOR}{change}"
            for folder in (root / "test" / change, root / "ground_truth" / change):
                folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(changed).save(root / "test" / change / f"{name}.png")
            Image.fromarray(region.astype(np.uint8) * 255).save(root / "ground_truth" / change / f"{name}_mask.png")
    done.write_text("made by eval/logical_proxy.py\n")
    return root
