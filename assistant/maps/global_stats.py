"""Image-level texture statistics: how far the per-channel mean and spread of the query's features
are from the references'. Catches global defects (a changed weave, tone or grain) that leave no
single patch unusual and so escape every patch-distance map."""
from __future__ import annotations

import torch


def channel_stats(level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B x C x h x w -> (B x C mean, B x C std)."""
    return level.mean(dim=(2, 3)), level.std(dim=(2, 3))


def tile_stats(level: torch.Tensor, grid: int, border: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B x C x h x w -> (B x T x C mean, B x T x C std) over a grid x grid tiling of the positions,
    after dropping `border` cells on each side (zero padding makes border features unlike the rest)."""
    if border:
        level = level[:, :, border:-border, border:-border]
    height, width = level.shape[-2:]
    rows = torch.linspace(0, height, grid + 1).long().tolist()
    cols = torch.linspace(0, width, grid + 1).long().tolist()
    stats = [channel_stats(level[:, :, rows[i]:rows[i + 1], cols[j]:cols[j + 1]].float())
             for i in range(grid) for j in range(grid)]
    return torch.stack([m for m, _ in stats], dim=1), torch.stack([s for _, s in stats], dim=1)


def shift(mean: torch.Tensor, std: torch.Tensor, ref_mean: torch.Tensor, ref_std: torch.Tensor) -> torch.Tensor:
    """Q x C against R x C -> Q x R: mean squared shift of channel mean and spread, in units of the
    reference spread."""
    scale = ref_std[None] ** 2 + 1e-6
    return (((mean[:, None] - ref_mean[None]) ** 2 + (std[:, None] - ref_std[None]) ** 2) / scale).mean(dim=2)


class GlobalStats:
    """Statistics of whole images (grid 1) or of the tiles of a grid x grid tiling.

    Each query tile is matched to the closest reference tile, so a normal tile finds its
    counterpart (same lighting, same place) whichever reference image it is in."""

    def __init__(self, levels: list[int], grid: int = 1, border: int = 0):
        self.levels = levels
        self.grid = grid
        self.border = border
        self.references: list[tuple[torch.Tensor, torch.Tensor]] = []  # per level: (R*T x C mean, R*T x C std)

    def _tiles(self, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tile_stats(level, self.grid, self.border)

    def fit(self, per_reference_levels: list[list[torch.Tensor]]) -> "GlobalStats":
        """One entry per reference image (its unaugmented view): a list of level tensors."""
        self.references = []
        for level in self.levels:
            stats = [self._tiles(view[level]) for view in per_reference_levels]
            self.references.append((torch.cat([m.flatten(0, 1) for m, _ in stats]),
                                    torch.cat([s.flatten(0, 1) for _, s in stats])))
        return self

    def state(self, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {}
        for index, (mean, std) in enumerate(self.references):
            tensors[f"{prefix}{index}.mean"], tensors[f"{prefix}{index}.std"] = mean, std
        return tensors, {"levels": self.levels, "grid": self.grid, "border": self.border}

    @classmethod
    def restore(cls, tensors: dict[str, torch.Tensor], meta: dict, prefix: str, device="cpu") -> "GlobalStats":
        stats = cls(list(meta["levels"]), int(meta["grid"]), int(meta["border"]))
        stats.references = [(tensors[f"{prefix}{index}.mean"].to(device), tensors[f"{prefix}{index}.std"].to(device))
                            for index in range(len(stats.levels))]
        return stats

    def distance(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """B distances: mean over levels and query tiles of the shift to the closest reference tile."""
        per_level = []
        for level, (ref_mean, ref_std) in zip(self.levels, self.references):
            mean, std = self._tiles(levels[level])
            batch, tiles, channels = mean.shape
            closest = shift(mean.reshape(-1, channels), std.reshape(-1, channels), ref_mean, ref_std).min(dim=1).values
            per_level.append(closest.reshape(batch, tiles).mean(dim=1))
        return torch.stack(per_level).mean(dim=0)

    def tile_spread(self) -> float:
        """Largest shift from a reference tile to its closest other reference tile: with one
        reference image, the only unit of texture variation there is."""
        per_level = []
        for ref_mean, ref_std in self.references:
            if len(ref_mean) < 2:
                raise ValueError("tile spread needs at least two reference tiles (grid >= 2)")
            distances = shift(ref_mean, ref_std, ref_mean, ref_std).fill_diagonal_(float("inf"))
            per_level.append(distances.min(dim=1).values.max())
        return float(torch.stack(per_level).mean())
