"""The trainable composition: frozen encoder -> text-map adapters (focal + dice on synthetic masks)
-> bridge (image projection + prompt learner) -> LLM with LoRA (CE on answer tokens).

What the bridge sees must match inference, where `Assistant` feeds `detection.anomaly_map` (the
smoothed fused map) to the prompt learner. In zero-shot that map *is* the smoothed text map, so at
training time the bridge gets the model's own text map (detached, smoothed like the engine does);
for every other sample it gets the Gaussian-blurred synthetic mask at a random gain instead, which
teaches a clean map -> answer link early on (while adapters are still poor) and covers the larger
value range of few-shot maps. The choice is a function of the sample index (reproducible).
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from assistant import checkpoint
from assistant.config import load_preset
from assistant.encoders import create_encoder
from assistant.llm.bridge import Bridge
from assistant.maps.text_map import TextMap
from training.losses import LossWeights, map_losses, total_loss

TRAINABLE_PARTS = ("adapters", "prompt_learner", "projection", "lora")
BRIDGE_MAP_MODES = ("mix", "text", "mask")


def parse_trainable(text: str, use_llm: bool) -> set[str]:
    parts = {p.strip() for p in str(text).split(",") if p.strip()}
    unknown = parts - set(TRAINABLE_PARTS)
    if unknown or not parts:
        raise ValueError(f"--trainable: choose from {','.join(TRAINABLE_PARTS)}, got {text!r}")
    if not use_llm:
        parts &= {"adapters"}
        if not parts:
            raise ValueError("--no-llm trains only the text-map adapters: include 'adapters' in --trainable")
    return parts


def gaussian_blur(batch: torch.Tensor, sigma: float) -> torch.Tensor:
    """B x H x W Gaussian blur (reflect padding), sigma in pixels; like the engine's `smooth`."""
    if sigma <= 0:
        return batch
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=batch.dtype, device=batch.device)
    kernel = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    out = batch[:, None]
    pad = min(radius, batch.shape[-1] - 1, batch.shape[-2] - 1)
    if pad < radius:
        kernel = kernel[radius - pad:radius + pad + 1]
        kernel = kernel / kernel.sum()
    out = F.pad(out, (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    out = F.conv2d(out, kernel.view(1, 1, -1, 1))
    return out[:, 0]


class TrainableAssistant(torch.nn.Module):
    def __init__(self, preset: str | dict = "embedded", trainable: set[str] | None = None, use_llm: bool = True,
                 image_size: int | None = None, loss_weights: LossWeights | None = None, llm_overrides: dict | None = None,
                 bridge_map: str = "mix"):
        super().__init__()
        self.preset = copy.deepcopy(load_preset(preset) if isinstance(preset, str) else preset)
        if image_size:
            self.preset["encoder"]["image_size"] = int(image_size)
        self.use_llm = use_llm
        self.trainable = set(trainable if trainable is not None else TRAINABLE_PARTS)
        self.weights = loss_weights or LossWeights()
        if bridge_map not in BRIDGE_MAP_MODES:
            raise ValueError(f"bridge_map must be one of {BRIDGE_MAP_MODES}")
        self.bridge_map = bridge_map
        map_cfg = self.preset["anomaly_map"]
        self.sigma = float(map_cfg.get("sigma", 2.0))

        self.encoder = create_encoder(self.preset["encoder"])
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        # Training input is square (image_size x image_size); maps live on the stride-8 grid like the engine's.
        self.map_size = self.encoder.image_size // 8
        # Fresh (random) adapters: the embedded encoder has no projection into text space to start from.
        self.text_map = TextMap.for_encoder(self.encoder, self.preset.get("text_map", {}), None)
        self.text_map.requires_grad_("adapters" in self.trainable)

        self.llm = self.tokenizer = self.bridge = None
        if use_llm:
            from assistant.llm import LLMConfig, add_lora, load_llm

            self.llm_cfg = LLMConfig.from_dict({**self.preset.get("llm", {}), **(llm_overrides or {})})
            llm, self.tokenizer = load_llm(self.llm_cfg, device="cpu")
            llm.requires_grad_(False)
            # LoRA is always attached (the shipped folder must carry one); frozen unless 'lora' is trainable.
            self.llm = add_lora(llm, self.llm_cfg, for_training="lora" in self.trainable)
            if "lora" not in self.trainable:
                self.llm.requires_grad_(False)
            hidden = self.llm.get_input_embeddings().weight.shape[1]
            self.bridge = Bridge(self.encoder.embed_dim, hidden, **self.preset.get("bridge", {}))
            self.bridge.image_projection.requires_grad_("projection" in self.trainable)
            self.bridge.prompt_learner.requires_grad_("prompt_learner" in self.trainable)

    # -- parts ------------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: BatchNorm statistics stay ImageNet's
        return self

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def text_features(self, class_name: str) -> torch.Tensor:
        return self.text_map.text_features(self.encoder, class_name)

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, pixels: torch.Tensor, mask: torch.Tensor, class_names: list[str], indices: list[int],
                chats: list | None = None) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            encoded = self.encoder.encode(pixels)
        levels = [level.float() for level in encoded.levels]
        logits: list[list[torch.Tensor]] = [[] for _ in self.text_map.levels]
        for b, name in enumerate(class_names):  # per sample: a batch may mix classes
            text = self.text_features(name).to(pixels.device)
            for slot, level_logits in enumerate(self.text_map.level_logits([lv[b:b + 1] for lv in levels], text)):
                logits[slot].append(level_logits)
        level_logits = [torch.cat(parts) for parts in logits]
        focal, dice = map_losses(level_logits, mask)
        terms = {"focal": focal, "dice": dice}
        if self.use_llm and chats is not None:
            terms["ce"] = self._lm_loss(encoded.embedding, level_logits, mask, indices, chats)
        terms["total"] = total_loss(terms, self.weights)
        return terms

    def bridge_maps(self, level_logits: list[torch.Tensor], mask: torch.Tensor, indices: list[int]) -> torch.Tensor:
        size = (self.map_size, self.map_size)
        with torch.no_grad():
            text = torch.stack([F.interpolate(l.float().softmax(1)[:, 1:2], size=size, mode="bilinear",
                                              align_corners=False)[:, 0] for l in level_logits]).mean(0)
            text = gaussian_blur(text, self.sigma)
            small = F.interpolate(mask[:, None].float(), size=size, mode="area")[:, 0]
            gains = torch.tensor([0.6 + 0.8 * ((i * 7919) % 101) / 100 for i in indices], device=mask.device)
            blurred = gaussian_blur(small, self.sigma / 2)
            peak = blurred.flatten(1).amax(1).clamp(min=1e-6)
            from_mask = blurred / peak[:, None, None] * gains[:, None, None]
            if self.bridge_map == "text":
                return text
            if self.bridge_map == "mask":
                return from_mask
            use_mask = torch.tensor([i % 2 == 1 for i in indices], device=mask.device)[:, None, None]
            return torch.where(use_mask, from_mask, text)

    def _lm_loss(self, embedding, level_logits, mask, indices, chats) -> torch.Tensor:
        from assistant.llm.chat import IGNORE_INDEX, build_inputs

        visual = self.bridge(embedding.float(), self.bridge_maps(level_logits, mask, indices))
        pieces = [build_inputs(self.llm, self.tokenizer, chat.system, chat.history, chat.message, visual[b:b + 1],
                               answer=chat.answer) for b, chat in enumerate(chats)]
        length = max(p.inputs_embeds.shape[1] for p in pieces)
        embeds, attention, labels = [], [], []
        for p in pieces:
            pad = length - p.inputs_embeds.shape[1]
            embeds.append(F.pad(p.inputs_embeds, (0, 0, 0, pad)))
            attention.append(F.pad(p.attention_mask, (0, pad), value=0))
            labels.append(F.pad(p.labels, (0, pad), value=IGNORE_INDEX))
        out = self.llm(inputs_embeds=torch.cat(embeds), attention_mask=torch.cat(attention), labels=torch.cat(labels))
        return out.loss

    # -- weights in/out ---------------------------------------------------------------------------
    def save_weights(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint.save_module(self.text_map, folder / checkpoint.ADAPTERS_FILE,
                               {"encoder": self.preset["encoder"]["model"], "image_size": self.preset["encoder"]["image_size"]})
        if self.use_llm:
            from assistant.llm import save_lora

            checkpoint.save_module(self.bridge, folder / checkpoint.BRIDGE_FILE)
            save_lora(self.llm, folder / checkpoint.LORA_DIR)

    def load_weights(self, folder: Path, strict: bool = True) -> list[str]:
        """Load whichever of adapters / bridge / lora exist in `folder`; returns what was loaded."""
        folder = Path(folder)
        loaded = []
        if (folder / checkpoint.ADAPTERS_FILE).is_file():
            checkpoint.load_module(self.text_map, folder / checkpoint.ADAPTERS_FILE)
            loaded.append("adapters")
        if self.use_llm and (folder / checkpoint.BRIDGE_FILE).is_file():
            checkpoint.load_module(self.bridge, folder / checkpoint.BRIDGE_FILE)
            loaded.append("bridge")
        lora_file = folder / checkpoint.LORA_DIR / "adapter_model.safetensors"
        if self.use_llm and lora_file.is_file():
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            result = set_peft_model_state_dict(self.llm, load_file(str(lora_file)))
            unexpected = getattr(result, "unexpected_keys", [])
            if strict and unexpected:
                raise ValueError(f"{lora_file}: LoRA does not fit (unexpected {unexpected[:3]})")
            loaded.append("lora")
        return loaded
