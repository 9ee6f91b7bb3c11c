"""Reference sets: what normal images become once encoded (a memory bank, texture statistics and a
label-free threshold), for one-view scoring (`ReferenceSet`) or for tiles (`TiledReferences`).

Built by `AnomalyEngine.references` (each scorer in `assistant/scorers/` fits its own fields) and
`tiling.references`; saved and restored by profiles (`state` / `restore`), so a set can be used
without the images it was made from.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .maps.global_stats import GlobalStats
from .maps.memory_bank import MemoryBank
from .maps.texture_map import TextureBank


@dataclass
class ReferenceSet:
    """Normal references turned into a memory bank plus a label-free threshold."""

    bank: MemoryBank
    stats: GlobalStats | None
    relative: bool  # maps in units of their own mean level (objects on a plain background)
    n_images: int
    peak_unit: float = 1.0  # highest raw (relative sets: relative) map peak of a held-out normal view
    global_unit: float = 1.0  # texture-statistics unit: largest held-out normal shift (one reference: its tile spread)
    texture_normal: float = 1.0  # shift, in global units, up to which texture counts as normal
    normal_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))  # held-out map peaks / peak_unit
    # Relative sets: what a query map's own mean is floored at before the map is divided by it, a
    # share of the lowest held-out normal map's mean (scorers.bank.MEAN_FLOOR_SHARE).
    mean_floor: float = 1e-6
    threshold: float = 1.0
    texture: TextureBank | None = None  # window statistics of surface references (objects: None)
    colour: np.ndarray | None = None  # objects: the references' mean colour quantiles (scorers.colour)
    colour_unit: float = 1.0  # colour shift, in CIELAB units, that counts as normal
    capture: np.ndarray | None = None  # objects: each reference's background detail (assistant/capture.py)
    fingerprint: str = ""  # what it was built from (images, class, seed): the key caches and profiles use

    @property
    def threshold_estimated(self) -> bool:
        return estimates_threshold(self.relative, self.n_images)

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors and JSON-able settings that `restore` turns back into this set (profiles)."""
        tensors, meta = self.bank.state("bank.")
        tensors["normal_scores"] = torch.as_tensor(np.asarray(self.normal_scores, np.float32))
        for name in ("colour", "capture"):
            if getattr(self, name) is not None:
                tensors[name] = torch.as_tensor(np.asarray(getattr(self, name), np.float32))
        meta.update(relative=self.relative, n_images=self.n_images, peak_unit=self.peak_unit,
                    global_unit=self.global_unit, texture_normal=self.texture_normal, threshold=self.threshold,
                    fingerprint=self.fingerprint, mean_floor=self.mean_floor, colour_unit=self.colour_unit)
        for name, part in (("stats", self.stats), ("texture", self.texture)):
            if part is not None:
                part_tensors, meta[name] = part.state(f"{name}.")
                tensors.update(part_tensors)
        return tensors, meta

    @classmethod
    def restore(cls, tensors: dict[str, torch.Tensor], meta: dict, device="cpu") -> "ReferenceSet":
        return cls(bank=MemoryBank.restore(tensors, meta, "bank.", device),
                   stats=GlobalStats.restore(tensors, meta["stats"], "stats.", device) if "stats" in meta else None,
                   relative=bool(meta["relative"]), n_images=int(meta["n_images"]),
                   peak_unit=float(meta["peak_unit"]), global_unit=float(meta["global_unit"]),
                   texture_normal=float(meta["texture_normal"]), normal_scores=tensors["normal_scores"].numpy(),
                   threshold=float(meta["threshold"]), mean_floor=float(meta.get("mean_floor", 1e-6)),
                   texture=TextureBank.restore(tensors, meta["texture"], "texture.", device) if "texture" in meta else None,
                   colour=tensors["colour"].numpy() if "colour" in tensors else None,
                   colour_unit=float(meta.get("colour_unit", 1.0)),
                   capture=tensors["capture"].numpy() if "capture" in tensors else None,
                   fingerprint=str(meta["fingerprint"]))


def estimates_threshold(relative: bool, n_images: int) -> bool:
    """One reference of a surface: its flipped views show geometry changes but not part-to-part
    changes of tone or finish, so its threshold is a margin on top of them, a guess; a second image
    (leave-one-out) or a relative map (objects, whose flips differ about as much as two photos of
    normal parts) gives a measured one."""
    return n_images == 1 and not relative


@dataclass
class TiledReferences:
    """A reference set made of the tiles of the normal images, and the working scale it was cut at
    (queries are cut at the same scale, so their patches compare with patches of the same size)."""

    references: ReferenceSet
    scale: float
    n_images: int
    n_tiles: int

    @property
    def threshold(self) -> float:
        return self.references.threshold

    @property
    def fingerprint(self) -> str:
        return f"tiles@{self.scale:g}|{self.references.fingerprint}"

    @property
    def threshold_estimated(self) -> bool:
        """One image: its tiles were held out from each other, which shows how its regions differ,
        not how two parts do."""
        return self.n_images == 1


def is_built(references) -> bool:
    """True for a reference set built before (a profile's), False for normal images (or none)."""
    return isinstance(references, (ReferenceSet, TiledReferences))
