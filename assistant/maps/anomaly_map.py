"""From level maps to one anomaly map, an image score and the regions a person should look at."""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .. import prompts
from ..result import Region


def merge_levels(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Mean of B x h x w level maps after bilinear upsampling to `size`."""
    upsampled = [F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] for m in maps]
    return torch.stack(upsampled).mean(dim=0)


def smooth(batch: torch.Tensor, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a B x H x W map; sigma in pixels of that map."""
    array = batch.detach().float().cpu().numpy()
    if sigma <= 0:
        return array
    return np.stack([cv2.GaussianBlur(m, (0, 0), sigma) for m in array])


def interior_peaks(maps: np.ndarray, border: int) -> np.ndarray:
    """Peak of each B x h x w map over the cells at least `border` cells from every edge (the whole
    map where that leaves nothing)."""
    height, width = maps.shape[-2:]
    if border > 0 and height > 2 * border and width > 2 * border:
        maps = maps[:, border:height - border, border:width - border]
    return maps.reshape(len(maps), -1).max(axis=1)


def to_image_size(anomaly_map: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(anomaly_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def position_word(cx: float, cy: float, width: int, height: int) -> str:
    grid = prompts.position_grid()
    row = min(2, int(3 * cy / max(height, 1)))
    col = min(2, int(3 * cx / max(width, 1)))
    return grid[row][col]


def whole_image_region(anomaly_map: np.ndarray) -> Region:
    """The whole image as one region, for a part whose texture or tone changed everywhere: the
    texture statistics crossed the threshold but no single area of the map did."""
    height, width = anomaly_map.shape
    return Region(box=(0, 0, width, height), position=prompts.whole_position(), area_fraction=1.0,
                  peak=float(anomaly_map.max()))


def find_regions(anomaly_map: np.ndarray, threshold: float, max_regions: int = 5,
                 min_area_fraction: float = 1e-4) -> list[Region]:
    """Connected areas above `threshold`, largest peak first."""
    height, width = anomaly_map.shape
    above = (anomaly_map > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    regions = []
    for index in range(1, count):
        x, y, w, h, area = stats[index]
        if area < min_area_fraction * height * width:
            continue
        peak = float(anomaly_map[labels == index].max())
        regions.append(Region(box=(int(x), int(y), int(x + w), int(y + h)),
                              position=position_word(x + w / 2, y + h / 2, width, height),
                              area_fraction=float(area) / (height * width), peak=peak))
    regions.sort(key=lambda r: r.peak, reverse=True)
    return regions[:max_regions]


def place_map(small_map: np.ndarray, box: tuple[int, int, int, int], width: int, height: int) -> np.ndarray:
    """The map of a (possibly cropped) view at its place in the full image; outside the crop is 0."""
    x0, y0, x1, y1 = box
    if (x0, y0, x1, y1) == (0, 0, width, height):
        return to_image_size(small_map, width, height)
    full = np.zeros((height, width), np.float32)
    full[y0:y1, x0:x1] = to_image_size(small_map, x1 - x0, y1 - y0)
    return full
