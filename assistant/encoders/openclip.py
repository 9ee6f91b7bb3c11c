"""Full scale: any open_clip model (CLIP ViT-L-14-336, ImageBind's ViT-H-14 tower, ...)."""
from __future__ import annotations

from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from .base import EncodedImages, Encoder


def evenly_spaced_blocks(depth: int, count: int = 4) -> list[int]:
    """E.g. depth 32 -> [7, 15, 23, 31]: the last block of each quarter."""
    return [depth * (i + 1) // count - 1 for i in range(count)]


class OpenClipEncoder(Encoder):
    def __init__(self, model_name: str, pretrained: str | None = None, blocks: list[int] | None = None,
                 image_size: int | None = None, device: str = "cpu"):
        super().__init__()
        tag, path = _split_pretrained(pretrained)
        model = open_clip.create_model(model_name, pretrained=tag, device=device,
                                       force_image_size=image_size, output_dict=False)
        if path is not None:
            open_clip.load_checkpoint(model, str(path), weights_only=True)
        self.model = model.eval()
        visual = model.visual
        if not hasattr(visual, "transformer"):
            raise ValueError(f"{model_name}: only ViT image towers expose patch tokens; pick a ViT model")
        depth = len(visual.transformer.resblocks)
        self.blocks = blocks or evenly_spaced_blocks(depth)
        if len(self.blocks) != 4 or any(not 0 <= b < depth for b in self.blocks):
            raise ValueError(f"blocks must be 4 indices in 0..{depth - 1}, got {self.blocks}")
        self.tokenizer = open_clip.get_tokenizer(model_name)
        size = visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else size
        self.grid = visual.grid_size
        self.mean = tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
        self.std = tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
        width = visual.transformer.width
        self.level_dims = [width] * 4
        self.embed_dim = self.text_dim = model.text_projection.shape[-1] if isinstance(model.text_projection, torch.Tensor) else model.text_projection.out_features
        self._taps: list[torch.Tensor] = []
        for index in self.blocks:
            visual.transformer.resblocks[index].register_forward_hook(self._tap)

    def _tap(self, module, inputs, output):
        self._taps.append(output)

    def encode(self, pixels: torch.Tensor) -> EncodedImages:
        self._taps = []
        embedding = self.model.encode_image(pixels)
        levels = [self._to_grid(tokens) for tokens in self._taps]
        self._taps = []
        return EncodedImages(levels=levels, embedding=F.normalize(embedding, dim=-1))

    def _to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.model.visual.transformer.batch_first:
            tokens = tokens.transpose(0, 1)
        h, w = self.grid
        patches = tokens[:, -h * w:, :]  # drop the class (and any register) tokens in front
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return F.normalize(self.model.encode_text(tokens), dim=-1).float().cpu()

    def default_adapter_weights(self) -> list[torch.Tensor] | None:
        """CLIP's own ln_post + proj, applied to intermediate tokens, is an honest zero-shot start."""
        proj = self.model.visual.proj
        if proj is None:
            return None
        return [proj.detach().t().float().cpu().clone() for _ in range(4)]

    def adapter_input_norm(self) -> torch.nn.Module:
        return self.model.visual.ln_post


def _split_pretrained(pretrained: str | None) -> tuple[str | None, Path | None]:
    """A pretrained value is an open_clip tag ('openai', 'laion2b_s32b_b79k') or a local checkpoint."""
    if not pretrained:
        return None, None
    path = Path(pretrained).expanduser()
    if path.suffix in {".pt", ".pth", ".bin", ".safetensors"} or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"open_clip checkpoint not found: {path}")
        return None, path
    return pretrained, None
