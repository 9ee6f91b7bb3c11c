"""Surface texture map: how far the texture around each place (the channel mean and spread of one
feature level over a window of cells) is from the nearest window of the references.

A zone finished differently (a magnetic tile ground unevenly) shows in no single 8-16 px patch,
since each patch looks like some patch of the reference; it shows in the statistics of a wider
window. The engine adds it to the map, not to the score (docs/method.md, "Texture map":
magnetic-tile pixel AUROC 66.9 without it, 71.6 with it, image AUROC unchanged)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .memory_bank import near_mask, random_subset


def window_stats(level: torch.Tensor, window: int) -> torch.Tensor:
    """B x C x h x w -> B x 2C x h x w: channel mean and spread over the window centred on each cell."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"texture window must be an odd number of cells, got {window}")
    feature = level.float()
    pad = window // 2
    mean = F.avg_pool2d(feature, window, 1, pad, count_include_pad=False)
    square = F.avg_pool2d(feature * feature, window, 1, pad, count_include_pad=False)
    return torch.cat([mean, (square - mean * mean).clamp_min(0).sqrt()], dim=1)


def rows(stats: torch.Tensor) -> torch.Tensor:
    """B x D x h x w -> (B*h*w) x D."""
    return stats.permute(0, 2, 3, 1).reshape(-1, stats.shape[1])


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, block: int = 1 << 24) -> torch.Tensor:
    """Euclidean distance of each query row to its nearest bank row, in blocks of queries so no
    distance matrix exceeds `block` entries."""
    per_block = max(1, block // max(1, bank.shape[0]))
    return torch.cat([torch.cdist(part, bank).min(dim=1).values for part in queries.split(per_block)])


class TextureBank:
    """Window statistics of the reference views, each channel scaled by its spread over the bank.

    Distances are in units of the references' own texture variation: the mean distance from a
    window of an unaugmented reference to the nearest window of the same image at least half a
    window away. One reference then sets its own scale, as the one-reference texture term does.
    Neighbouring windows share all but one row or column of cells, so a random subset of
    `max_windows` loses little and bounds the query time with many references."""

    def __init__(self, level: int, window: int, max_windows: int = 16_384, query_stride: int = 2):
        self.level = level
        self.window = window
        self.max_windows = max_windows
        self.query_stride = query_stride
        self.scale = torch.ones(1)
        self.bank = torch.zeros(0, 1)
        self.unit = 1.0

    def fit(self, views: list[list[torch.Tensor]], originals: list[list[torch.Tensor]]) -> "TextureBank":
        """`views`: encoded levels of every (augmented) reference view; `originals`: the unaugmented ones."""
        bank = self._windows(views)
        self.scale = bank.std(dim=0) + 1e-6
        self.bank = bank / self.scale
        spreads = [self._self_spread(original[self.level]) for original in originals]
        finite = [s for s in spreads if math.isfinite(s)]
        self.unit = max(sum(finite) / len(finite), 1e-6) if finite else 1.0
        return self

    def state(self, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
        return ({f"{prefix}scale": self.scale, f"{prefix}bank": self.bank},
                {"level": self.level, "window": self.window, "max_windows": self.max_windows,
                 "query_stride": self.query_stride, "unit": self.unit})

    @classmethod
    def restore(cls, tensors: dict[str, torch.Tensor], meta: dict, prefix: str, device="cpu") -> "TextureBank":
        texture = cls(int(meta["level"]), int(meta["window"]), int(meta["max_windows"]), int(meta["query_stride"]))
        texture.scale, texture.bank = tensors[f"{prefix}scale"].to(device), tensors[f"{prefix}bank"].to(device)
        texture.unit = float(meta["unit"])
        return texture

    def _windows(self, views: list[list[torch.Tensor]]) -> torch.Tensor:
        bank = torch.cat([rows(window_stats(view[self.level], self.window)) for view in views])
        return random_subset(bank, self.max_windows)

    def _self_spread(self, level: torch.Tensor) -> float:
        stats = window_stats(level, self.window)
        height, width = stats.shape[-2:]
        radius = min(self.window // 2, max(height, width) // 2)
        own = rows(stats) / self.scale
        distances = torch.cdist(own, own).masked_fill_(near_mask(height, width, radius), float("inf"))
        nearest = distances.min(dim=1).values
        nearest = nearest[torch.isfinite(nearest)]
        return float(nearest.mean()) if nearest.numel() else float("inf")

    def distance_maps(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """B x h' x w' distance of windows to the nearest reference window, in units of `unit`, on
        every `query_stride`-th cell: windows this wide change little from one cell to the next,
        and the engine upsamples the map anyway."""
        stats = window_stats(levels[self.level], self.window)[..., ::self.query_stride, ::self.query_stride]
        batch, _, height, width = stats.shape
        nearest = nearest_distance(rows(stats) / self.scale, self.bank)
        return nearest.reshape(batch, height, width) / self.unit
