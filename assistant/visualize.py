"""Heatmap overlay with the regions boxed: what the UI shows and the CLIs save."""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw

from .result import Detection


def overlay(image: Image.Image, detection: Detection, alpha: float = 0.45) -> Image.Image:
    """The image with the anomaly map as a colour layer (blue = normal, red = above threshold)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    scaled = np.clip(detection.anomaly_map / max(2.0 * detection.threshold, 1e-6), 0.0, 1.0)
    colours = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1].astype(np.float32)
    blended = Image.fromarray(((1 - alpha) * rgb + alpha * colours).astype(np.uint8))
    draw = ImageDraw.Draw(blended)
    width = max(2, round(max(image.size) / 250))
    for region in detection.regions:
        draw.rectangle(region.box, outline=(255, 255, 255), width=width)
        draw.text((region.box[0] + width + 1, region.box[1] + width + 1), region.position, fill=(255, 255, 255))
    return blended


def region_crops(image: Image.Image, detection: Detection, limit: int = 5, context: float = 0.5,
                 min_side: int = 96, max_side: int = 1024) -> list[tuple[Image.Image, str]]:
    """Each region at the image's own resolution, with `context` x its size around it and outlined:
    on a large image the overlay is shrunk to fit a screen, and a defect of a few pixels shows only
    here. A crop larger than `max_side` is shrunk to it; captions give position, size and place."""
    crops = []
    for region in detection.regions[:limit]:
        x0, y0, x1, y1 = region.box
        crops.append((outlined_crop(image, region.box, context, min_side, max_side),
                      f"{region.position}: {x1 - x0}x{y1 - y0} px at ({x0}, {y0})"))
    return crops


def outlined_crop(image: Image.Image, box: tuple[int, int, int, int], context: float = 0.5, min_side: int = 96,
                  max_side: int = 1024, colour: tuple[int, int, int] = (255, 40, 40)) -> Image.Image:
    """`box` of `image` with `context` x its size around it, outlined in `colour`."""
    x0, y0, x1, y1 = box
    pad_x = max(context * (x1 - x0), (min_side - (x1 - x0)) / 2, 0)
    pad_y = max(context * (y1 - y0), (min_side - (y1 - y0)) / 2, 0)
    shown = (max(0, round(x0 - pad_x)), max(0, round(y0 - pad_y)),
             min(image.width, round(x1 + pad_x)), min(image.height, round(y1 + pad_y)))
    crop = image.crop(shown).convert("RGB")
    ImageDraw.Draw(crop).rectangle((x0 - shown[0], y0 - shown[1], x1 - shown[0] - 1, y1 - shown[1] - 1),
                                   outline=colour, width=max(1, round(max(crop.size) / 200)))
    if max(crop.size) > max_side:
        crop.thumbnail((max_side, max_side))
    return crop
