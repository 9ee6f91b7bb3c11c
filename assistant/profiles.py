"""Inspection profiles: a product's reference set (memory bank and label-free threshold) and its
described defect examples, built once from good images and saved under a name.

A profile is one folder in `profiles_home()` (`$ANOMALY_ASSISTANT_HOME/profiles`, default the
user's data folder, never the repository):

    profile.json            what it was made from and with (preset and its hash, project version,
                            class, image names and hashes, threshold, date, tiled scale)
    references.safetensors  the bank, texture statistics and held-out scores (`ReferenceSet.state`)
    defects.safetensors     the defect examples' feature blocks, when examples were given

The folder is written beside its place and renamed into it, so a failed or interrupted `create`
leaves the old profile (or none). Loading reads tensors only: no encoder pass over the good images.
A profile made with another preset, preset content or project version is refused, because its
bank holds another encoder's features and its threshold another engine's units.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

FORMAT = 1
PROFILE_FILE = "profile.json"
REFERENCES_FILE = "references.safetensors"
DEFECTS_FILE = "defects.safetensors"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ProfileError(ValueError):
    """A profile that does not exist, is damaged, or was made by another preset or version: one line."""


def profiles_home() -> Path:
    root = os.environ.get("ANOMALY_ASSISTANT_HOME")
    if root:
        return Path(root).expanduser() / "profiles"
    import platformdirs

    return Path(platformdirs.user_data_dir("anomaly-assistant")) / "profiles"


def project_version() -> str:
    try:
        return importlib_metadata.version("anomaly-assistant")
    except importlib_metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def preset_hash(preset: dict) -> str:
    """Content hash of a preset: two presets with one name but other settings make other banks."""
    return hashlib.sha256(json.dumps(preset, sort_keys=True).encode()).hexdigest()[:16]


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name or ""):
        raise ProfileError(f"profile name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def profile_dir(name: str) -> Path:
    """A profile's folder: by name in `profiles_home()`, or a folder path holding a profile.json
    (a cluster's workers, or a colleague, reading a shared copy)."""
    path = Path(name).expanduser()
    if (path / PROFILE_FILE).is_file() and (os.sep in name or name.startswith(".")):
        return path
    return profiles_home() / check_name(name)


def check_free(name: str, replace: bool = False) -> Path:
    """The folder a new profile `name` goes to; an existing one is an error unless `replace`."""
    destination = profile_dir(name)
    if destination.exists() and not replace:
        raise ProfileError(f"profile {name!r} exists ({destination}); delete it first or pass --replace")
    return destination


def names() -> list[str]:
    home = profiles_home()
    if not home.is_dir():
        return []
    return sorted(p.name for p in home.iterdir() if p.is_dir() and (p / PROFILE_FILE).is_file() and NAME_PATTERN.match(p.name))


@dataclass
class Profile:
    """A loaded profile: what `ask`, `inspect`, `eval` and the app use in place of reference images."""

    name: str
    info: dict  # profile.json
    references: object  # reference_set.ReferenceSet or TiledReferences
    defects: object | None  # defect_kinds.DescribedDefects

    @property
    def class_name(self) -> str:
        return self.info["class_name"]


# -- creating ---------------------------------------------------------------------------------------
def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def create(engine, name: str, good: list[Path], class_name: str = "object", defects_dir: Path | None = None,
           replace: bool = False, progress=None) -> dict:
    """Build a profile from the good images `good` (and labelled examples in `defects_dir`) with
    `engine`, save it under `name`, and return its profile.json. Images are read and checked before
    anything is built; an existing profile is kept unless `replace`."""
    from . import tiling
    from .checkpoint import save_json, save_tensors
    from .data.staging import staged_folder
    from .defect_kinds import DescribedDefects, load_examples
    from .images import load_image

    destination = check_free(name, replace)
    if not good:
        raise ProfileError("no good images given")
    examples = load_examples(defects_dir) if defects_dir is not None else None
    images = [load_image(path, name=f"good image {path.name}") for path in good]
    if progress:
        progress(f"building the reference set from {len(images)} good images")
    if tiling.applies(engine, images[0]):
        built = tiling.references(engine, images, class_name, 0, tiling.reference_scale(engine, images))
        reference_set, tiled = built.references, {"scale": built.scale, "n_images": built.n_images, "n_tiles": built.n_tiles}
    else:
        built = reference_set = engine.references(images, class_name)
        tiled = None
    tensors, reference_meta = reference_set.state()
    described = None
    if examples is not None:
        if progress:
            progress(f"describing {len(examples.examples)} defect examples")
        described = DescribedDefects(examples.descriptors(engine, built, class_name), examples.labels)
    info = {
        "format": FORMAT, "name": name, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "project_version": project_version(), "preset": engine.preset.get("name", "?"),
        "preset_hash": preset_hash(engine.preset), "class_name": class_name,
        "good_images": {path.name: file_hash(path) for path in good}, "n_good_images": len(good),
        "threshold": reference_set.threshold, "threshold_estimated": reference_set.threshold_estimated,
        "tiled": tiled, "references": reference_meta,
        "defect_kinds": {kind: described.count(kind) for kind in described.kinds} if described else None,
        "defect_labels": described.labels if described else None,
    }
    destination.parent.mkdir(parents=True, exist_ok=True)
    with staged_folder(destination, "profile") as folder:
        folder.mkdir()
        save_tensors(tensors, folder / REFERENCES_FILE)
        if described is not None:
            save_tensors(defect_tensors(described), folder / DEFECTS_FILE)
        save_json(info, folder / PROFILE_FILE)
    return info


def defect_tensors(described) -> dict:
    import torch

    return {f"{index}.{block}": torch.as_tensor(values)
            for index, blocks in enumerate(described.described) for block, values in blocks.items()}


# -- reading ----------------------------------------------------------------------------------------
def read_info(name: str) -> dict:
    folder = profile_dir(name)
    if not (folder / PROFILE_FILE).is_file():
        known = names()
        raise ProfileError(f"no profile named {name!r} in {profiles_home()}"
                           + (f" (profiles: {', '.join(known)})" if known else " (none yet: make one with 'profile create')"))
    try:
        info = json.loads((folder / PROFILE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"profile {name!r} is damaged: {PROFILE_FILE} is not readable JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT or not isinstance(info.get("references"), dict):
        raise ProfileError(f"profile {name!r} is damaged or of another format: {folder / PROFILE_FILE}")
    return info


def check_compatible(info: dict, preset: dict) -> None:
    """Refuse a profile made by another preset or project version (see the module docstring)."""
    made = f"preset {info.get('preset')!r} ({info.get('preset_hash')}), version {info.get('project_version')}"
    here = f"preset {preset.get('name', '?')!r} ({preset_hash(preset)}), version {project_version()}"
    if made != here:
        raise ProfileError(f"profile {info.get('name')!r} was made with {made}; this run uses {here}: "
                           "make it again with 'profile create' (or run with its preset)")


def load(name: str, engine) -> Profile:
    """The profile `name`, checked against `engine`'s preset, with its tensors on the engine's device."""
    from .defect_kinds import DescribedDefects
    from .reference_set import ReferenceSet, TiledReferences

    info = read_info(name)
    check_compatible(info, engine.preset)
    folder = profile_dir(name)
    device = getattr(engine.encoder, "device", "cpu")
    try:
        reference_set = ReferenceSet.restore(read_tensors(folder / REFERENCES_FILE), info["references"], device)
        defects = None
        if info.get("defect_kinds"):
            described = described_blocks(read_tensors(folder / DEFECTS_FILE))
            defects = DescribedDefects(described, [str(label) for label in info["defect_labels"]])
    except ProfileError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ProfileError(f"profile {name!r} is damaged: {type(exc).__name__}: {exc}") from None
    references = reference_set
    if info.get("tiled"):
        tiled = info["tiled"]
        references = TiledReferences(reference_set, float(tiled["scale"]), int(tiled["n_images"]), int(tiled["n_tiles"]))
    return Profile(name, info, references, defects)


def read_tensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ProfileError(f"profile is damaged: {path.name} is missing ({path.parent})")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ProfileError(f"profile is damaged: {path.name} cannot be read ({exc})") from None


def described_blocks(tensors: dict) -> list[dict]:
    blocks: dict[int, dict] = {}
    for key, value in tensors.items():
        index, block = key.split(".", 1)
        blocks.setdefault(int(index), {})[block] = value.numpy()
    return [blocks[index] for index in sorted(blocks)]


def delete(name: str) -> Path:
    read_info(name)  # a clear error for a name that is not a profile
    folder = profile_dir(name)
    shutil.rmtree(folder)
    return folder
