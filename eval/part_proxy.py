"""A second object family for development: each image of a surface set placed as a part on a plain
background, turned by any angle and moved, with its mask.

The shared data has one object set (tire, fixed pose), so a setting that only objects get (the crop,
relative maps, turned reference views, the colour term) cannot be chosen on one object and checked on
another, and nothing shows how the object pipeline does on a part that lies at any angle in its
references as well as in its tests. Placing every tile of a surface set (references and tests alike)
on a background turns its real defects into defects of a part seen at any pose: a flat machined part
photographed from above. It is a proxy: the part's silhouette is the photo's rectangle and its light
turns with it. It is reported beside the real sets and never tuned to alone (docs/protocol.md).

Each image gets its own angle (uniform in [0, 360)) and position, drawn from its path, so the set is
the same on every machine. Images keep their names and defect folders, so the dev / holdout split
keeps each with the image it was made from.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from assistant.data import Split
from assistant.data.datasets import open_image
from assistant.foreground import foreground_box
from assistant.images import load_mask

from .perturb import rng_for
from .protocol import PART_SUFFIX


# A dark, slightly grainy mat: the tiles' mean grey levels lie between 60 and 163 (5-95 %), so the
# crop finds every one of them.
BACKGROUND = (24.0, 26.0, 30.0)
BACKGROUND_GRAIN = 2.0
# The canvas side in units of the part's diagonal: room for any angle and a shift of up to half the rest.
CANVAS = 1.3


def placement(width: int, height: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """(2 x 3 matrix placing a width x height photo turned by a random angle somewhere on the
    canvas, canvas side)."""
    side = int(math.ceil(CANVAS * math.hypot(width, height)))
    angle = float(rng.uniform(0.0, 360.0))
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    turned_w, turned_h = width * cos + height * sin, width * sin + height * cos
    room_x, room_y = side - turned_w, side - turned_h
    centre = (side / 2 + rng.uniform(-0.25, 0.25) * room_x, side / 2 + rng.uniform(-0.25, 0.25) * room_y)
    matrix[:, 2] += (centre[0] - width / 2, centre[1] - height / 2)
    return matrix, side


def place(image: np.ndarray, mask: np.ndarray | None, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    """`image` (H x W x 3 uint8) as a part on the background, and its defect mask moved with it."""
    height, width = image.shape[:2]
    rng = rng_for("part", key)
    matrix, side = placement(width, height, rng)
    moved = cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    cover = cv2.warpAffine(np.full((height, width), 255, np.uint8), matrix, (side, side), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT).astype(np.float32)[..., None] / 255.0
    background = np.asarray(BACKGROUND, np.float32) + rng.normal(0.0, BACKGROUND_GRAIN, (side, side, 1))
    out = np.clip(moved * cover + background * (1.0 - cover), 0, 255).astype(np.uint8)
    if mask is None:
        return out, None
    moved_mask = cv2.warpAffine(mask.astype(np.uint8) * 255, matrix, (side, side), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT) > 127
    return out, moved_mask


def applies(split: Split, looked_at: int = 8) -> bool:
    """Only surface sets: the engine treats a set as an object set when the crop finds a part in
    every reference, so a set is a surface when it finds none in one of its first references."""
    return not all(foreground_box(open_image(path)) for path in split.train_good[:looked_at])


def build(split: Split, out_root: Path) -> Path:
    """Write `<out_root>/<set>_part` (MVTec layout: train/good, test/<defect>, ground_truth) and return
    it; an existing complete one is reused."""
    root = Path(out_root) / f"{split.name}{PART_SUFFIX}"
    done = root / ".complete"
    if done.exists():
        return root
    for path in split.train_good:
        _write(path, None, root / "train" / "good", None, split.name)
    for sample in split.test:
        masks = root / "ground_truth" / sample.defect if sample.mask_path else None
        _write(sample.path, sample.mask_path, root / "test" / sample.defect, masks, split.name)
    done.write_text("made by eval/part_proxy.py\n")
    return root


def _write(path: Path, mask_path: Path | None, folder: Path, mask_folder: Path | None, set_name: str) -> None:
    image = np.asarray(open_image(path))
    mask = load_mask(mask_path, (image.shape[1], image.shape[0])) if mask_path else None
    placed, moved = place(image, mask, f"{set_name}/{folder.name}/{path.name}")
    folder.mkdir(parents=True, exist_ok=True)
    # JPEG at quality 95 as the shared sets store their photos; masks stay lossless.
    Image.fromarray(placed).save(folder / f"{path.stem}.jpg", quality=95)
    if moved is not None and mask_folder is not None:
        mask_folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(moved.astype(np.uint8) * 255).save(mask_folder / f"{path.stem}_mask.png")
