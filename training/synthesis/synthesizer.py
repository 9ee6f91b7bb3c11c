"""The synthesiser: a normal image in, an anomalous image and its exact mask out (poisson, cutpaste or
perlin, described in the package docstring)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from assistant.foreground import as_rgb_array, estimate_foreground, fill_holes

from .config import METHODS, SynthesisConfig
from .image_ops import (Failed, away_from_one, check_visible, drop_specks, fit, is_gray, jitter, perlin_noise,
                        rotate, scale_contrast, scar_shape, shuffle_tiles, strong_jitter, to_gray)


@dataclass
class SynthesisResult:
    image: Image.Image
    mask: np.ndarray
    methods: list[str]

    @property
    def caption(self) -> str:
        return "+".join(self.methods)


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
        context = _Context(original, fg, donors, is_gray(original))
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
                except Failed:
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
            content, shape = rotate(content, shape, rng.uniform(0.0, 360.0))
        return np.ascontiguousarray(content), np.ascontiguousarray(shape)

    def _place(self, shape: np.ndarray, ctx: "_Context", rng: np.random.Generator,
               margin: int = 0) -> tuple[int, int]:
        """Top-left corner for `shape` inside the image, preferably on the foreground."""
        height, width = ctx.fg.shape
        h, w = shape.shape
        max_y, max_x = height - h - margin, width - w - margin
        if max_y < margin or max_x < margin:
            raise Failed("patch larger than the image")
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
            raise Failed("no place on the foreground")
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
        content, shape = fit(content, shape, height - 6, width - 6)
        if ctx.gray:
            content = to_gray(content)
        # Poisson blending keeps the patch's gradients, so change their strength to make it show
        # (with mixed gradients only a stronger patch can win over the target's own gradients).
        flag = cv2.NORMAL_CLONE if rng.random() < 0.5 else cv2.MIXED_CLONE
        gain = away_from_one(rng, 2.2, 0.3)
        if flag == cv2.MIXED_CLONE:
            gain = max(gain, 1.0 / gain)
        content = scale_contrast(content, gain)
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
            raise Failed(str(exc))
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
        changed = drop_specks(changed, min_area=max(4, cfg.min_mask_pixels // 4))
        if changed.sum() < max(cfg.min_mask_pixels, 0.15 * shape.sum()):
            raise Failed("blend is almost invisible")
        out = current.copy()
        out[changed] = blended[changed]
        check_visible(out, current, changed, cfg.min_mean_change, structural=not ctx.all_fg)
        return out, changed

    def _cutpaste(self, current: np.ndarray, ctx: "_Context", rng: np.random.Generator):
        cfg = self.config
        height, width = current.shape[:2]
        source = ctx.donor(rng) if ctx.donors and rng.random() < 0.5 else current
        if rng.random() < cfg.scar_probability:
            thickness = max(2, round(rng.uniform(0.008, 0.03) * min(height, width)))
            length = round(rng.uniform(0.1, 0.3) * max(height, width))
            length = max(4, min(length, min(height, width) - thickness - 8))
            shape = scar_shape(length, thickness, rng.uniform(0.0, 180.0))
            h, w = shape.shape
            content = self._source_crop(source, h, w, ctx, rng)
        else:
            h, w = self._patch_size(height, width, rng)
            content = self._source_crop(source, h, w, ctx, rng)
            content, shape = self._transform(content, self._random_shape(h, w, rng), rng, scale=False)
            content, shape = fit(content, shape, height - 4, width - 4)
        content = jitter(content, rng, ctx.gray, strength=1.0)
        y0, x0 = self._place(shape, ctx, rng)
        h, w = shape.shape
        out = current.copy()
        region = out[y0:y0 + h, x0:x0 + w]
        region[shape] = content[shape]
        mask = np.zeros((height, width), dtype=bool)
        mask[y0:y0 + h, x0:x0 + w] = shape
        if mask.sum() < cfg.min_mask_pixels:
            raise Failed("patch too small")
        check_visible(out, current, mask, cfg.min_mean_change, structural=not ctx.all_fg)
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
        mask = drop_specks(mask, min_area=max(cfg.min_mask_pixels, int(0.001 * height * width)))
        if mask.sum() < cfg.min_mask_pixels:
            raise Failed("perlin region too small")
        texture = self._texture(current, ctx, rng)
        beta = rng.uniform(cfg.beta_min, cfg.beta_max)
        blend = (1.0 - beta) * current.astype(np.float32) + beta * texture.astype(np.float32)
        out = current.copy()
        out[mask] = np.clip(np.rint(blend[mask]), 0, 255).astype(np.uint8)
        check_visible(out, current, mask, cfg.min_mean_change, structural=False)
        return out, mask

    def _texture(self, current: np.ndarray, ctx: "_Context", rng: np.random.Generator) -> np.ndarray:
        """A full-size texture source: a jittered donor, or a strongly altered copy of the image."""
        choice = rng.random()
        if ctx.donors and choice < 0.4:
            texture = ctx.donor(rng)
            if rng.random() < 0.5:
                texture = shuffle_tiles(texture, rng)
            texture = jitter(texture, rng, ctx.gray, strength=1.5)
        elif choice < 0.7:
            texture = strong_jitter(current, rng, ctx.gray)
        else:
            texture = jitter(shuffle_tiles(current, rng), rng, ctx.gray, strength=1.5)
        return to_gray(texture) if ctx.gray else texture

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
        except Failed:
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
            self._cache[index] = to_gray(array) if self.gray else array
        return self._cache[index]
