"""Vision encoders: image -> 4 levels of patch features + a global embedding, and matching text features."""
from __future__ import annotations

from .base import EncodedImages, Encoder


def create_encoder(cfg: dict) -> Encoder:
    """Small factory over the encoder section of a preset (see assistant/presets/*.json)."""
    kind = cfg.get("kind", "embedded")
    if kind == "embedded":
        from .embedded import EmbeddedEncoder

        return EmbeddedEncoder(cfg.get("model", "tf_efficientnet_lite0"), cfg.get("image_size", 320),
                               resize=cfg.get("resize", "square"))
    if kind == "open_clip":
        from .openclip import OpenClipEncoder

        return OpenClipEncoder(cfg["model"], cfg.get("pretrained"), cfg.get("blocks"), cfg.get("image_size"),
                               cfg.get("device", "cpu"))
    raise ValueError(f"unknown encoder kind {kind!r}; use 'embedded' or 'open_clip'")


__all__ = ["EncodedImages", "Encoder", "create_encoder"]
