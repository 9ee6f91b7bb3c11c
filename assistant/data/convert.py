"""Converting common dataset layouts into the MVTec layout that `eval`, `inspect` and profiles read.

Output (one category):  train/good/, test/good/, test/<defect>/, ground_truth/<defect>/<stem>_mask.png.

Every file is planned and checked before anything is written (missing masks, non-images, two files
that would land on one name), then hard-linked (a copy where linking is impossible, or with
`copy=True`) into a new folder beside DST, checked with `discover` + `validate`, and only then moved
to DST. Sources are never moved or changed. A mask that is not a PNG is re-encoded as one.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from assistant.data.datasets import (
    IMAGE_SUFFIXES,
    DatasetError,
    Split,
    _child_dir,
    _find_mask,
    _mask_index,
    _subdirs,
    discover,
    is_image_file,
    validate,
)
from assistant.data.staging import staged_folder
from assistant.images import ImageError, load_mask

LAYOUTS = ("folder-per-class", "image-mask-list", "aebad")
DEFAULT_TEST_FRACTION = 0.2
GOOD_LABELS = frozenset({"good", "normal", "ok", "0"})
ANOMALOUS_LABEL = "anomalous"  # the defect folder for rows labelled "1" or with a mask and no label
DEFECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]*$")
HEADER_NAMES = frozenset({"image", "path", "file", "filename", "image_path"})


@dataclass
class Planned:
    """One output file: where it comes from and where it goes (relative to DST)."""

    source: Path
    target: Path
    is_mask: bool = False


@dataclass
class Conversion:
    """What `convert` did."""

    destination: Path
    splits: list[Split]
    linked: int
    copied: int


# ---------------------------------------------------------------------------------------- rules

def split_good(images: list[Path], test_fraction: float, where) -> tuple[list[Path], list[Path]]:
    """Normal images -> (train, test) by a fixed rule that needs no seed.

    Images are ranked by the SHA-256 of their file name; the first round(n x test_fraction) go to
    test (at least 1, and at least 1 stays in train). The same names give the same split on every
    machine, whatever the order of listing; renaming a file may move it.
    """
    if len(images) < 2:
        raise DatasetError(f"{where}: need at least 2 normal images to fill train/good and test/good, "
                           f"found {len(images)}")
    ranked = sorted(images, key=lambda p: (hashlib.sha256(p.name.encode("utf-8")).hexdigest(), str(p)))
    n_test = min(len(images) - 1, max(1, round(len(images) * test_fraction)))
    return sorted(ranked[n_test:]), sorted(ranked[:n_test])


def check_test_fraction(value: float) -> float:
    if not 0 < value < 1:
        raise DatasetError(f"--test-fraction must be between 0 and 1 (exclusive), got {value}")
    return value


def _mask_target(defect: str, image: Path) -> Path:
    return Path("ground_truth") / defect / f"{image.stem}_mask.png"


def _images_in(folder: Path, nested_ok: bool = False) -> list[Path]:
    """Image files in `folder`, sorted; any other visible file (or sub-folder) is an error."""
    images = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if nested_ok:
                continue
            raise DatasetError(f"{path}: nested folder, not mapped (images must sit directly in {folder.name}/)")
        if not is_image_file(path):
            raise DatasetError(f"{path}: not an image ({', '.join(sorted(IMAGE_SUFFIXES))})")
        images.append(path)
    return images


def _defect_name(value: str, where) -> str:
    if not DEFECT_NAME.match(value) or value in (".", ".."):
        raise DatasetError(f"{where}: defect name {value!r} cannot be a folder name "
                           "(letters, digits, space, '_', '-', '.')")
    return value


# ---------------------------------------------------------------------------------------- layouts

def plan_folder_per_class(src: Path, good_name: str = "good", test_fraction: float = DEFAULT_TEST_FRACTION) -> list[Planned]:
    """SRC/<class>/*: the `good_name` folder holds normal images, every other folder one defect type.

    Normal images are split into train/good and test/good by `split_good`; defect images go to
    test/<class>/ without masks (this layout has none). Loose files in SRC are ignored.
    """
    classes = _subdirs(src)
    if not classes:
        raise DatasetError(f"{src}: no class folders (folder-per-class expects SRC/<class>/ images, "
                           f"one class called {good_name!r})")
    good_dir = _child_dir(src, good_name)
    if good_dir is None:
        raise DatasetError(f"{src}: no {good_name!r} folder of normal images among "
                           f"{', '.join(c.name for c in classes)} (choose it with --good-name)")
    train, test = split_good(_images_in(good_dir), test_fraction, good_dir)
    plan = [Planned(p, Path("train/good") / p.name) for p in train]
    plan += [Planned(p, Path("test/good") / p.name) for p in test]
    for folder in classes:
        if folder == good_dir:
            continue
        defect = _defect_name(folder.name, folder)
        if defect.lower() == "good":
            raise DatasetError(f"{folder}: a folder called good that is not the normal class ({good_name!r}) "
                               "would mix with the normal test images")
        images = _images_in(folder)
        if not images:
            raise DatasetError(f"{folder}: folder has no images")
        plan += [Planned(p, Path("test") / defect / p.name) for p in images]
    return plan


@dataclass
class _Row:
    number: int
    image: Path
    mask: Path | None
    defect: str  # "good" or the defect folder


def plan_image_mask_list(csv_path: Path, test_fraction: float = DEFAULT_TEST_FRACTION) -> list[Planned]:
    """A CSV of `image,mask[,label]` rows; paths are relative to the CSV's folder (or absolute).

    A first row whose first cell is "image" (or path, file) is a header. Without a label a row is
    good when its mask cell is empty, else anomalous (defect "anomalous"). A label of good, normal,
    ok or 0 means good (a mask on such a row must mark nothing and is dropped), 1 means "anomalous",
    any other label is the defect type. Within one defect type either every image has a mask or none
    has. Normal images are split into train/good and test/good by `split_good`.
    """
    rows = _read_rows(csv_path)
    good = [r.image for r in rows if r.defect == "good"]
    train, test = split_good(good, test_fraction, csv_path)
    plan = [Planned(p, Path("train/good") / p.name) for p in train]
    plan += [Planned(p, Path("test/good") / p.name) for p in test]
    by_defect: dict[str, list[_Row]] = {}
    for row in rows:
        if row.defect != "good":
            by_defect.setdefault(row.defect, []).append(row)
    for defect, defect_rows in sorted(by_defect.items()):
        without = [r.number for r in defect_rows if r.mask is None]
        if without and len(without) < len(defect_rows):
            raise DatasetError(f"{csv_path}: defect {defect!r} has masks except on row{'s' if len(without) > 1 else ''} "
                               f"{', '.join(map(str, without[:5]))}{' ...' if len(without) > 5 else ''} "
                               "(the MVTec layout needs a mask for every image of a defect type, or none)")
        for row in defect_rows:
            plan.append(Planned(row.image, Path("test") / defect / row.image.name))
            if row.mask is not None:
                plan.append(Planned(row.mask, _mask_target(defect, row.image), is_mask=True))
    return plan


def _read_rows(csv_path: Path) -> list[_Row]:
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: not found (image-mask-list expects a CSV file of image,mask[,label] rows)")
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            table = [row for row in csv.reader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{csv_path}: cannot read the CSV ({exc})") from None
    numbered = [(n, [cell.strip() for cell in row]) for n, row in enumerate(table, start=1) if any(c.strip() for c in row)]
    if numbered and numbered[0][1][0].lower() in HEADER_NAMES:
        numbered = numbered[1:]
    if not numbered:
        raise DatasetError(f"{csv_path}: no rows (expected image,mask[,label])")
    return [_row(n, cells, csv_path) for n, cells in numbered]


def _row(number: int, cells: list[str], csv_path: Path) -> _Row:
    where = f"{csv_path}, row {number}"
    if len(cells) < 2 or len(cells) > 3:
        raise DatasetError(f"{where}: expected 2 or 3 columns (image,mask[,label]), got {len(cells)}")
    image = _listed_file(cells[0], csv_path, where, "image")
    mask = _listed_file(cells[1], csv_path, where, "mask") if cells[1] else None
    label = cells[2] if len(cells) == 3 else ""
    if not label:
        return _Row(number, image, mask, "good" if mask is None else ANOMALOUS_LABEL)
    if label.lower() in GOOD_LABELS:
        if mask is not None and _marks_something(mask, image, where):
            raise DatasetError(f"{where}: labelled {label!r} but its mask {mask.name} marks a defect")
        return _Row(number, image, None, "good")
    defect = ANOMALOUS_LABEL if label == "1" else _defect_name(label, where)
    if defect.lower() == "good":
        raise DatasetError(f"{where}: label {label!r} is reserved for normal images")
    return _Row(number, image, mask, defect)


def _listed_file(cell: str, csv_path: Path, where: str, what: str) -> Path:
    path = Path(cell).expanduser()
    path = path if path.is_absolute() else csv_path.parent / path
    if not path.is_file():
        raise DatasetError(f"{where}: {what} {cell} not found")
    if not is_image_file(path):
        raise DatasetError(f"{where}: {what} {cell} is not an image ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return path


def _marks_something(mask: Path, image: Path, where: str) -> bool:
    try:
        with Image.open(image) as opened:
            size = opened.size
        return bool(load_mask(mask, size).any())
    except (ImageError, OSError, ValueError) as exc:
        raise DatasetError(f"{where}: cannot read {mask.name} or {image.name} ({exc})") from None


def plan_aebad(src: Path) -> list[Planned]:
    """An AeBAD-S tree (aero-engine blades) as one MVTec category per domain shift.

    Read:   train/good/<shift>/* (or train/good/*), test/<defect or good>/<shift>/*,
            ground_truth/<defect>/<shift>/<image name> (or <stem>_mask.*).
    Write:  DST/<shift>/ for every shift found under test/ (same, background, illumination, view in
            the published set), each with all train/good images as its training set (file names
            prefixed with their train sub-folder, e.g. same_0001.png, so sub-folders cannot collide),
            test/good/ and test/<defect>/ from that shift, and the masks. SRC may be the AeBAD_S
            folder or a folder holding it. AeBAD-V (video frames, no masks) is not mapped.
    """
    root = _child_dir(src, "AeBAD_S") or src
    train_dir, test_dir, gt_dir = (_child_dir(root, name) for name in ("train", "test", "ground_truth"))
    train_good = train_dir and _child_dir(train_dir, "good")
    if train_good is None or test_dir is None or gt_dir is None:
        raise DatasetError(f"{root}: not an AeBAD-S tree (expected train/good/, test/<defect>/<shift>/ and "
                           "ground_truth/<defect>/<shift>/; AeBAD-V is not mapped)")
    train = [(p, p.name) for p in _images_in(train_good, nested_ok=True)]
    for sub in _subdirs(train_good):
        train += [(p, f"{sub.name}_{p.name}") for p in _images_in(sub)]
    if not train:
        raise DatasetError(f"{train_good}: no training images (expected train/good/<shift>/*.png)")
    tests: dict[str, list[tuple[str, Path]]] = {}  # shift -> [(defect, folder)]
    for defect_dir in _subdirs(test_dir):
        if _images_in(defect_dir, nested_ok=True):
            raise DatasetError(f"{defect_dir}: images directly in a defect folder; AeBAD-S keeps them in "
                               "<defect>/<shift>/ folders")
        defect = _defect_name(defect_dir.name, defect_dir)
        for shift_dir in _subdirs(defect_dir):
            tests.setdefault(_defect_name(shift_dir.name, shift_dir), []).append((defect, shift_dir))
    if not tests:
        raise DatasetError(f"{test_dir}: no test/<defect>/<shift>/ folders")
    plan = []
    for shift, folders in sorted(tests.items()):
        plan += [Planned(p, Path(shift) / "train/good" / name) for p, name in train]
        for defect, folder in folders:
            plan += _aebad_test(Path(shift), defect, folder, gt_dir)
    return plan


def _aebad_test(category: Path, defect: str, folder: Path, gt_dir: Path) -> list[Planned]:
    images = _images_in(folder)
    if defect.lower() == "good":
        return [Planned(p, category / "test/good" / p.name) for p in images]
    masks_dir = _child_dir(gt_dir, defect)
    masks_dir = masks_dir and _child_dir(masks_dir, folder.name)
    if masks_dir is None:
        raise DatasetError(f"{gt_dir / defect / folder.name}: missing masks folder for {folder}")
    index = _mask_index(masks_dir)
    plan = []
    for image in images:
        mask = _find_mask(image, index)
        if mask is None:
            raise DatasetError(f"{image}: no mask in {masks_dir} (expected {image.name} or {image.stem}_mask.png)")
        plan.append(Planned(image, category / "test" / defect / image.name))
        plan.append(Planned(mask, category / _mask_target(defect, image), is_mask=True))
    return plan


# ---------------------------------------------------------------------------------------- writing

def convert(src, layout: str, dst, *, copy: bool = False, force: bool = False, good_name: str = "good",
            test_fraction: float = DEFAULT_TEST_FRACTION) -> Conversion:
    """Plan, check, write and validate one conversion; see the module docstring."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    if not src.exists():
        raise DatasetError(f"{src}: not found")
    if layout != "image-mask-list" and not src.is_dir():
        raise DatasetError(f"{src}: is not a folder ({layout} expects a folder)")
    check_test_fraction(test_fraction)
    _check_destination(src, dst, force)
    if layout == "folder-per-class" and _child_dir(src, "train") and _child_dir(src, "test"):
        raise DatasetError(f"{src}: already in the MVTec layout (train/, test/); nothing to convert")
    if layout == "folder-per-class":
        plan = plan_folder_per_class(src, good_name, test_fraction)
    elif layout == "image-mask-list":
        plan = plan_image_mask_list(src, test_fraction)
    else:
        plan = plan_aebad(src)
    _check_collisions(plan)
    return _write(plan, dst, copy)


def _check_destination(src: Path, dst: Path, force: bool) -> None:
    source_root = (src if src.is_dir() else src.parent).resolve()
    target = dst.resolve()
    if target == source_root or source_root in target.parents or target in source_root.parents:
        raise DatasetError(f"{dst}: output folder overlaps the source {source_root}; choose a folder outside it")
    if dst.exists() and not dst.is_dir():
        raise DatasetError(f"{dst}: exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not force:
        raise DatasetError(f"{dst}: exists and is not empty (use --force to replace its contents)")


def _check_collisions(plan: list[Planned]) -> None:
    """Two sources on one target, also when the names differ in case only (case-blind file systems).
    Masks are named after their image's stem, so a.png and a.jpg of one defect collide there."""
    seen: dict[str, Planned] = {}
    for item in plan:
        key = str(item.target).lower()
        if key in seen:
            raise DatasetError(f"{item.source}: collides with {seen[key].source} (both would be {item.target})")
        seen[key] = item


def _write(plan: list[Planned], dst: Path, copy: bool) -> Conversion:
    dst.parent.mkdir(parents=True, exist_ok=True)
    linked = copied = 0
    with staged_folder(dst, "converting") as staging:
        for item in plan:
            target = staging / item.target
            target.parent.mkdir(parents=True, exist_ok=True)
            if item.is_mask and item.source.suffix.lower() != ".png":
                _write_png_mask(item.source, target)
                copied += 1
            elif not copy and _hard_link(item.source, target):
                linked += 1
            else:
                shutil.copy2(item.source, target)
                copied += 1
        _validate(staging, {staging / item.target: item.source for item in plan})
    return Conversion(dst, discover(dst), linked, copied)


def _hard_link(source: Path, target: Path) -> bool:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: copy instead
        return False
    return True


def _write_png_mask(source: Path, target: Path) -> None:
    try:
        with Image.open(source) as mask:
            mask.load()
            mask.save(target, format="PNG")
    except OSError as exc:
        raise DatasetError(f"{source}: mask is not a readable image ({exc})") from None


def _validate(staging: Path, origin: dict[Path, Path]) -> None:
    """discover + validate the written tree; an error names the source file, not the staging copy."""
    try:
        for split in discover(staging):
            validate(split)
    except DatasetError as exc:
        message = str(exc)
        for written, source in origin.items():
            if message.startswith(f"{written}:"):
                message = f"{source}:{message[len(str(written)) + 1:]}"
                break
        raise DatasetError(f"{message} (nothing written)") from None
