"""Vision encoders: image -> 4 levels of patch features + a global embedding, and matching text features."""
from __future__ import annotations

from .base import BACKENDS, EncodedImages, Encoder


def create_encoder(cfg: dict) -> Encoder:
    """Small factory over the encoder section of a preset (see assistant/presets/*.json).

    `backend` ("torch" by default, "onnx", "onnx-int8" or "openvino") chooses what runs the embedded encoder's
    backbone; `export_dir` names a folder from `anomaly-assistant export` (else the user's cache).
    """
    kind = cfg.get("kind", "embedded")
    backend = cfg.get("backend", "torch")
    if backend not in BACKENDS:
        raise ValueError(f"unknown encoder backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if kind == "embedded":
        from .embedded import EmbeddedEncoder

        encoder = EmbeddedEncoder(cfg.get("model", "tf_efficientnet_lite0"), cfg.get("image_size", 320),
                                  resize=cfg.get("resize", "square"))
        if backend == "torch":
            return encoder
        from .onnx_backend import use_onnx_backend

        return use_onnx_backend(encoder, backend, cfg.get("export_dir"))
    if backend != "torch":
        raise ValueError(f"encoder backend {backend!r} is only offered for the embedded encoder; {kind!r} runs in torch")
    if kind == "open_clip":
        from .openclip import OpenClipEncoder

        return OpenClipEncoder(cfg["model"], cfg.get("pretrained"), cfg.get("blocks"), cfg.get("image_size"),
                               cfg.get("device", "cpu"))
    raise ValueError(f"unknown encoder kind {kind!r}; use 'embedded' or 'open_clip'")


__all__ = ["BACKENDS", "EncodedImages", "Encoder", "create_encoder"]
