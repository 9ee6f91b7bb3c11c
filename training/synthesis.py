"""Synthetic anomalies with exact masks, made from normal images only.

The assistant never sees a real defect during training. Instead every normal image can be turned into
an "anomalous" one by one of three methods, each returning the image and a boolean mask that is exact:
outside the mask the pixels are the original ones.

* ``poisson``  - a patch from another normal image (a *donor*) blended in with ``cv2.seamlessClone``
  (normal or mixed gradients), in the spirit of NSA. The mask is where the blend really changed the
  image (beyond ``change_threshold``), so an invisible blend is never labelled as a defect.
* ``cutpaste`` - a patch of the same image or a donor, colour/brightness jittered and pasted hard;
  sometimes as a thin rotated "scar".
* ``perlin``   - a thresholded Perlin-noise region (DRAEM style) in which a texture source (a donor or
  a strongly jittered / tile-shuffled copy of the image itself) is blended in with opacity 0.2-0.8.

Which augmentations are safe depends on the class (rotations are wrong for objects whose orientation
matters, textures need no object mask); the settings live in ``training/synthesis.json``.

Preview from the command line::

    python -m training.synthesis --data ../shared/datasets/tire/train/good --out grid.png
    python -m training.synthesis --data conformal-clip-data --out grid.png --class-name textile
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from assistant.foreground import as_rgb_array, estimate_foreground, fill_holes

METHODS = ("poisson", "cutpaste", "perlin")
FOREGROUND_MODES = ("auto", "none")
CONFIG_PATH = Path(__file__).with_name("synthesis.json")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------
@dataclass
class SynthesisConfig:
    """How anomalies are synthesised for one class. Sizes are fractions of the image side."""

    methods: dict[str, float] = field(default_factory=lambda: {"poisson": 0.4, "cutpaste": 0.3, "perlin": 0.3})
    patch_min_width: float = 0.06
    patch_max_width: float = 0.25
    patch_min_height: float = 0.06
    patch_max_height: float = 0.25
    max_patches: int = 2
    rotate: bool = False
    flip: bool = True
    foreground: str = "auto"
    min_mask_pixels: int = 24
    # Secondary knobs (all have sensible defaults; overridable from the JSON file as well).
    scar_probability: float = 0.3
    change_threshold: int = 8  # poisson: a pixel counts as changed above this (0-255, max over channels)
    min_mean_change: float = 6.0  # mean |change| inside the mask below this = invisible, try again
    perlin_max_area: float = 0.3  # largest perlin region as a fraction of the foreground
    beta_min: float = 0.2  # perlin texture opacity range
    beta_max: float = 0.8
    max_attempts: int = 6

    def __post_init__(self) -> None:
        self.methods = {str(k): float(v) for k, v in dict(self.methods).items()}
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown synthesis method(s) {sorted(unknown)}; choose from {list(METHODS)}")
        if any(v < 0 for v in self.methods.values()) or sum(self.methods.values()) <= 0:
            raise ValueError("method weights must be >= 0 with a positive sum")
        if self.foreground not in FOREGROUND_MODES:
            raise ValueError(f"foreground must be one of {FOREGROUND_MODES}, got {self.foreground!r}")
        for lo, hi, name in ((self.patch_min_width, self.patch_max_width, "width"),
                             (self.patch_min_height, self.patch_max_height, "height")):
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"patch {name} range must satisfy 0 < min <= max <= 1, got {lo}..{hi}")
        if not 0 <= self.beta_min <= self.beta_max <= 1:
            raise ValueError("beta range must satisfy 0 <= beta_min <= beta_max <= 1")
        if self.max_patches < 1 or self.min_mask_pixels < 1 or self.max_attempts < 1:
            raise ValueError("max_patches, min_mask_pixels and max_attempts must be >= 1")
        if not 0 < self.perlin_max_area <= 1:
            raise ValueError("perlin_max_area must be in (0, 1]")

    def weights(self) -> dict[str, float]:
        """Normalised weights of the enabled methods."""
        total = sum(self.methods.values())
        return {m: self.methods[m] / total for m in METHODS if self.methods.get(m, 0) > 0}


def _normalise_class(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def _read_config_file(path: Path | None = None) -> dict:
    path = Path(path) if path is not None else CONFIG_PATH
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict) or not isinstance(data.get("default"), dict):
        raise ValueError(f"{path}: expected an object with a 'default' block")
    return data


def configured_classes(path: Path | None = None) -> list[str]:
    """Class names that have their own block in the settings file."""
    return sorted(_read_config_file(path).get("classes", {}))


def load_synthesis_config(class_name: str | None, path: Path | None = None) -> SynthesisConfig:
    """The settings for `class_name`: the file's default block updated by the class block, if any.

    Unknown classes (and None) get the default. Class names are matched case-insensitively with
    spaces/hyphens treated as underscores.
    """
    data = _read_config_file(path)
    merged = {k: v for k, v in data["default"].items() if not k.startswith("_")}
    classes = {_normalise_class(k): v for k, v in data.get("classes", {}).items()}
    override = classes.get(_normalise_class(class_name)) if class_name else None
    for key, value in (override or {}).items():
        if key.startswith("_"):
            continue
        if key == "methods":
            base = merged.get("methods", SynthesisConfig().methods)
            merged["methods"] = {**base, **value}
        else:
            merged[key] = value
    known = {f.name for f in fields(SynthesisConfig)}
    unknown = set(merged) - known
    if unknown:
        raise ValueError(f"unknown synthesis setting(s) {sorted(unknown)}")
    return SynthesisConfig(**merged)


# --------------------------------------------------------------------------------------------------
# Helpers: arrays, foreground, Perlin noise
# --------------------------------------------------------------------------------------------------
def _is_gray(array: np.ndarray) -> bool:
    step = max(1, array.shape[0] // 64)
    sample = array[::step, ::step].astype(np.int16)
    return (np.abs(sample[..., 0] - sample[..., 1]).mean() < 2.0
            and np.abs(sample[..., 1] - sample[..., 2]).mean() < 2.0)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator,
                 octaves: int = 1, persistence: float = 0.5) -> np.ndarray:
    """Gradient (Perlin) noise of `shape` with `res` periods along (y, x); roughly in [-1, 1]."""
    height, width = shape
    total = np.zeros((height, width), dtype=np.float32)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        ry, rx = int(res[0]) * 2 ** octave, int(res[1]) * 2 ** octave
        angles = rng.uniform(0.0, 2.0 * np.pi, size=(ry + 1, rx + 1))
        grad_y, grad_x = np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)
        y = (np.arange(height) + 0.5) * (ry / height)
        x = (np.arange(width) + 0.5) * (rx / width)
        iy, ix = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
        fy, fx = (y - iy).astype(np.float32), (x - ix).astype(np.float32)

        def corner(dy: int, dx: int) -> np.ndarray:
            gy = grad_y[(iy + dy)[:, None], (ix + dx)[None, :]]
            gx = grad_x[(iy + dy)[:, None], (ix + dx)[None, :]]
            return gy * (fy - dy)[:, None] + gx * (fx - dx)[None, :]

        def fade(t: np.ndarray) -> np.ndarray:
            return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)

        uy, ux = fade(fy)[:, None], fade(fx)[None, :]
        n00, n01, n10, n11 = corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1)
        top = n00 + ux * (n01 - n00)
        bottom = n10 + ux * (n11 - n10)
        total += np.float32(amplitude * np.sqrt(2.0)) * (top + uy * (bottom - top))
        norm += amplitude
        amplitude *= persistence
    return total / norm


# --------------------------------------------------------------------------------------------------
# The synthesiser
# --------------------------------------------------------------------------------------------------
@dataclass
class SynthesisResult:
    image: Image.Image
    mask: np.ndarray
    methods: list[str]

    @property
    def caption(self) -> str:
        return "+".join(self.methods)


class _Failed(Exception):
    """One method could not produce a visible anomaly for this image."""


class AnomalySynthesizer:
    """Turns a normal image into (anomalous image, exact boolean mask).

    Deterministic: a synthesiser built with the same seed produces the same sequence of outputs; when
    `rng` is passed to `synthesize`, only that generator is used (the internal one is untouched).
    """

    def __init__(self, config: SynthesisConfig | None = None, seed: int | None = 0):
        self.config = config if config is not None else SynthesisConfig()
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    # ---- public API -----------------------------------------------------------------------------
    def synthesize(self, image: Image.Image, donors: Sequence[Image.Image] = (),
                   rng: np.random.Generator | None = None, method: str | None = None
                   ) -> tuple[Image.Image, np.ndarray]:
        """An anomalous version of `image` and its boolean HxW mask (never empty).

        `donors` are other normal images (any size; resized to the target). `method` forces one of
        METHODS instead of drawing from the configured weights.
        """
        result = self.synthesize_detailed(image, donors, rng=rng, method=method)
        return result.image, result.mask

    def synthesize_detailed(self, image: Image.Image, donors: Sequence[Image.Image] = (),
                            rng: np.random.Generator | None = None, method: str | None = None
                            ) -> SynthesisResult:
        """Like `synthesize`, also reporting which method(s) made the anomaly."""
        if method is not None and method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
        rng = rng if rng is not None else self._rng
        cfg = self.config
        original = as_rgb_array(image)
        height, width = original.shape[:2]
        fg = estimate_foreground(original) if cfg.foreground == "auto" else np.ones((height, width), bool)
        context = _Context(original, fg, donors, _is_gray(original))
        weights = cfg.weights()
        names, probs = list(weights), np.array(list(weights.values()))
        current = original
        mask = np.zeros((height, width), dtype=bool)
        used: list[str] = []
        count = int(rng.integers(1, cfg.max_patches + 1))
        for _ in range(count):
            chosen = method if method is not None else names[int(rng.choice(len(names), p=probs))]
            current, patch_mask, label = self._apply(chosen, current, context, rng)
            mask |= patch_mask
            used.append(label)
        if mask.sum() < cfg.min_mask_pixels:  # cannot happen unless a method misbehaves; be safe
            current, patch_mask, label = self._fallback(current, context, rng)
            mask |= patch_mask
            used.append(label)
        return SynthesisResult(Image.fromarray(current), mask, used)

    # ---- dispatch -------------------------------------------------------------------------------
    def _apply(self, method: str, current: np.ndarray, ctx: "_Context", rng: np.random.Generator):
        chain = {"poisson": ("poisson", "cutpaste"), "cutpaste": ("cutpaste",),
                 "perlin": ("perlin", "cutpaste")}[method]
        for name in chain:
            run = getattr(self, f"_{name}")
            for _ in range(self.config.max_attempts):
                try:
                    out, patch_mask = run(current, ctx, rng)
                except _Failed:
                    continue
                return out, patch_mask, name
        return self._fallback(current, ctx, rng)

    # ---- geometry -------------------------------------------------------------------------------
    def _patch_size(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int]:
        cfg = self.config
        ph = round(rng.uniform(cfg.patch_min_height, cfg.patch_max_height) * height)
        pw = round(rng.uniform(cfg.patch_min_width, cfg.patch_max_width) * width)
        return max(3, min(ph, height - 4)), max(3, min(pw, width - 4))

    def _transform(self, content: np.ndarray, shape: np.ndarray, rng: np.random.Generator,
                   scale: bool) -> tuple[np.ndarray, np.ndarray]:
        """Optional rescale, flips and rotation (as the config allows) of a patch and its shape."""
        if scale:
            factor = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
            size = (max(3, round(content.shape[1] * factor)), max(3, round(content.shape[0] * factor)))
            content = cv2.resize(content, size, interpolation=cv2.INTER_LINEAR)
            shape = cv2.resize(shape.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        if self.config.flip:
            if rng.random() < 0.5:
                content, shape = content[:, ::-1], shape[:, ::-1]
            if rng.random() < 0.5:
                content, shape = content[::-1], shape[::-1]
        if self.config.rotate and rng.random() < 0.7:
            content, shape = _rotate(content, shape, rng.uniform(0.0, 360.0))
        return np.ascontiguousarray(content), np.ascontiguousarray(shape)

    def _place(self, shape: np.ndarray, ctx: "_Context", rng: np.random.Generator,
               margin: int = 0) -> tuple[int, int]:
        """Top-left corner for `shape` inside the image, preferably on the foreground."""
        height, width = ctx.fg.shape
        h, w = shape.shape
        max_y, max_x = height - h - margin, width - w - margin
        if max_y < margin or max_x < margin:
            raise _Failed("patch larger than the image")
        if ctx.all_fg:
            return int(rng.integers(margin, max_y + 1)), int(rng.integers(margin, max_x + 1))
        best, best_overlap = None, -1.0
        area = max(1, int(shape.sum()))
        for _ in range(12):
            k = int(rng.integers(len(ctx.fg_y)))
            y0 = int(np.clip(ctx.fg_y[k] - h // 2, margin, max_y))
            x0 = int(np.clip(ctx.fg_x[k] - w // 2, margin, max_x))
            overlap = ctx.fg[y0:y0 + h, x0:x0 + w][shape].sum() / area
            if overlap > best_overlap:
                best, best_overlap = (y0, x0), overlap
            if overlap >= 0.85:
                break
        if best_overlap < 0.5:
            raise _Failed("no place on the foreground")
        return best

    def _random_shape(self, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < 0.6:
            return np.ones((h, w), dtype=bool)
        shape = np.zeros((h, w), dtype=np.uint8)
        cv2.ellipse(shape, (((w - 1) / 2.0, (h - 1) / 2.0), (float(w), float(h)), 0.0), 1, -1)
        return shape.astype(bool)

    def _source_crop(self, source: np.ndarray, h: int, w: int, ctx: "_Context",
                     rng: np.random.Generator) -> np.ndarray:
        """A crop of `source` (same size as the target), centred on the target's foreground."""
        height, width = source.shape[:2]
        if ctx.all_fg:
            y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        else:
            k = int(rng.integers(len(ctx.fg_y)))
            y0 = int(np.clip(ctx.fg_y[k] - h // 2, 0, height - h))
            x0 = int(np.clip(ctx.fg_x[k] - w // 2, 0, width - w))
        return source[y0:y0 + h, x0:x0 + w].copy()

    # ---- methods --------------------------------------------------------------------------------
    def _poisson(self, current: np.ndarray, ctx: "_Context", rng: np.random.Generator):
        cfg = self.config
        height, width = current.shape[:2]
        donor = ctx.donor(rng) if ctx.donors else current
        h, w = self._patch_size(height, width, rng)
        content = self._source_crop(donor, h, w, ctx, rng)
        content, shape = self._transform(content, self._random_shape(h, w, rng), rng, scale=True)
        content, shape = _fit(content, shape, height - 6, width - 6)
        if ctx.gray:
            content = _to_gray(content)
        # Poisson blending keeps the patch's gradients, so change their strength to make it show
        # (with mixed gradients only a stronger patch can win over the target's own gradients).
        flag = cv2.NORMAL_CLONE if rng.random() < 0.5 else cv2.MIXED_CLONE
        gain = _away_from_one(rng, 2.2, 0.3)
        if flag == cv2.MIXED_CLONE:
            gain = max(gain, 1.0 / gain)
        content = _scale_contrast(content, gain)
        pad = 3
        src = cv2.copyMakeBorder(content, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
        src_mask = np.pad(shape, pad).astype(np.uint8) * 255
        y0, x0 = self._place(shape, ctx, rng, margin=1)
        # seamlessClone centres the bounding box of the mask (here: of `shape`) on `center`.
        ys, xs = np.nonzero(shape)
        by, bx = int(ys.min()), int(xs.min())
        bh, bw = int(ys.max()) - by + 1, int(xs.max()) - bx + 1
        center = (x0 + bx + bw // 2, y0 + by + bh // 2)
        try:
            blended = cv2.seamlessClone(src, current, src_mask, center, flag)
        except cv2.error as exc:
            raise _Failed(str(exc))
        area = np.zeros((height, width), dtype=bool)
        area[y0 + by:y0 + by + bh, x0 + bx:x0 + bx + bw] = shape[by:by + bh, bx:bx + bw]
        area = cv2.dilate(area.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        diff = np.abs(blended.astype(np.int16) - current.astype(np.int16)).max(axis=2)
        changed = (diff > cfg.change_threshold) & area
        # Close small gaps so the defect is one coherent region; the added pixels take the blended
        # values too, which differ from the original by at most `change_threshold`.
        close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        changed = cv2.morphologyEx(changed.astype(np.uint8), cv2.MORPH_CLOSE, close).astype(bool)
        changed = fill_holes(changed) & area
        changed = _drop_specks(changed, min_area=max(4, cfg.min_mask_pixels // 4))
        if changed.sum() < max(cfg.min_mask_pixels, 0.15 * shape.sum()):
            raise _Failed("blend is almost invisible")
        out = current.copy()
        out[changed] = blended[changed]
        _check_visible(out, current, changed, cfg.min_mean_change, structural=not ctx.all_fg)
        return out, changed

    def _cutpaste(self, current: np.ndarray, ctx: "_Context", rng: np.random.Generator):
        cfg = self.config
        height, width = current.shape[:2]
        source = ctx.donor(rng) if ctx.donors and rng.random() < 0.5 else current
        if rng.random() < cfg.scar_probability:
            thickness = max(2, round(rng.uniform(0.008, 0.03) * min(height, width)))
            length = round(rng.uniform(0.1, 0.3) * max(height, width))
            length = max(4, min(length, min(height, width) - thickness - 8))
            shape = _scar_shape(length, thickness, rng.uniform(0.0, 180.0))
            h, w = shape.shape
            content = self._source_crop(source, h, w, ctx, rng)
        else:
            h, w = self._patch_size(height, width, rng)
            content = self._source_crop(source, h, w, ctx, rng)
            content, shape = self._transform(content, self._random_shape(h, w, rng), rng, scale=False)
            content, shape = _fit(content, shape, height - 4, width - 4)
        content = _jitter(content, rng, ctx.gray, strength=1.0)
        y0, x0 = self._place(shape, ctx, rng)
        h, w = shape.shape
        out = current.copy()
        region = out[y0:y0 + h, x0:x0 + w]
        region[shape] = content[shape]
        mask = np.zeros((height, width), dtype=bool)
        mask[y0:y0 + h, x0:x0 + w] = shape
        if mask.sum() < cfg.min_mask_pixels:
            raise _Failed("patch too small")
        _check_visible(out, current, mask, cfg.min_mean_change, structural=not ctx.all_fg)
        return out, mask

    def _perlin(self, current: np.ndarray, ctx: "_Context", rng: np.random.Generator):
        cfg = self.config
        height, width = current.shape[:2]
        res = (int(2 ** rng.integers(1, 4)), int(2 ** rng.integers(1, 4)))
        noise = perlin_noise((height, width), res, rng, octaves=int(rng.integers(1, 3)))
        values = noise[ctx.fg]
        threshold = 0.5
        limit = cfg.perlin_max_area * values.size
        if (values > threshold).sum() > limit:
            threshold = float(np.quantile(values, 1.0 - cfg.perlin_max_area))
        mask = (noise > threshold) & ctx.fg
        # Crumbs of a few pixels are invisible once blended: keep the blobs only.
        mask = _drop_specks(mask, min_area=max(cfg.min_mask_pixels, int(0.001 * height * width)))
        if mask.sum() < cfg.min_mask_pixels:
            raise _Failed("perlin region too small")
        texture = self._texture(current, ctx, rng)
        beta = rng.uniform(cfg.beta_min, cfg.beta_max)
        blend = (1.0 - beta) * current.astype(np.float32) + beta * texture.astype(np.float32)
        out = current.copy()
        out[mask] = np.clip(np.rint(blend[mask]), 0, 255).astype(np.uint8)
        _check_visible(out, current, mask, cfg.min_mean_change, structural=False)
        return out, mask

    def _texture(self, current: np.ndarray, ctx: "_Context", rng: np.random.Generator) -> np.ndarray:
        """A full-size texture source: a jittered donor, or a strongly altered copy of the image."""
        choice = rng.random()
        if ctx.donors and choice < 0.4:
            texture = ctx.donor(rng)
            if rng.random() < 0.5:
                texture = _shuffle_tiles(texture, rng)
            texture = _jitter(texture, rng, ctx.gray, strength=1.5)
        elif choice < 0.7:
            texture = _strong_jitter(current, rng, ctx.gray)
        else:
            texture = _jitter(_shuffle_tiles(current, rng), rng, ctx.gray, strength=1.5)
        return _to_gray(texture) if ctx.gray else texture

    def _fallback(self, current: np.ndarray, ctx: "_Context", rng: np.random.Generator):
        """Always succeeds: a rectangle whose intensities are shifted by half the range."""
        cfg = self.config
        height, width = current.shape[:2]
        side = max(2, math.ceil(math.sqrt(cfg.min_mask_pixels)))
        h, w = self._patch_size(height, width, rng)
        h, w = min(height, max(h, side)), min(width, max(w, side))
        while h * w < cfg.min_mask_pixels and (h < height or w < width):
            h, w = min(height, h + 1), min(width, w + 1)
        try:
            y0, x0 = self._place(np.ones((h, w), bool), ctx, rng)
        except _Failed:
            y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        out = current.copy()
        region = out[y0:y0 + h, x0:x0 + w].astype(np.int16)
        out[y0:y0 + h, x0:x0 + w] = np.where(region < 128, region + 128, region - 128).astype(np.uint8)
        mask = np.zeros((height, width), dtype=bool)
        mask[y0:y0 + h, x0:x0 + w] = True
        return out, mask, "fallback"


class _Context:
    """Per-call data shared by the methods: the original, its foreground and lazily resized donors."""

    def __init__(self, original: np.ndarray, fg: np.ndarray, donors: Sequence, gray: bool):
        self.original = original
        self.fg = fg
        self.all_fg = bool(fg.all())
        self.fg_y, self.fg_x = (np.nonzero(fg) if not self.all_fg else (None, None))
        self.donors = list(donors) if donors is not None else []
        self.gray = gray
        self._cache: dict[int, np.ndarray] = {}

    def donor(self, rng: np.random.Generator) -> np.ndarray:
        index = int(rng.integers(len(self.donors)))
        if index not in self._cache:
            height, width = self.original.shape[:2]
            array = as_rgb_array(self.donors[index])
            if array.shape[:2] != (height, width):
                array = cv2.resize(array, (width, height), interpolation=cv2.INTER_AREA)
            self._cache[index] = _to_gray(array) if self.gray else array
        return self._cache[index]


# --------------------------------------------------------------------------------------------------
# Small image operations
# --------------------------------------------------------------------------------------------------
def _to_gray(array: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2GRAY)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _rotate(content: np.ndarray, shape: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape.shape
    matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w, new_h = int(math.ceil(h * sin + w * cos)), int(math.ceil(h * cos + w * sin))
    matrix[0, 2] += new_w / 2.0 - w / 2.0
    matrix[1, 2] += new_h / 2.0 - h / 2.0
    content = cv2.warpAffine(np.ascontiguousarray(content), matrix, (new_w, new_h),
                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    shape = cv2.warpAffine(np.ascontiguousarray(shape).astype(np.uint8), matrix, (new_w, new_h),
                           flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    ys, xs = np.nonzero(shape)
    if len(ys) == 0:
        raise _Failed("rotated shape vanished")
    crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return content[crop], shape[crop]


def _fit(content: np.ndarray, shape: np.ndarray, max_h: int, max_w: int) -> tuple[np.ndarray, np.ndarray]:
    """Shrink a patch so that it fits into max_h x max_w."""
    h, w = shape.shape
    factor = min(1.0, max_h / h, max_w / w)
    if factor < 1.0:
        size = (max(1, int(w * factor)), max(1, int(h * factor)))
        content = cv2.resize(np.ascontiguousarray(content), size, interpolation=cv2.INTER_AREA)
        if content.ndim == 2:
            content = content[:, :, None]
        shape = cv2.resize(shape.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        if not shape.any():
            raise _Failed("patch vanished when shrunk")
    return content, shape


def _scar_shape(length: int, thickness: int, angle: float) -> np.ndarray:
    """A thin rotated rectangle (a scratch), cropped to its bounding box."""
    box = cv2.boxPoints(((length, length), (float(length), float(thickness)), angle))
    canvas = np.zeros((2 * length + 2, 2 * length + 2), dtype=np.uint8)
    cv2.fillPoly(canvas, [np.round(box).astype(np.int32)], 1)
    ys, xs = np.nonzero(canvas)
    return canvas[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(bool)


def _away_from_one(rng: np.random.Generator, largest: float, gap: float) -> float:
    """A random factor in [1/largest, largest] whose log is at least `gap` away from 0."""
    magnitude = rng.uniform(gap, math.log(largest))
    return float(math.exp(magnitude if rng.random() < 0.5 else -magnitude))


def _scale_contrast(patch: np.ndarray, gain: float) -> np.ndarray:
    p = patch.astype(np.float32)
    mean = p.mean(axis=(0, 1), keepdims=True)
    return np.clip(np.rint((p - mean) * gain + mean), 0, 255).astype(np.uint8)


def _jitter(patch: np.ndarray, rng: np.random.Generator, gray: bool, strength: float = 1.0) -> np.ndarray:
    """Brightness / contrast (and, for colour images, per-channel colour) jitter that is never a
    no-op: the brightness shift is at least 12 levels and the contrast at least ~20% off."""
    p = patch.astype(np.float32)
    mean = p.mean()
    contrast = _away_from_one(rng, 1.0 + 0.6 * strength, 0.2)
    shift = rng.uniform(12.0, 12.0 + 30.0 * strength) * (1.0 if rng.random() < 0.5 else -1.0)
    p = (p - mean) * contrast + mean + shift
    if not gray:
        gains = rng.uniform(1.0 - 0.15 * strength, 1.0 + 0.15 * strength, size=3).astype(np.float32)
        p = p * gains
    return np.clip(np.rint(p), 0, 255).astype(np.uint8)


def _strong_jitter(image: np.ndarray, rng: np.random.Generator, gray: bool) -> np.ndarray:
    """A strongly altered copy of the image, standing in for an external texture set."""
    p = image.astype(np.float32) / 255.0
    if rng.random() < 0.3:
        p = 1.0 - p
    p = np.power(np.clip(p, 0, 1), rng.uniform(0.4, 2.5))
    if not gray:
        p = p[:, :, rng.permutation(3)]
    p = p * 255.0
    mean = p.mean()
    p = (p - mean) * rng.uniform(0.5, 2.0) + mean + rng.uniform(-60.0, 60.0)
    if rng.random() < 0.3:
        levels = int(rng.integers(3, 7))
        p = np.floor(np.clip(p, 0, 255) / 256.0 * levels) * (255.0 / max(1, levels - 1))
    if rng.random() < 0.3:
        p = cv2.GaussianBlur(p, (0, 0), rng.uniform(1.0, 3.0))
    return np.clip(np.rint(p), 0, 255).astype(np.uint8)


def _shuffle_tiles(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image cut into a grid of tiles, randomly permuted (and flipped)."""
    height, width = image.shape[:2]
    n = int(rng.integers(3, 9))
    th, tw = max(1, height // n), max(1, width // n)
    base = cv2.resize(image, (tw * n, th * n), interpolation=cv2.INTER_AREA) if (th * n, tw * n) != (height, width) else image
    tiles = [base[i * th:(i + 1) * th, j * tw:(j + 1) * tw] for i in range(n) for j in range(n)]
    order = rng.permutation(len(tiles))
    rows = []
    for i in range(n):
        row = []
        for j in range(n):
            tile = tiles[order[i * n + j]]
            if rng.random() < 0.5:
                tile = tile[:, ::-1]
            row.append(tile)
        rows.append(np.concatenate(row, axis=1))
    out = np.concatenate(rows, axis=0)
    if out.shape[:2] != (height, width):
        out = cv2.resize(out, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(out)


def _drop_specks(mask: np.ndarray, min_area: int) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return mask
    keep = 1 + np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_area)
    return np.isin(labels, keep)


def _check_visible(out: np.ndarray, before: np.ndarray, mask: np.ndarray, min_change: float,
                   structural: bool) -> None:
    """Reject anomalies a person would not see.

    A texture patch swapped for another piece of the same texture changes every pixel yet looks
    normal, so besides a minimal mean |change| the region must differ in mean brightness, contrast,
    gradient energy (scale / sharpness) or dominant orientation. On objects (`structural`), a large
    pixel change alone also counts: a misplaced piece of the object is a visible defect.
    """
    if not mask.any():
        raise _Failed("empty mask")
    change = float(np.abs(out[mask].astype(np.int16) - before[mask].astype(np.int16)).mean())
    if change < min_change:
        raise _Failed(f"change too small ({change:.1f})")
    if structural and change >= 3.0 * min_change:
        return
    ys, xs = np.nonzero(mask)
    y0, y1 = max(0, ys.min() - 2), ys.max() + 3
    x0, x1 = max(0, xs.min() - 2), xs.max() + 3
    inside = mask[y0:y1, x0:x1]
    a = cv2.cvtColor(np.ascontiguousarray(before[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY).astype(np.float32)
    b = cv2.cvtColor(np.ascontiguousarray(out[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY).astype(np.float32)
    # Busy textures hide small shifts: scale the bar with the region's own contrast.
    bar = max(min_change, 0.5 * float(a[inside].std()))
    colour = np.abs(out[mask].astype(np.float32).mean(0) - before[mask].astype(np.float32).mean(0)).max()
    if colour >= bar or abs(a[inside].std() - b[inside].std()) >= bar:
        return
    stats = []
    for g in (a, b):
        gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)[inside]
        gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)[inside]
        jxx, jyy, jxy = float((gx * gx).mean()), float((gy * gy).mean()), float((gx * gy).mean())
        energy = jxx + jyy + 1e-6
        coherence = math.hypot(jxx - jyy, 2.0 * jxy) / energy
        angle = 0.5 * math.degrees(math.atan2(2.0 * jxy, jxx - jyy))
        stats.append((energy, coherence, angle))
    (ea, ca, ta), (eb, cb, tb) = stats
    if abs(math.log(eb / ea)) >= 0.7:  # gradient magnitude off by ~40% or more
        return
    turn = abs(ta - tb) % 180.0
    if min(ca, cb) >= 0.15 and min(turn, 180.0 - turn) >= 20.0:
        return
    raise _Failed("change looks like normal texture")


# --------------------------------------------------------------------------------------------------
# Preview
# --------------------------------------------------------------------------------------------------
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def preview_grid(images_with_masks: Iterable, path, columns: int = 4, cell: int = 240) -> Path:
    """Save a PNG grid; each cell shows the image, the same image with the mask outlined in red, and a
    caption. Items are (image, mask), (image, mask, caption) or SynthesisResult."""
    items = []
    for item in images_with_masks:
        if isinstance(item, SynthesisResult):
            items.append((item.image, item.mask, item.caption))
        elif len(item) == 3:
            items.append(tuple(item))
        else:
            items.append((item[0], item[1], ""))
    if not items:
        raise ValueError("nothing to preview")
    columns = max(1, min(columns, len(items)))
    rows = math.ceil(len(items) / columns)
    gap, caption_h = 6, 22
    panel_w = 2 * cell + gap
    panel_h = cell + caption_h
    sheet = Image.new("RGB", (columns * panel_w + (columns + 1) * gap * 2, rows * panel_h + (rows + 1) * gap * 2),
                      (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(14)
    for index, (image, mask, caption) in enumerate(items):
        array = as_rgb_array(image)
        mask = np.asarray(mask, dtype=bool)
        height, width = array.shape[:2]
        factor = cell / max(height, width)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        thumb = cv2.resize(array, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
        small_mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        overlay = thumb.astype(np.float32)
        red = np.array([255, 0, 0], np.float32)
        overlay[small_mask.astype(bool)] = 0.65 * overlay[small_mask.astype(bool)] + 0.35 * red
        overlay = overlay.astype(np.uint8)
        contours, _ = cv2.findContours(small_mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(overlay, contours, -1, (255, 0, 0), 1)
        row, col = divmod(index, columns)
        x = gap * 2 + col * (panel_w + gap * 2)
        y = gap * 2 + row * (panel_h + gap * 2)
        sheet.paste(Image.fromarray(thumb), (x, y))
        sheet.paste(Image.fromarray(overlay), (x + cell + gap, y))
        share = 100.0 * mask.mean() if mask.size else 0.0
        text = f"{caption}  ({int(mask.sum())} px, {share:.1f}%)" if caption else f"{int(mask.sum())} px, {share:.1f}%"
        draw.text((x, y + cell + 3), text, fill=(0, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def _resize_longest(image: Image.Image, longest: int) -> Image.Image:
    if max(image.size) <= longest:
        return image
    factor = longest / max(image.size)
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.LANCZOS)


def _resolve_data(data: str) -> tuple[Path, str | None]:
    if data == "conformal-clip-data":
        try:
            import conformal_clip_data
        except ImportError:
            raise SystemExit("--data conformal-clip-data needs `pip install conformal-clip-data`")
        return Path(conformal_clip_data.nominal_dir()), "textile"
    folder = Path(data)
    if not folder.is_dir():
        raise SystemExit(f"{data}: not a folder")
    classes = set(configured_classes())
    guess = next((part for part in reversed(folder.resolve().parts) if _normalise_class(part) in classes), None)
    return folder, guess


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.synthesis",
                                     description="Preview synthesised anomalies on a folder of normal images.")
    parser.add_argument("--data", required=True,
                        help="folder of normal images, or 'conformal-clip-data' for the MIT textile set")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--class-name", default=None,
                        help="class whose settings to use (default: guessed from the folder path)")
    parser.add_argument("--n", type=int, default=12, help="number of examples (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="cycle", choices=("cycle", "random") + METHODS,
                        help="cycle through the enabled methods (default), draw by weight, or force one")
    parser.add_argument("--columns", type=int, default=4)
    parser.add_argument("--max-side", type=int, default=320, help="resize so the longest side is at most this")
    args = parser.parse_args(argv)

    from assistant.images import ImageError, load_image

    folder, guessed = _resolve_data(args.data)
    class_name = args.class_name or guessed
    config = load_synthesis_config(class_name)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise SystemExit(f"{folder}: no images found")
    rng = np.random.default_rng(args.seed)
    n = max(1, args.n)
    picked = rng.choice(len(files), size=min(len(files), n + 8), replace=False)
    images = []
    for index in picked:
        try:
            images.append(_resize_longest(load_image(files[int(index)]), args.max_side))
        except ImageError as exc:
            print(f"skipping {exc}", file=sys.stderr)
    if not images:
        raise SystemExit(f"{folder}: no readable images")
    synthesizer = AnomalySynthesizer(config, seed=args.seed)
    enabled = list(config.weights())
    results = []
    for i in range(n):
        target = i % len(images)
        donors = [im for j, im in enumerate(images) if j != target] or images
        if args.method == "cycle":
            method = enabled[i % len(enabled)]
        elif args.method == "random":
            method = None
        else:
            method = args.method
        result = synthesizer.synthesize_detailed(images[target], donors, method=method)
        results.append(result)
    out = preview_grid(results, args.out, columns=args.columns)
    print(f"class settings: {class_name or 'default'}", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
