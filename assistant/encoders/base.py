"""The one interface every vision encoder offers: 4 levels of patch features and a global embedding."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass
class EncodedImages:
    levels: list[torch.Tensor]  # 4 tensors, each B x C_l x h_l x w_l
    embedding: torch.Tensor  # B x D global image embedding (L2-normalised)


class Encoder(torch.nn.Module):
    """Base class: subclasses set the attributes below and implement `encode` and `encode_text`."""

    image_size: int
    level_dims: list[int]
    embed_dim: int
    text_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """RGB PIL images -> normalised B x 3 x S x S tensor.

        Images are squashed to a square rather than centre-cropped: a crop would hide defects at the
        borders, and references go through the same squash, so patches stay comparable.
        """
        size = self.image_size
        arrays = [np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) for image in images]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((batch - mean) / std).to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, pixels: torch.Tensor) -> EncodedImages:
        raise NotImplementedError

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """N texts -> N x text_dim L2-normalised embeddings."""
        raise NotImplementedError

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> EncodedImages:
        return self.encode(self.preprocess(images))

    def default_adapter_weights(self) -> list[torch.Tensor] | None:
        """Per-level (text_dim x C_l) matrices that already map patches into text space, if the
        encoder has them (CLIP's own projection); None means adapters start untrained."""
        return None
