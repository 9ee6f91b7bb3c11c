"""Vision-to-language bridge: the global image embedding becomes image token(s), and the prompt
learner turns the anomaly map into prompt embeddings, both in the LLM's hidden size."""
from __future__ import annotations

import torch
import torch.nn.functional as F

MAP_SIDE = 64  # the prompt learner always sees the anomaly map at this size


class ImageProjection(torch.nn.Module):
    def __init__(self, embed_dim: int, hidden_size: int, n_tokens: int = 1):
        super().__init__()
        self.n_tokens = n_tokens
        self.hidden_size = hidden_size
        self.linear = torch.nn.Linear(embed_dim, n_tokens * hidden_size)
        torch.nn.init.normal_(self.linear.weight, std=0.02)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """B x D -> B x n_tokens x hidden."""
        return self.linear(embedding).view(embedding.shape[0], self.n_tokens, self.hidden_size)


class PromptLearner(torch.nn.Module):
    """Anomaly map -> `n_map_prompts` embeddings, after `n_base_prompts` learnable ones."""

    def __init__(self, hidden_size: int, n_map_prompts: int = 8, n_base_prompts: int = 1, channels: int = 32):
        super().__init__()
        self.hidden_size = hidden_size
        self.n_map_prompts = n_map_prompts
        self.base = torch.nn.Parameter(torch.randn(n_base_prompts, hidden_size) * 0.02)
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(1, channels, 3, stride=2, padding=1), torch.nn.GELU(),
            torch.nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1), torch.nn.GELU(),
            torch.nn.Conv2d(channels * 2, channels * 4, 3, stride=2, padding=1), torch.nn.GELU(),
            torch.nn.AdaptiveAvgPool2d((2, 4)),
        )
        self.head = torch.nn.Linear(channels * 4 * 8, n_map_prompts * hidden_size)
        torch.nn.init.normal_(self.head.weight, std=0.02)
        torch.nn.init.zeros_(self.head.bias)

    @property
    def n_prompts(self) -> int:
        return self.base.shape[0] + self.n_map_prompts

    def forward(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """B x H x W map (any size) -> B x n_prompts x hidden."""
        x = F.interpolate(anomaly_map[:, None].float(), size=(MAP_SIDE, MAP_SIDE), mode="bilinear", align_corners=False)
        mapped = self.head(self.conv(x).flatten(1)).view(x.shape[0], self.n_map_prompts, self.hidden_size)
        return torch.cat([self.base.expand(x.shape[0], -1, -1), mapped], dim=1)


class Bridge(torch.nn.Module):
    """Both halves together, so one safetensors file holds the whole bridge."""

    def __init__(self, embed_dim: int, hidden_size: int, n_image_tokens: int = 1, n_map_prompts: int = 8,
                 n_base_prompts: int = 1):
        super().__init__()
        self.image_projection = ImageProjection(embed_dim, hidden_size, n_image_tokens)
        self.prompt_learner = PromptLearner(hidden_size, n_map_prompts, n_base_prompts)
        self.trained = False

    def forward(self, embedding: torch.Tensor, anomaly_map: torch.Tensor) -> torch.Tensor:
        """B x (n_image_tokens + n_prompts) x hidden visual tokens for the LLM."""
        return torch.cat([self.image_projection(embedding), self.prompt_learner(anomaly_map)], dim=1)
