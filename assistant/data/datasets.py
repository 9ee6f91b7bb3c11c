"""Finding evaluation images on disk: MVTec-layout datasets, plain good/bad folders, the MIT textile set.

Loaders only list files (cheap, deterministic, sorted by name); they do not decode images. Use
`validate(split)` to open every file once through `assistant.images` and fail on the first bad one.
Every problem is a `DatasetError` with a one-line message that names the offending path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from assistant.images import ImageError, load_image, load_mask

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
BAD_FOLDER_NAMES = ("bad", "anomalous", "defect")
TEXTILE_NAMES = frozenset({"conformal-clip-data", "conformal_clip_data", "textile"})
LAYOUTS_HELP = (
    "accepted layouts: MVTec (train/good/, test/<defect>/, optional ground_truth/<defect>/), "
    "a folder of MVTec datasets, a plain folder with good/ and bad/ (or anomalous/, defect/), "
    "or 'conformal-clip-data'"
)


class DatasetError(ValueError):
    """A user-facing, one-line problem with a dataset on disk; the message names the path."""


@dataclass
class Sample:
    """One test image. `label` is 0 for good, 1 for anomalous; `mask_path` is None without a mask."""

    path: Path
    label: int
    defect: str  # "good" or the defect folder name
    mask_path: Path | None = None


@dataclass
class Split:
    """One category: normal reference images and the labelled test set."""

    name: str
    root: Path
    train_good: list[Path]
    test: list[Sample]
    has_masks: bool  # True when every anomalous test sample has a mask (and there is at least one)

    @property
    def defect_types(self) -> list[str]:
        return sorted({s.defect for s in self.test if s.label == 1})

    def counts(self) -> dict[str, int]:
        """{"train_good": n, "test_good": n, "test_anomalous": n}."""
        anomalous = sum(s.label for s in self.test)
        return {"train_good": len(self.train_good), "test_good": len(self.test) - anomalous,
                "test_anomalous": anomalous}


# ---------------------------------------------------------------------------------------- helpers

def is_image_file(path: Path) -> bool:
    """A visible regular file whose suffix (any case) is in IMAGE_SUFFIXES."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def list_images(folder: Path, *, required: bool = True) -> list[Path]:
    """Image files directly inside `folder`, sorted by name; hidden and non-image files are skipped."""
    try:
        images = sorted((p for p in Path(folder).iterdir() if is_image_file(p)), key=lambda p: p.name)
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None
    if required and not images:
        raise DatasetError(f"{folder}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.name)
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None


def _child_dir(folder: Path, *names: str) -> Path | None:
    """The first existing subfolder called one of `names` (exact name first, then any case)."""
    for name in names:
        if (folder / name).is_dir():
            return folder / name
    if not folder.is_dir():
        return None
    lowered = {n.lower() for n in names}
    for sub in _subdirs(folder):
        if sub.name.lower() in lowered:
            return sub
    return None


def _mask_index(folder: Path) -> dict[str, Path]:
    """stem -> mask file; a .png wins when several files share a stem."""
    index: dict[str, Path] = {}
    for path in sorted(list_images(folder, required=False), key=lambda p: p.suffix.lower() != ".png"):
        index.setdefault(path.stem, path)
    return index


def _find_mask(image: Path, index: dict[str, Path]) -> Path | None:
    return index.get(f"{image.stem}_mask") or index.get(image.stem)


def _require_dir(path: Path | None, expected: Path, what: str) -> Path:
    if path is None:
        raise DatasetError(f"{expected}: missing {what}")
    return path


def _root(root) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: not found")
    if not path.is_dir():
        raise DatasetError(f"{path}: is not a folder")
    return path


def _name(path: Path) -> str:
    return path.name or path.resolve().name


# ---------------------------------------------------------------------------------------- loaders

def load_mvtec(root) -> Split:
    """An MVTec AD style category folder.

    root/train/good/*                       normal reference images
    root/test/good/*, root/test/<defect>/*  labelled test images
    root/ground_truth/<defect>/<stem>_mask.png  (or <stem>.png) optional masks

    Other folders (e.g. validation/) and loose files (LICENSE.txt) are ignored. When
    ground_truth/<defect>/ exists, every image of test/<defect>/ must have a mask there; a defect
    without a ground_truth folder is image-level only (mask_path None, has_masks False).
    """
    root = _root(root)
    train_dir = _child_dir(root, "train")
    good_dir = _require_dir(train_dir and _child_dir(train_dir, "good"), root / "train" / "good",
                            "folder of normal training images (MVTec layout: train/good/)")
    test_dir = _require_dir(_child_dir(root, "test"), root / "test",
                            "test folder (MVTec layout: test/good/, test/<defect>/)")
    gt_dir = _child_dir(root, "ground_truth")

    train_good = list_images(good_dir)
    class_dirs = _subdirs(test_dir)
    if not class_dirs:
        raise DatasetError(f"{test_dir}: no class folders (expected test/good/ and test/<defect>/)")
    test: list[Sample] = []
    for class_dir in class_dirs:
        images = list_images(class_dir)
        if class_dir.name.lower() == "good":
            test.extend(Sample(p, 0, "good", None) for p in images)
            continue
        defect_gt = gt_dir and _child_dir(gt_dir, class_dir.name)
        index = _mask_index(defect_gt) if defect_gt else None
        for image in images:
            mask = None
            if index is not None:
                mask = _find_mask(image, index)
                if mask is None:
                    raise DatasetError(f"{image}: anomalous image has no mask in {defect_gt} "
                                       f"(expected {image.stem}_mask.png or {image.stem}.png)")
            test.append(Sample(image, 1, class_dir.name, mask))
    return Split(_name(root), root, train_good, test, _has_masks(test))


def load_folder(root) -> Split:
    """A plain custom layout.

    root/good/*                        normal images
    root/bad/* (or anomalous/, defect/) anomalous images (defect = that folder's name)
    root/masks/<stem>_mask.png or <stem>.png   optional masks for the anomalous images
    root/train/* (or root/train/good/*)         optional normal reference images

    With root/train/, train_good comes from there and every good/ image is a test image. Without
    it the good images are split deterministically: the first half by sorted name (rounded up)
    becomes train_good, the rest are test "good" samples (at least 2 good images are needed). If
    masks/ exists every anomalous image must have a mask in it.
    """
    root = _root(root)
    good_dir = _require_dir(_child_dir(root, "good"), root / "good", "folder of normal images (good/)")
    bad_dirs = [d for d in (_child_dir(root, n) for n in BAD_FOLDER_NAMES) if d is not None]
    if not bad_dirs:
        raise DatasetError(f"{root / 'bad'}: missing folder of anomalous images (bad/, anomalous/ or defect/)")
    good = list_images(good_dir)
    train_dir = _child_dir(root, "train")
    if train_dir is not None:
        train_good = list_images(_child_dir(train_dir, "good") or train_dir)
        test_good = good
    else:
        if len(good) < 2:
            raise DatasetError(f"{good_dir}: need at least 2 good images to split into references and "
                               "test images (or add a train/ folder)")
        half = (len(good) + 1) // 2
        train_good, test_good = good[:half], good[half:]
    test = [Sample(p, 0, "good", None) for p in test_good]
    masks_dir = _child_dir(root, "masks")
    index = _mask_index(masks_dir) if masks_dir else None
    for bad_dir in bad_dirs:
        for image in list_images(bad_dir):
            mask = None
            if index is not None:
                mask = _find_mask(image, index)
                if mask is None:
                    raise DatasetError(f"{image}: anomalous image has no mask in {masks_dir} "
                                       f"(expected {image.stem}_mask.png or {image.stem}.png)")
            test.append(Sample(image, 1, bad_dir.name, mask))
    return Split(_name(root), root, train_good, test, _has_masks(test))


def load_conformal_textile(n_test_per_class: int = 100) -> Split:
    """The MIT simulated textile set from the `conformal-clip-data` package (image-level only).

    Test: the first `n_test_per_class` nominal ("good"), local ("local") and global ("global")
    images by sorted name; train_good: the remaining nominal images. File names repeat across the
    three folders (textile_0001.jpg exists in each), so key results by path, not by name.
    """
    try:
        import conformal_clip_data as ccd
    except ImportError:
        raise DatasetError("conformal-clip-data: package not installed; run `pip install conformal-clip-data`") from None
    if n_test_per_class < 1:
        raise DatasetError(f"conformal-clip-data: n_test_per_class must be at least 1, got {n_test_per_class}")
    nominal = list_images(Path(ccd.nominal_dir()))
    local = list_images(Path(ccd.local_dir()))
    global_ = list_images(Path(ccd.global_dir()))
    n = n_test_per_class
    if len(nominal) <= n:
        raise DatasetError(f"{ccd.nominal_dir()}: only {len(nominal)} nominal images; need more than {n}")
    for folder, images in ((ccd.local_dir(), local), (ccd.global_dir(), global_)):
        if len(images) < n:
            raise DatasetError(f"{folder}: only {len(images)} images; need {n}")
    test = [Sample(p, 0, "good", None) for p in nominal[:n]]
    test += [Sample(p, 1, "local", None) for p in local[:n]]
    test += [Sample(p, 1, "global", None) for p in global_[:n]]
    return Split("textile", Path(ccd.nominal_dir()).parent, nominal[n:], test, False)


def _has_masks(test: list[Sample]) -> bool:
    anomalous = [s for s in test if s.label == 1]
    return bool(anomalous) and all(s.mask_path is not None for s in anomalous)


# ---------------------------------------------------------------------------------------- discovery

def _layout(path: Path) -> str | None:
    """"folder", "mvtec" or None, judged from the folder names only."""
    if _child_dir(path, "good") or any(_child_dir(path, n) for n in BAD_FOLDER_NAMES):
        return "folder"
    if _child_dir(path, "train") and _child_dir(path, "test"):
        return "mvtec"
    return None


def _load(path: Path, layout: str | None) -> Split:
    return load_folder(path) if layout == "folder" else load_mvtec(path)


def _wanted(categories) -> list[str] | None:
    if categories is None:
        return None
    if isinstance(categories, str):
        categories = [c for c in categories.split(",")]
    names = [str(c).strip() for c in categories if str(c).strip()]
    return list(dict.fromkeys(names)) or None


def _check_known(wanted: list[str] | None, available: Iterable[str], where) -> None:
    available = list(available)
    unknown = [c for c in wanted or [] if c not in available]
    if unknown:
        raise DatasetError(f"{where}: unknown categor{'ies' if len(unknown) > 1 else 'y'} "
                           f"{', '.join(unknown)}; available: {', '.join(available) or 'none'}")


def discover(root, categories=None) -> list[Split]:
    """All categories under ROOT, as Splits sorted by name.

    ROOT may be one MVTec-layout dataset (has train/ and test/), a folder of such datasets (each
    subfolder with train/ and test/, or with good/ and bad/; other entries such as README.md are
    ignored), a plain good/ + bad/ folder (see `load_folder`), or the string "conformal-clip-data"
    (or "textile") for the MIT textile set. `categories` (names or a comma-separated string)
    keeps only those categories; an unknown name is an error that lists the available ones.
    """
    wanted = _wanted(categories)
    if isinstance(root, str) and root.strip().lower() in TEXTILE_NAMES:
        _check_known(wanted, ["textile"], root)
        return [load_conformal_textile()]
    path = _root(root)
    # A single dataset: its own layout decides, so a broken one gets its specific error.
    layout = _layout(path)
    if layout is None and (_child_dir(path, "train") or _child_dir(path, "test")):
        layout = "mvtec"  # train/ without test/ or the reverse: let load_mvtec say what is missing
    if layout is not None:
        _check_known(wanted, [_name(path)], path)
        return [_load(path, layout)]
    candidates = {sub.name: (sub, _layout(sub)) for sub in _subdirs(path)}
    available = [name for name, (_, lay) in candidates.items() if lay is not None]
    if not available:
        raise DatasetError(f"{path}: no dataset found; {LAYOUTS_HELP}")
    if wanted is None:
        return [_load(*candidates[name]) for name in available]
    # A requested subfolder that is not a recognisable dataset gets load_mvtec's specific error.
    _check_known([w for w in wanted if w not in candidates], available, path)
    return [_load(*candidates[name]) for name in sorted(wanted)]


# ---------------------------------------------------------------------------------------- checking

def validate(split: Split) -> Split:
    """Open every image (and mask) of `split` once; raise DatasetError naming the first bad file."""
    for path in split.train_good:
        open_image(path)
    for sample in split.test:
        image = open_image(sample.path)
        if sample.mask_path is not None:
            try:
                load_mask(sample.mask_path, image.size)
            except (ImageError, OSError, ValueError) as exc:
                raise DatasetError(f"{sample.mask_path}: unreadable mask ({_reason(exc, sample.mask_path)})") from None
    return split


def open_image(path: Path):
    """A dataset image through assistant.images; a bad file is a DatasetError naming its path."""
    try:
        return load_image(path)
    except ImageError as exc:
        raise DatasetError(f"{path}: unreadable image ({_reason(exc, path)})") from None


def _reason(exc: Exception, path: Path) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    for prefix in (f"{path}: ", f"{Path(path).name}: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text
