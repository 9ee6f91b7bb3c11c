"""Losses: focal + dice on the text map's abnormal probability (per level, upsampled to the mask),
and the LLM's cross-entropy on answer tokens. total = a*CE + b*focal + c*dice."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    ce: float = 1.0
    focal: float = 1.0
    dice: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "LossWeights":
        """'1,1,1' -> (ce, focal, dice)."""
        parts = [float(p) for p in str(text).split(",") if p.strip()]
        if len(parts) != 3 or any(p < 0 for p in parts):
            raise ValueError(f"--loss-weights needs three non-negative numbers 'ce,focal,dice', got {text!r}")
        return cls(*parts)


def focal_loss(prob: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """Binary focal loss on probabilities (B x H x W), mean over pixels."""
    prob = prob.clamp(eps, 1.0 - eps)
    p_t = torch.where(target > 0.5, prob, 1.0 - prob)
    return (-((1.0 - p_t) ** gamma) * torch.log(p_t)).mean()


def dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice on the abnormal class, per sample then averaged (all-normal samples count via `smooth`)."""
    dims = tuple(range(1, prob.dim()))
    inter = (prob * target).sum(dims)
    union = prob.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * inter + smooth) / (union + smooth)).mean()


def map_losses(level_logits: list[torch.Tensor], mask: torch.Tensor, gamma: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Focal and dice averaged over levels. `level_logits`: B x 2 x h x w each; `mask`: B x H x W in {0,1}."""
    focal, dice = [], []
    for logits in level_logits:
        prob = F.interpolate(logits.float().softmax(dim=1)[:, 1:2], size=mask.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]
        focal.append(focal_loss(prob, mask, gamma))
        dice.append(dice_loss(prob, mask))
    return torch.stack(focal).mean(), torch.stack(dice).mean()


def total_loss(terms: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """Weighted sum of whichever terms exist (ce is absent with --no-llm)."""
    total = None
    for name in ("ce", "focal", "dice"):
        if name in terms and terms[name] is not None:
            part = getattr(weights, name) * terms[name]
            total = part if total is None else total + part
    if total is None:
        raise ValueError("no loss terms to combine")
    return total
