"""The text-map scorer: the trained adapters' per-patch abnormal probability, which scales the other
scorers' distances rather than adding a term of its own.

It fits nothing on references (its adapters are trained offline by `training/`); untrained
adapters are never read."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import checkpoint
from ..encoders import EncodedImages, Encoder
from ..maps.text_map import TextMap
from ..result import EngineError
from .base import grid_size


class TextScorer:
    def __init__(self, encoder: Encoder, preset: dict, checkpoint_dir: Path | None, grid_level: int):
        self.encoder = encoder
        cfg = preset.get("text_map", {})
        self.text_map = TextMap.for_encoder(encoder, cfg, encoder.default_adapter_weights())
        if checkpoint_dir and (checkpoint_dir / checkpoint.ADAPTERS_FILE).is_file():
            checkpoint.load_module(self.text_map, checkpoint_dir / checkpoint.ADAPTERS_FILE)
            self.text_map.trained = True
        self.text_map.eval()
        self.extra_size = self._extra_size(cfg, preset)
        self.weight = float(preset["anomaly_map"].get("text_weight", 1.0))
        self.grid_level = grid_level

    def _extra_size(self, cfg: dict, preset: dict) -> int | None:
        size = cfg.get("extra_image_size")
        if size and self.encoder.resize != "area":
            raise EngineError(f"text_map.extra_image_size needs an encoder that takes any input size; "
                              f"{preset['encoder'].get('model', 'this encoder')} has a fixed one")
        return int(size) if size else None

    @property
    def trained(self) -> bool:
        return self.text_map.trained

    @property
    def view_size(self) -> int | None:
        """The extra input size views are encoded at while the adapters are trained (else None).

        At the bank's resolution alone the per-patch verdict fires on every sharp edge of a regular
        pattern (tire tread) as readily as on a cut (docs/method.md, "Text map")."""
        return self.extra_size if self.text_map.trained else None

    @torch.no_grad()
    def maps(self, encoded: EncodedImages, class_name: str) -> torch.Tensor | None:
        """B x h x w abnormal probability from the prompt ensembles, or None while adapters are untrained;
        with an extra input size, the mean of the maps at both sizes."""
        if not self.text_map.trained:
            return None
        text = self.text_map.text_features(self.encoder, class_name)
        size = grid_size(encoded, self.grid_level)
        maps = [self.text_map(levels, text, size) for levels in (encoded.levels, encoded.text_levels) if levels is not None]
        return sum(maps) / len(maps)

    def scale(self, text_maps: torch.Tensor | None) -> torch.Tensor | None:
        """The factor, 1 to 1 + `anomaly_map.text_weight`, by which the text map scales a distance
        to the references: unit-free, and it can raise a patch the references already find unusual
        but cannot invent a defect where the references match."""
        return None if text_maps is None else 1.0 + self.weight * text_maps
