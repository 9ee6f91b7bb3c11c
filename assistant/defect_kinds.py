"""Defect kinds from labelled examples: which of the user's kinds an anomalous region looks like.

The user gives a folder per kind (`defects/<kind>/*.png`), each image optionally with a mask
(`<stem>_mask.png` beside it or in a `masks/` subfolder); without one, the engine's own strongest
region of that image stands in. Every region, the examples' and the query's, is described by up to
four feature blocks (`describe`):

- `crop_level2`, `crop_level3`: the encoder's level-2 and level-3 features of a square crop around
  the region (its box side x (1 + 2 x CROP_MARGIN)), averaged over the region's mask in that crop.
  The crop is encoded at the encoder's full input size, so a 30 px defect is seen at the
  resolution a whole part normally gets; these two carry most of the signal;
- `view_level2`: level-2 features of the whole view (the part) averaged over the mask: context;
- `shape` (exact masks only): log area share of the view, elongation, fill of its box, number of
  components.

A region's distance to a kind is its distance to that kind's nearest example (`KindMatcher`).
Confidence is a softmax over the kinds' distances whose temperature is fitted by leave-one-out on
the examples; the open-set threshold ("none of the kinds you gave me") comes from the examples
too: a quantile of the examples' leave-one-out distances to their own kind. How each constant was
chosen, on which images, and what it measures: docs/method.md, "Defect kinds from labelled
examples".

Pure logic on top of the engine's public API (`prepare`, `encode`, `detect`).
"""
from __future__ import annotations

import hashlib
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from PIL import Image

from .data.datasets import IMAGE_SUFFIXES, is_image_file
from .images import ImageError, load_image
from .result import Detection

MASK_FOLDER = "masks"
MASK_SUFFIX = "_mask"
# Every constant below was chosen on the dev half of the tire and magnetic tile anomalous test images
# (path hash), with ground-truth regions unless said otherwise (docs/method.md, "Defect kinds from labelled examples").
BLOCKS = ("crop_level2", "crop_level3", "view_level2", "shape")
CROP_MARGIN = 0.25  # crop margin per side, in region sides (0.5: open set worse on tire, 3 examples)
CROP_MIN_SIDE = 16  # px: a smaller crop would hold no surroundings at all
CORE_FRACTION = 0.85  # engine regions: 0.7 / 0.92 / 0.97 matched worse (3 examples, both sets)
STD_FLOOR = 0.1  # a shape feature's spread over the examples is floored at this x the median spread
TEMPERATURES = np.geomspace(0.01, 3.0, 49)
ONE_SHOT_TEMPERATURE = 0.15  # one example per kind, nothing to leave out: calibration error 3 / 8 % (0.1: 11 / 4, 0.2: 7 / 17)
OPEN_SET_QUANTILE = 0.8  # dev, 50 seeds: the largest smallest margin over the four open-set targets
# A .zip of examples (the web page's upload) is unpacked only within these bounds: a few hundred
# examples of a dozen kinds are far below them, a zip bomb or a whole dataset is not.
ARCHIVE_MAX_FILES = 2000
ARCHIVE_MAX_BYTES = 1 << 30


class DefectKindError(ValueError):
    """A one-line problem with a folder of defect examples; the message names the path."""


# -- the example folder ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    kind: str
    image: Path
    mask: Path | None  # None: the engine's strongest region of the image is used


def find_examples(root) -> list[Example]:
    """Every example under ROOT (a folder per kind); any malformed entry is a DefectKindError."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DefectKindError(f"{root}: {'not a folder' if root.exists() else 'folder not found'} "
                              "(expected defects/<kind>/*.png)")
    kind_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if not kind_dirs:
        raise DefectKindError(f"{root}: no kind folders (expected {root.name}/<kind>/*.png, one folder per kind of defect)")
    loose = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    if loose:
        raise DefectKindError(f"{loose[0]}: a file beside the kind folders; put each example in the folder of its kind")
    return [example for kind_dir in kind_dirs for example in _kind_examples(kind_dir)]


def _kind_examples(kind_dir: Path) -> list[Example]:
    images, masks = [], {}
    mask_dir = None
    for path in sorted(kind_dir.iterdir(), key=lambda p: p.name):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if path.name != MASK_FOLDER:
                raise DefectKindError(f"{path}: unexpected folder (a kind folder holds images, <stem>{MASK_SUFFIX}.png "
                                      f"masks and an optional {MASK_FOLDER}/ folder)")
            mask_dir = path
        elif not is_image_file(path):
            raise DefectKindError(f"{path}: not an image (expected one of {', '.join(sorted(IMAGE_SUFFIXES))})")
        elif path.stem.endswith(MASK_SUFFIX):
            masks[path.stem[:-len(MASK_SUFFIX)]] = path
        else:
            images.append(path)
    if mask_dir is not None:
        for path in sorted(mask_dir.iterdir(), key=lambda p: p.name):
            if path.name.startswith("."):
                continue
            if not is_image_file(path):
                raise DefectKindError(f"{path}: not a mask image (expected one of {', '.join(sorted(IMAGE_SUFFIXES))})")
            stem = path.stem[:-len(MASK_SUFFIX)] if path.stem.endswith(MASK_SUFFIX) else path.stem
            if stem in masks:
                raise DefectKindError(f"{path}: a second mask for {stem} (another is {masks[stem]})")
            masks[stem] = path
    if not images:
        raise DefectKindError(f"{kind_dir}: no example images for kind {kind_dir.name!r}")
    stems = {image.stem for image in images}
    orphan = next((path for stem, path in sorted(masks.items()) if stem not in stems), None)
    if orphan is not None:
        raise DefectKindError(f"{orphan}: mask without an image of the same name in {kind_dir}")
    return [Example(kind_dir.name, image, masks.get(image.stem)) for image in images]


def load_examples(source) -> "DefectExamples":
    """The examples of a folder per kind, or of a .zip of that folder."""
    source = Path(source).expanduser()
    if source.suffix.lower() == ".zip" and source.is_file():
        return examples_from_archive(source)
    return DefectExamples.from_folder(source)


def examples_from_archive(archive) -> "DefectExamples":
    """The examples in a .zip of the examples folder (`<kind>/*.png`, or the folder itself zipped:
    `defects/<kind>/*.png`), loaded into memory; problems name the archive and the member."""
    archive = Path(archive)
    try:
        with zipfile.ZipFile(archive) as zipped, tempfile.TemporaryDirectory(prefix="defects-") as folder:
            members = _checked_members(zipped, archive.name)
            zipped.extractall(folder, members)
            try:
                return DefectExamples.from_folder(_examples_root(Path(folder)))
            except DefectKindError as exc:
                raise DefectKindError(str(exc).replace(folder, archive.name)) from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DefectKindError(f"{archive.name}: not a readable .zip of defect examples "
                              f"({' '.join(str(exc).split())[:120]})") from None


def _checked_members(zipped: zipfile.ZipFile, name: str) -> list[zipfile.ZipInfo]:
    """The archive's files, refused whole if one would land outside the folder or the bounds are passed."""
    members = [info for info in zipped.infolist() if not info.is_dir() and not _hidden(info.filename)]
    for info in members:
        path = PurePosixPath(info.filename.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or ":" in path.parts[0]:
            raise DefectKindError(f"{name}: member {info.filename!r} would be written outside the examples folder")
    if len(members) > ARCHIVE_MAX_FILES:
        raise DefectKindError(f"{name}: {len(members)} files; at most {ARCHIVE_MAX_FILES} examples and masks are taken")
    if sum(info.file_size for info in members) > ARCHIVE_MAX_BYTES:
        raise DefectKindError(f"{name}: unpacks to more than {ARCHIVE_MAX_BYTES >> 20} MiB")
    if not members:
        raise DefectKindError(f"{name}: the archive holds no files (expected <kind>/*.png, one folder per kind)")
    return members


def _hidden(member: str) -> bool:
    """Finder and Explorer leave these in archives (__MACOSX/, .DS_Store, Thumbs.db)."""
    parts = PurePosixPath(member.replace("\\", "/")).parts
    return any((part.startswith(".") and part not in (".", "..")) or part == "__MACOSX" for part in parts) \
        or parts[-1] == "Thumbs.db"


def _examples_root(folder: Path) -> Path:
    """FOLDER, or its one subfolder when that alone was zipped (it then holds only kind folders)."""
    entries = [path for path in folder.iterdir() if not path.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        inner = [path for path in entries[0].iterdir() if not path.name.startswith(".")]
        if inner and all(path.is_dir() and path.name != MASK_FOLDER for path in inner):
            return entries[0]
    return folder


@dataclass
class LoadedExample:
    example: Example
    image: Image.Image
    mask: np.ndarray | None  # bool H x W at the image's size


def load_example(example: Example) -> LoadedExample:
    """The example's image and mask; the mask must match the image's size and mark something."""
    try:
        image = load_image(example.image, name=str(example.image))
    except ImageError as exc:
        raise DefectKindError(str(exc)) from None
    if example.mask is None:
        return LoadedExample(example, image, None)
    try:
        with Image.open(example.mask) as raw:
            raw.load()
            mask = np.asarray(raw.convert("L")) > 127
    except (OSError, ValueError) as exc:
        raise DefectKindError(f"{example.mask}: not a readable mask ({' '.join(str(exc).split())[:120]})") from None
    if mask.shape != (image.height, image.width):
        raise DefectKindError(f"{example.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                              f"{example.image.name} is {image.width}x{image.height}")
    if not mask.any():
        raise DefectKindError(f"{example.mask}: mask is empty (mark the defect in white)")
    return LoadedExample(example, image, mask)


# -- regions ------------------------------------------------------------------------------------------
def core_mask(anomaly_map: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels of `box` within CORE_FRACTION of the box's map peak. Cut at the threshold, the
    engine's regions cover a defect several times over (median area 2.4x the ground truth on tire,
    19x on magnetic tile, one reference), which blurs what the crop shows; the core is 3.4x / 2.0x."""
    x0, y0, x1, y1 = box
    inside = np.zeros(anomaly_map.shape, bool)
    inside[y0:y1, x0:x1] = True
    peak = float(anomaly_map[inside].max())
    return inside & (anomaly_map >= CORE_FRACTION * peak)


def region_masks(detection: Detection) -> list[np.ndarray]:
    """One mask per region of the detection, in the same order."""
    return [core_mask(detection.anomaly_map, region.box) for region in detection.regions]


def strongest_region_mask(detection: Detection) -> np.ndarray:
    """The engine's region for an image it may not even call anomalous: its strongest region, or
    the map's hottest area when it found none."""
    if detection.regions:
        strongest = max(detection.regions, key=lambda region: region.peak)
        return core_mask(detection.anomaly_map, strongest.box)
    height, width = detection.anomaly_map.shape
    return core_mask(detection.anomaly_map, (0, 0, width, height))


# -- the descriptor -----------------------------------------------------------------------------------
@dataclass
class View:
    """What the encoder saw of an image: its level-2 features and where the view sits in the image."""

    level2: np.ndarray  # C x h x w
    box: tuple[int, int, int, int]


def encode_view(engine, image: Image.Image) -> View:
    view, box = engine.prepare(image)
    return View(engine.encode([view]).levels[2][0].numpy(), tuple(int(v) for v in box))


def describe(engine, image: Image.Image, mask: np.ndarray, view: View | None = None,
             exact: bool = True) -> dict[str, np.ndarray]:
    """The feature blocks of one region (`mask`, bool at the image's size) of `image`. Only an exact
    mask (the user's, ground truth) gets a shape block: an engine region's outline is the smoothed
    map's (`core_mask`), and matching engine regions on it cost 5-7 points of accuracy."""
    if not mask.any():
        raise ValueError("an empty region cannot be described")
    view = view or encode_view(engine, image)
    x0, y0, x1, y1 = view.box
    if not mask[y0:y1, x0:x1].any():  # a region off the part the crop found (a user's mask may be): the whole image
        view = View(engine.encode([image]).levels[2][0].numpy(), (0, 0, *image.size))
        x0, y0, x1, y1 = view.box
    in_view = mask[y0:y1, x0:x1]
    crop = crop_box(mask, image.size)
    crop_levels = engine.encode([image.crop(crop)]).levels
    in_crop = mask[crop[1]:crop[3], crop[0]:crop[2]]
    blocks = {
        "crop_level2": masked_mean(crop_levels[2][0].numpy(), in_crop),
        "crop_level3": masked_mean(crop_levels[3][0].numpy(), in_crop),
        "view_level2": masked_mean(view.level2, in_view),
    }
    if exact:
        blocks["shape"] = shape_features(in_view)
    return blocks


def crop_box(mask: np.ndarray, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A square around the mask's box, CROP_MARGIN of its side on every side, clipped to the image."""
    ys, xs = np.nonzero(mask)
    side = max(int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1, CROP_MIN_SIDE) * (1 + 2 * CROP_MARGIN)
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    width, height = size
    return (int(max(0, cx - side / 2)), int(max(0, cy - side / 2)),
            int(min(width, np.ceil(cx + side / 2))), int(min(height, np.ceil(cy + side / 2))))


def masked_mean(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel mean of C x h x w features over a pixel mask, each cell weighted by the share of
    it the mask covers, so a region smaller than a cell still counts where it lies."""
    channels, height, width = features.shape
    weights = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA).reshape(-1)
    return features.reshape(channels, -1).astype(np.float32) @ (weights / weights.sum())


def shape_features(mask: np.ndarray) -> np.ndarray:
    """log area share, elongation (half the log ratio of the pixel spread's eigenvalues), fill of
    its bounding box, log number of connected components."""
    ys, xs = np.nonzero(mask)
    area = len(xs) / mask.size
    count = cv2.connectedComponents(mask.astype(np.uint8))[0] - 1
    if len(xs) < 3:
        return np.array([np.log(area), 0.0, 1.0, np.log(count)])
    eigen = np.sort(np.linalg.eigvalsh(np.cov(np.stack([xs, ys]).astype(np.float64))))
    fill = len(xs) / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    return np.array([np.log(area), 0.5 * np.log((eigen[1] + 1) / (eigen[0] + 1)), fill, np.log(count)])


# -- matching -----------------------------------------------------------------------------------------
@dataclass
class KindMatch:
    """Which of the user's kinds a region looks like."""

    kind: str | None  # None: farther from every example than the examples are from their own kind
    nearest_kind: str
    confidence: float  # probability of `nearest_kind` (leave-one-out calibrated softmax)
    closest: int  # of the `n_examples` examples nearest the region, how many are `nearest_kind`
    n_examples: int  # examples of `nearest_kind`
    distance: float  # to `nearest_kind`, on the threshold's scale (`held_out_distance`)
    threshold: float  # farther than this from every kind is "none of these"
    kinds_given: tuple[str, ...] = ()  # every kind the examples have

    def to_json(self) -> dict:
        return {"kind": self.kind, "kind_confidence": round(float(self.confidence), 4),
                "closest_examples": f"{self.closest} of {self.n_examples}"}


def kind_label(region: dict) -> str:
    """A region's kind for reports, from its JSON: "cut (82 %, closest to 3 of 4)" or "none of the kinds given"."""
    if region.get("kind") is None:
        return "none of the kinds given"
    return f"{region['kind']} ({100 * region['kind_confidence']:.0f} %, closest to {region['closest_examples']})"


class KindMatcher:
    """Nearest-example matching of region descriptors to labelled kinds, with a calibrated confidence
    and an open-set threshold, both set from the examples alone.

    Feature blocks are compared as unit vectors (their magnitude follows the part's brightness and
    contrast: magnetic tile, 3 examples, novelty AUROC 64.9 -> 85.7 once normalised); the shape
    block is standardised on the examples. Each block's distances are divided by the examples'
    median pairwise distance in it, so blocks weigh alike. A query without a shape block (an
    engine region) is matched on the other blocks, with their own threshold and temperature."""

    def __init__(self, descriptors: list[dict[str, np.ndarray]], kinds: list[str]):
        if len(descriptors) != len(kinds) or not descriptors:
            raise ValueError("one kind per descriptor, at least one descriptor")
        self.labels = np.asarray(kinds)
        self.kinds = sorted(set(kinds))
        self.blocks = tuple(b for b in BLOCKS if all(b in d for d in descriptors))
        shapes = np.stack([d["shape"] for d in descriptors]) if "shape" in self.blocks else np.zeros((1, 1))
        spread = shapes.std(axis=0)
        self.shape_center = shapes.mean(axis=0)
        self.shape_spread = np.maximum(spread, STD_FLOOR * np.median(spread) + 1e-9)
        self.examples = self._normalised(descriptors, self.blocks)
        self.scale = {}
        for block in self.blocks:
            pairwise = _pairwise(self.examples[block], self.examples[block])[np.triu_indices(len(descriptors), 1)]
            median = float(np.median(pairwise)) if pairwise.size else 0.0
            self.scale[block] = median if median > 0 else 1.0
        self._fits: dict[tuple, tuple[float, float]] = {}

    def _normalised(self, descriptors: list[dict[str, np.ndarray]], blocks: tuple) -> dict[str, np.ndarray]:
        out = {}
        for block in blocks:
            values = np.stack([d[block] for d in descriptors]).astype(np.float64)
            if block == "shape":
                out[block] = (values - self.shape_center) / self.shape_spread
            else:
                out[block] = values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
        return out

    def _distances(self, normalised: dict[str, np.ndarray], blocks: tuple) -> np.ndarray:
        """N x n_examples mean over blocks of each block's scaled Euclidean distance."""
        return sum(_pairwise(normalised[b], self.examples[b]) / self.scale[b] for b in blocks) / len(blocks)

    def _kind_distances(self, distances: np.ndarray) -> np.ndarray:
        """N x n_kinds distance to each kind's nearest example (inf for a kind with none left)."""
        return np.stack([np.where(self.labels == kind, distances, np.inf).min(axis=1) for kind in self.kinds], axis=1)

    def fit(self, blocks: tuple) -> tuple[float, float]:
        """(open-set threshold, softmax temperature) for matching on `blocks`, from the examples."""
        if blocks not in self._fits:
            held_out = self._distances(self.examples, blocks)
            np.fill_diagonal(held_out, np.inf)
            kind_distances = self._kind_distances(held_out)
            self._fits[blocks] = (self._threshold(held_out, kind_distances), self._temperature(kind_distances))
        return self._fits[blocks]

    def _threshold(self, held_out: np.ndarray, kind_distances: np.ndarray) -> float:
        """OPEN_SET_QUANTILE of the examples' distances to the nearest other example of their own
        kind; with one example per kind (no kind's own spread to see), of the distances to the
        nearest other example of any kind."""
        own = kind_distances[np.arange(len(self.labels)), [self.kinds.index(label) for label in self.labels]]
        if not np.isfinite(own).any():
            own = held_out.min(axis=1)
        own = own[np.isfinite(own)]
        return float(np.quantile(own, OPEN_SET_QUANTILE)) if own.size else float("inf")

    def _temperature(self, kind_distances: np.ndarray) -> float:
        """The softmax temperature that best predicts each example's kind from the other examples."""
        own = np.array([self.kinds.index(label) for label in self.labels])
        usable = np.isfinite(kind_distances[np.arange(len(own)), own])
        if not usable.any() or len(self.kinds) < 2:
            return ONE_SHOT_TEMPERATURE
        kind_distances, own = kind_distances[usable], own[usable]
        scores = [np.sum(_log_softmax(-kind_distances / t)[np.arange(len(own)), own]) for t in TEMPERATURES]
        return float(TEMPERATURES[int(np.argmax(scores))])

    def match(self, descriptor: dict[str, np.ndarray]) -> KindMatch:
        return self.match_many([descriptor])[0]

    def match_many(self, descriptors: list[dict[str, np.ndarray]]) -> list[KindMatch]:
        if not descriptors:
            return []
        blocks = tuple(b for b in self.blocks if all(b in d for d in descriptors))
        threshold, temperature = self.fit(blocks)
        distances = self._distances(self._normalised(descriptors, blocks), blocks)
        kind_distances = self._kind_distances(distances)
        probabilities = np.exp(_log_softmax(-kind_distances / temperature))
        out = []
        for row, kinds_row, probability in zip(distances, kind_distances, probabilities):
            best = int(np.argmin(kinds_row))
            kind = self.kinds[best]
            n_examples = int(np.sum(self.labels == kind))
            nearest = self.labels[np.argsort(row, kind="stable")[:n_examples]]
            distance = held_out_distance(np.sort(row[self.labels == kind]))
            out.append(KindMatch(kind if distance <= threshold else None, kind, float(probability[best]),
                                 int(np.sum(nearest == kind)), n_examples, distance, threshold, tuple(self.kinds)))
        return out


def held_out_distance(own: np.ndarray) -> float:
    """A query's distance to a kind on the scale of the threshold: each example's own-kind distance is
    to the nearest of the other n - 1 examples, so the query's is the mean over its n leave-one-out
    subsets of the nearest remaining one, ((n - 1) d1 + d2) / n; with one example, d1. Comparing the
    plain nearest distance would let a query of a new kind in more often than the examples show."""
    if len(own) < 2:
        return float(own[0])
    return float(((len(own) - 1) * own[0] + own[1]) / len(own))


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    finite = np.where(np.isfinite(x), x, -np.inf)
    top = finite.max(axis=1, keepdims=True)
    return finite - top - np.log(np.exp(finite - top).sum(axis=1, keepdims=True))


# -- the user's example set ---------------------------------------------------------------------------
@dataclass
class DefectExamples:
    """A user's labelled defect examples, described and fitted on first use.

    Examples without a mask are described by the engine's strongest region, found against the same
    references (and class) as the query, so their matcher is cached per reference set."""

    examples: list[LoadedExample]
    _matchers: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_folder(cls, root) -> "DefectExamples":
        return cls([load_example(example) for example in find_examples(root)])

    @property
    def kinds(self) -> list[str]:
        return sorted({loaded.example.kind for loaded in self.examples})

    def count(self, kind: str) -> int:
        return sum(loaded.example.kind == kind for loaded in self.examples)

    @property
    def labels(self) -> list[str]:
        return [loaded.example.kind for loaded in self.examples]

    def descriptors(self, engine, references=None, class_name: str = "object") -> list[dict[str, np.ndarray]]:
        """Each example's feature blocks (what a profile stores in place of the images)."""
        return [describe(engine, loaded.image, self._region(engine, loaded, references, class_name),
                         exact=loaded.mask is not None) for loaded in self.examples]

    def matcher(self, engine, references=None, class_name: str = "object") -> KindMatcher:
        masked = all(loaded.mask is not None for loaded in self.examples)
        key = (id(engine), None if masked else _fingerprint(references, class_name))
        if key not in self._matchers:
            self._matchers = {key: KindMatcher(self.descriptors(engine, references, class_name), self.labels)}
        return self._matchers[key]

    @staticmethod
    def _region(engine, loaded: LoadedExample, references, class_name: str) -> np.ndarray:
        if loaded.mask is not None:
            return loaded.mask
        return strongest_region_mask(engine.detect(loaded.image, references or None, class_name))

    def classify(self, engine, image: Image.Image, detection: Detection, references=None,
                 class_name: str = "object") -> list[KindMatch]:
        """One match per region of an anomalous detection of `image` (none for a normal one)."""
        return classify_regions(self.matcher(engine, references, class_name), engine, image, detection)


@dataclass
class DescribedDefects:
    """Defect examples already described (a profile's): their kinds and feature blocks, no images."""

    described: list[dict[str, np.ndarray]]
    labels: list[str]
    _matcher: KindMatcher | None = field(default=None, repr=False)

    @property
    def kinds(self) -> list[str]:
        return sorted(set(self.labels))

    def count(self, kind: str) -> int:
        return self.labels.count(kind)

    def matcher(self, engine=None, references=None, class_name: str = "object") -> KindMatcher:
        if self._matcher is None:
            self._matcher = KindMatcher(self.described, self.labels)
        return self._matcher

    def classify(self, engine, image: Image.Image, detection: Detection, references=None,
                 class_name: str = "object") -> list[KindMatch]:
        return classify_regions(self.matcher(), engine, image, detection)


def classify_regions(matcher: KindMatcher, engine, image: Image.Image, detection: Detection) -> list[KindMatch]:
    """One match per region of an anomalous detection of `image` (none for a normal one)."""
    if not detection.anomalous or not detection.regions:
        return []
    view = encode_view(engine, image)
    return matcher.match_many([describe(engine, image, mask, view, exact=False) for mask in region_masks(detection)])


def _fingerprint(references, class_name: str) -> str:
    """Key of the references an example's region was found against: their images, or a built set's own key."""
    from .reference_set import is_built  # torch: not needed to read the examples

    digest = hashlib.sha1(class_name.encode())
    if is_built(references):
        digest.update(references.fingerprint.encode())
        return digest.hexdigest()
    for image in references or []:
        digest.update(f"{image.size}{image.mode}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()
