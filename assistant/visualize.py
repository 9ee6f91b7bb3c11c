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
