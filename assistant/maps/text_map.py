"""Zero-shot map: per-level linear adapters put patch features into the text space, then each patch
is scored by softmax over its similarity to the 'normal' and 'abnormal' prompt ensembles."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import prompts
from ..encoders import Encoder


def standardize_per_image(level: torch.Tensor) -> torch.Tensor:
    """Each channel of each image to zero mean, unit spread over its positions (B x C x h x w).

    The adapters then see how a patch stands out from the rest of its own image rather than what
    the image shows, which is what carries over from the training textures to unseen parts."""
    mean = level.mean(dim=(2, 3), keepdim=True)
    std = level.std(dim=(2, 3), keepdim=True)
    return (level - mean) / (std + 1e-5)


class TextMap(torch.nn.Module):
    def __init__(self, level_dims: list[int], text_dim: int, levels: list[int] | None = None,
                 initial_weights: list[torch.Tensor] | None = None, input_norm: torch.nn.Module | None = None,
                 per_image: bool = False):
        super().__init__()
        self.levels = levels if levels is not None else list(range(len(level_dims)))
        self.per_image = per_image
        self.adapters = torch.nn.ModuleList(torch.nn.Linear(level_dims[l], text_dim, bias=False) for l in self.levels)
        # Honest default: an adapter is 'trained' only when it carries CLIP's own projection or
        # weights loaded from a checkpoint; random adapters are never fused into a decision.
        self.trained = initial_weights is not None
        if initial_weights is not None:
            for adapter, level in zip(self.adapters, self.levels):
                adapter.weight.data.copy_(initial_weights[level])
        self.input_norm = input_norm
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(100.0)))
        self._text_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def for_encoder(cls, encoder: Encoder, cfg: dict, initial_weights: list[torch.Tensor] | None) -> "TextMap":
        """The text map a preset's `text_map` section describes, sized for `encoder`."""
        norm = encoder.adapter_input_norm() if hasattr(encoder, "adapter_input_norm") else None
        return cls(encoder.level_dims, encoder.text_dim, cfg.get("levels"), initial_weights, norm,
                   bool(cfg.get("per_image_standardize", False)))

    def text_features(self, encoder: Encoder, class_name: str) -> torch.Tensor:
        """2 x D: mean normal and mean abnormal prompt embedding (cached per class name)."""
        if class_name not in self._text_cache:
            sentences = prompts.ensemble(class_name)
            rows = [F.normalize(encoder.encode_text(sentences[state]).mean(0), dim=-1) for state in ("normal", "abnormal")]
            self._text_cache[class_name] = torch.stack(rows)
        return self._text_cache[class_name]

    def level_logits(self, levels: list[torch.Tensor], text: torch.Tensor) -> list[torch.Tensor]:
        """Per adapted level, B x 2 x h x w logits (normal, abnormal)."""
        out = []
        for adapter, level in zip(self.adapters, self.levels):
            feature = levels[level].float()
            if self.per_image:
                feature = standardize_per_image(feature)
            feature = feature.permute(0, 2, 3, 1)
            if self.input_norm is not None:
                feature = self.input_norm(feature)
            projected = F.normalize(adapter(feature), dim=-1)
            logits = self.logit_scale.exp().clamp(max=100.0) * projected @ text.to(projected).T
            out.append(logits.permute(0, 3, 1, 2))
        return out

    def forward(self, levels: list[torch.Tensor], text: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """B x H x W abnormal probability, averaged over levels after upsampling to `size`."""
        maps = [F.interpolate(logits.softmax(dim=1)[:, 1:2], size=size, mode="bilinear", align_corners=False)
                for logits in self.level_logits(levels, text)]
        return torch.cat(maps, dim=1).mean(dim=1)
