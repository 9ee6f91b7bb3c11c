"""Reading user images safely.

Every entry point (UI, `ask`, `inspect`, `eval`) goes through `load_image`, so a broken, huge or
odd file turns into one `ImageError` with a one-line message instead of a traceback.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Decompression bombs: refuse before decoding. 50 megapixels covers any line camera we know of.
MAX_PIXELS = 50_000_000
MAX_FILE_BYTES = 200 * 1024 * 1024
MIN_SIDE = 8
# Up to this aspect ratio an image can be one view of the encoder; beyond it the engine scores it
# as a strip in tiles (assistant/tiling.py), which needs a short side of MIN_STRIP_SIDE pixels
# (two cells of the encoder's coarsest grid).
MAX_ASPECT = 20.0
MIN_STRIP_SIDE = 64

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageError(ValueError):
    """A user-facing, one-line problem with an input image."""


def _name(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    return "image"


def load_image(source, name: str | None = None) -> Image.Image:
    """Open a path, bytes, numpy array or PIL image as an upright 8-bit RGB PIL image.

    Handles grayscale, RGBA, palette, 16-bit, CMYK, animated (first frame) and EXIF-rotated images.
    """
    label = name or _name(source)
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source, label)
    else:
        image = _open(source, label)
    return _to_rgb(image, label)


def _open(source, label: str) -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.exists():
            raise ImageError(f"{label}: file not found")
        if path.is_dir():
            raise ImageError(f"{label}: is a folder, not an image")
        size = path.stat().st_size
        if size == 0:
            raise ImageError(f"{label}: file is empty (0 bytes)")
        if size > MAX_FILE_BYTES:
            raise ImageError(f"{label}: file is too large ({size // 2**20} MiB > {MAX_FILE_BYTES // 2**20} MiB)")
        data = path.read_bytes()
    if not data:
        raise ImageError(f"{label}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_size(image.size, label)
            image.seek(0)
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{label}: image is too large to decode safely (over {MAX_PIXELS // 1_000_000} megapixels)")
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not a readable image (unknown or unsupported format)")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{label}: image data is damaged or truncated ({_short(exc)})")
    return image


def _check_size(size, label: str) -> None:
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageError(f"{label}: image is too large ({width}x{height}; limit {MAX_PIXELS // 1_000_000} megapixels)")
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"{label}: image is too small ({width}x{height}; at least {MIN_SIDE}x{MIN_SIDE} pixels needed)")
    if max(width, height) / min(width, height) > MAX_ASPECT and min(width, height) < MIN_STRIP_SIDE:
        raise ImageError(f"{label}: aspect ratio {width}x{height} is too extreme (more than {MAX_ASPECT:.0f}:1 "
                         f"needs a short side of at least {MIN_STRIP_SIDE} pixels, scored as a strip in tiles)")


def _from_array(array: np.ndarray, label: str) -> Image.Image:
    if array.ndim not in (2, 3) or array.size == 0:
        raise ImageError(f"{label}: expected an HxW or HxWxC array, got shape {array.shape}")
    _check_size((array.shape[1], array.shape[0]), label)
    if array.dtype != np.uint8:
        array = _rescale_to_uint8(array.astype(np.float64))
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(array)


def _rescale_to_uint8(array: np.ndarray) -> np.ndarray:
    top = array.max() if array.size else 1.0
    if top <= 1.0:
        array = array * 255.0
    elif top > 255.0:
        array = array / (65535.0 if top <= 65535 else top) * 255.0
    return np.clip(array, 0, 255).astype(np.uint8)


def _to_rgb(image: Image.Image, label: str) -> Image.Image:
    _check_size(image.size, label)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not make a good picture unreadable
        pass
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = Image.fromarray(_rescale_to_uint8(np.asarray(image, dtype=np.float64)))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def load_mask(path, size: tuple[int, int]) -> np.ndarray:
    """A ground-truth mask as a boolean HxW array matching `size` (width, height) of its image."""
    try:
        mask = Image.open(path)
        mask.load()
    except (OSError, UnidentifiedImageError) as exc:
        raise ImageError(f"{path}: mask is not a readable image ({_short(exc)})")
    mask = mask.convert("L")
    if mask.size != tuple(size):
        mask = mask.resize(size, Image.NEAREST)
    return np.asarray(mask) > 127


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]
