"""Image-level texture statistics: how far the per-channel mean and spread of the query's features
are from the references'. Catches global defects (a changed weave, tone or grain) that leave no
single patch unusual and so escape every patch-distance map."""
from __future__ import annotations

import torch


def channel_stats(level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B x C x h x w -> (B x C mean, B x C std)."""
    return level.mean(dim=(2, 3)), level.std(dim=(2, 3))


class GlobalStats:
    def __init__(self, levels: list[int]):
        self.levels = levels
        self.references: list[tuple[torch.Tensor, torch.Tensor]] = []  # per level: (R x C mean, R x C std)

    def fit(self, per_reference_levels: list[list[torch.Tensor]]) -> "GlobalStats":
        """One entry per reference image (its unaugmented view): a list of level tensors."""
        self.references = []
        for level in self.levels:
            stats = [channel_stats(view[level]) for view in per_reference_levels]
            self.references.append((torch.cat([m for m, _ in stats]), torch.cat([s for _, s in stats])))
        return self

    def distance(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """B distances: mean over levels of the squared shift in mean and spread, in units of the
        reference spread, to the closest reference."""
        per_level = []
        for level, (ref_mean, ref_std) in zip(self.levels, self.references):
            mean, std = channel_stats(levels[level])
            scale = ref_std[None] ** 2 + 1e-6
            shift = ((mean[:, None] - ref_mean[None]) ** 2 + (std[:, None] - ref_std[None]) ** 2) / scale
            per_level.append(shift.mean(dim=2).min(dim=1).values)
        return torch.stack(per_level).mean(dim=0)
