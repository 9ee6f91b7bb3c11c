"""Small image operations the synthesis methods share: noise, patch geometry, jitter, and the check
that a synthesised defect is visible at all."""
from __future__ import annotations

import math

import cv2
import numpy as np


class Failed(Exception):
    """One method could not produce a visible anomaly for this image."""


def is_gray(array: np.ndarray) -> bool:
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


def to_gray(array: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2GRAY)
    return np.repeat(gray[:, :, None], 3, axis=2)


def rotate(content: np.ndarray, shape: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
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
        raise Failed("rotated shape vanished")
    crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return content[crop], shape[crop]


def fit(content: np.ndarray, shape: np.ndarray, max_h: int, max_w: int) -> tuple[np.ndarray, np.ndarray]:
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
            raise Failed("patch vanished when shrunk")
    return content, shape


def scar_shape(length: int, thickness: int, angle: float) -> np.ndarray:
    """A thin rotated rectangle (a scratch), cropped to its bounding box."""
    box = cv2.boxPoints(((length, length), (float(length), float(thickness)), angle))
    canvas = np.zeros((2 * length + 2, 2 * length + 2), dtype=np.uint8)
    cv2.fillPoly(canvas, [np.round(box).astype(np.int32)], 1)
    ys, xs = np.nonzero(canvas)
    return canvas[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(bool)


def away_from_one(rng: np.random.Generator, largest: float, gap: float) -> float:
    """A random factor in [1/largest, largest] whose log is at least `gap` away from 0."""
    magnitude = rng.uniform(gap, math.log(largest))
    return float(math.exp(magnitude if rng.random() < 0.5 else -magnitude))


def scale_contrast(patch: np.ndarray, gain: float) -> np.ndarray:
    p = patch.astype(np.float32)
    mean = p.mean(axis=(0, 1), keepdims=True)
    return np.clip(np.rint((p - mean) * gain + mean), 0, 255).astype(np.uint8)


def jitter(patch: np.ndarray, rng: np.random.Generator, gray: bool, strength: float = 1.0) -> np.ndarray:
    """Brightness / contrast (and, for colour images, per-channel colour) jitter that is never a
    no-op: the brightness shift is at least 12 levels and the contrast at least ~20% off."""
    p = patch.astype(np.float32)
    mean = p.mean()
    contrast = away_from_one(rng, 1.0 + 0.6 * strength, 0.2)
    shift = rng.uniform(12.0, 12.0 + 30.0 * strength) * (1.0 if rng.random() < 0.5 else -1.0)
    p = (p - mean) * contrast + mean + shift
    if not gray:
        gains = rng.uniform(1.0 - 0.15 * strength, 1.0 + 0.15 * strength, size=3).astype(np.float32)
        p = p * gains
    return np.clip(np.rint(p), 0, 255).astype(np.uint8)


def strong_jitter(image: np.ndarray, rng: np.random.Generator, gray: bool) -> np.ndarray:
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


def shuffle_tiles(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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


def drop_specks(mask: np.ndarray, min_area: int) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return mask
    keep = 1 + np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_area)
    return np.isin(labels, keep)


def check_visible(out: np.ndarray, before: np.ndarray, mask: np.ndarray, min_change: float,
                   structural: bool) -> None:
    """Reject anomalies a person would not see.

    A texture patch swapped for another piece of the same texture changes every pixel yet looks
    normal, so besides a minimal mean |change| the region must differ in mean brightness, contrast,
    gradient energy (scale / sharpness) or dominant orientation. On objects (`structural`), a large
    pixel change alone also counts: a misplaced piece of the object is a visible defect.
    """
    if not mask.any():
        raise Failed("empty mask")
    change = float(np.abs(out[mask].astype(np.int16) - before[mask].astype(np.int16)).mean())
    if change < min_change:
        raise Failed(f"change too small ({change:.1f})")
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
    raise Failed("change looks like normal texture")
