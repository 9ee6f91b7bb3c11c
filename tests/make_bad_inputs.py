"""Generate the bad-input corpus at test time (nothing binary is committed).

`make_corpus(folder)` writes the files and returns {name: Case}. `expect` is "ok" when a correct
result is due (the loader copes: 16-bit, CMYK, GIF, RGBA, grey, EXIF-rotated, ...) and "error" when
one clear message is due; `words` are fragments that message must contain.
Run `python tests/make_bad_inputs.py DIR` to look at the files.
"""
from __future__ import annotations

import io
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class Case:
    path: Path
    expect: str  # "ok" | "error"
    words: list[str] = field(default_factory=list)
    size: tuple[int, int] | None = None  # upright (width, height) a correct result must have


def _texture(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 128 + 40 * np.sin(x / 5.0 + y / 9.0) + rng.normal(0, 12, (height, width))
    return np.clip(base, 0, 255).astype(np.uint8)


def good_image(width: int = 160, height: int = 160, seed: int = 0) -> Image.Image:
    grey = _texture(width, height, seed)
    return Image.fromarray(np.stack([grey, grey * 0.9, grey * 0.8], axis=-1).astype(np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose (valid-CRC) header claims width x height RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def make_corpus(folder: Path) -> dict[str, Case]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, Case] = {}

    def put(name: str, data: bytes, expect: str, words=(), size=None) -> None:
        path = folder / name
        path.write_bytes(data)
        cases[name] = Case(path, expect, list(words), size)

    good = good_image()
    png = _bytes(good, "PNG")
    jpg = _bytes(good, "JPEG", quality=90)
    put("empty.png", b"", "error", ["empty"])
    put("truncated.png", png[: len(png) // 2], "error", ["truncated.png"])
    put("truncated.jpg", jpg[: len(jpg) // 3], "error", ["truncated.jpg"])
    put("text.png", b"this is not an image, just some text\n" * 20, "error", ["not a readable image"])
    put("bomb.png", bomb_png(), "error", ["too large"])
    put("tiny_1x1.png", _bytes(Image.new("RGB", (1, 1), (128, 128, 128)), "PNG"), "error", ["too small"])
    put("wide_4000x10.png", _bytes(Image.fromarray(_texture(4000, 10)), "PNG"), "error", ["aspect"])

    put("sixteen_bit.png", _bytes(Image.fromarray((_texture(160, 160).astype(np.uint16) * 257)), "PNG"), "ok",
        size=(160, 160))
    put("cmyk.jpg", _bytes(good.convert("CMYK"), "JPEG", quality=90), "ok", size=(160, 160))
    frames = [good_image(seed=s) for s in range(3)]
    put("animated.gif", _bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "ok", size=(160, 160))
    rgba = good.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.full((160, 160), 200, np.uint8)))
    put("rgba.png", _bytes(rgba, "PNG"), "ok", size=(160, 160))
    put("gray.png", _bytes(good.convert("L"), "PNG"), "ok", size=(160, 160))
    wide = good_image(200, 120, seed=4)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display -> upright size is 120x200
    put("exif_rotated.jpg", _bytes(wide, "JPEG", quality=90, exif=exif.tobytes()), "ok", size=(120, 200))
    put("reference_other_size.png", _bytes(good_image(224, 96, seed=7), "PNG"), "ok", size=(224, 96))
    put("good.png", png, "ok", size=(160, 160))
    put("reference.png", _bytes(good_image(seed=1), "PNG"), "ok", size=(160, 160))
    return cases


def make_textile_set(folder: Path, n: int = 4) -> dict[str, list[Path]]:
    """Real normal images from the MIT textile set (conformal-clip-data) and copies with a painted dark
    blob (an obvious defect), plus one normal reference: {"reference": [p], "normal": [...], "defect": [...]}."""
    import conformal_clip_data as ccd
    from PIL import ImageDraw

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nominal = sorted(Path(ccd.nominal_dir()).glob("*.jpg"))
    out: dict[str, list[Path]] = {"reference": [], "normal": [], "defect": []}
    ref = folder / "reference_good.png"
    Image.open(nominal[-1]).convert("RGB").save(ref)
    out["reference"].append(ref)
    for i in range(n):
        image = Image.open(nominal[10 + i]).convert("RGB")
        normal = folder / f"normal_{i}.png"
        image.save(normal)
        out["normal"].append(normal)
        x, y = 40 + 40 * (i % 4), 60 + 25 * (i % 4)
        ImageDraw.Draw(image).ellipse([x, y, x + 28, y + 20], fill=(20, 20, 20))
        defect = folder / f"defect_{i}.png"
        image.save(defect)
        out["defect"].append(defect)
    return out


LONG_MESSAGE = ("Is there any anomaly in the image? " * 300)[:10_000]


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "bad_inputs")
    for name, case in make_corpus(target).items():
        print(f"{case.expect:5s} {case.path}")
