"""The one interface every vision encoder offers: 4 levels of patch features and a global embedding."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# What runs the embedded encoder's backbone: torch (the reference), ONNX Runtime in float32 or INT8,
# or OpenVINO in float32 (all three from one ONNX export).
BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")


@dataclass
class EncodedImages:
    levels: list[torch.Tensor]  # 4 tensors, each B x C_l x h_l x w_l
    embedding: torch.Tensor  # B x D global image embedding (L2-normalised)
    text_levels: list[torch.Tensor] | None = None  # levels at the text map's extra input size, if it has one
    colour: np.ndarray | None = None  # B x 19 x 3 colour quantiles of the source photos (maps.colour_stats), if read


class Encoder(torch.nn.Module):
    """Base class: subclasses set the attributes below and implement `encode` and `encode_text`."""

    image_size: int
    level_dims: list[int]
    embed_dim: int
    text_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    resize: str = "square"  # "square", or "area" for encoders that accept any input shape (CNNs)

    def input_size(self, image: Image.Image, image_size: int | None = None) -> tuple[int, int]:
        """(width, height) the encoder sees an image at.

        "square" squashes to image_size x image_size (a centre crop would hide defects at the
        borders; references are squashed the same way, so patches stay comparable). "area" keeps
        the aspect ratio at about image_size^2 pixels, in multiples of the stride 32: long thin
        parts and crops keep round defects round. `image_size` overrides the encoder's own.
        """
        side = image_size or self.image_size
        if self.resize == "square":
            return side, side
        width, height = image.size
        scale = side / math.sqrt(width * height)
        return max(32, round(width * scale / 32) * 32), max(32, round(height * scale / 32) * 32)

    def preprocess(self, images: list[Image.Image], image_size: int | None = None) -> torch.Tensor:
        """RGB PIL images that share one input size -> normalised B x 3 x H x W tensor."""
        sizes = {self.input_size(image, image_size) for image in images}
        if len(sizes) != 1:
            raise ValueError(f"a batch must share one input size, got {sorted(sizes)}: encode the images separately")
        size = sizes.pop()
        arrays = [np.asarray(image.convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32) for image in images]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((batch - mean) / std).to(self.device)

    @property
    def device(self) -> torch.device:
        # An encoder whose backbone runs outside torch (ONNX Runtime) may hold no parameters: CPU.
        parameter = next(self.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def encode(self, pixels: torch.Tensor) -> EncodedImages:
        raise NotImplementedError

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """N texts -> N x text_dim L2-normalised embeddings."""
        raise NotImplementedError

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image], image_size: int | None = None) -> EncodedImages:
        return self.encode(self.preprocess(images, image_size))

    def default_adapter_weights(self) -> list[torch.Tensor] | None:
        """Per-level (text_dim x C_l) matrices that already map patches into text space, if the
        encoder has them (CLIP's own projection); None means adapters start untrained."""
        return None
