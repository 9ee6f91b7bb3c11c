"""Preview grid of synthesised anomalies, and its command line (`python -m training.synthesis`)."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from assistant.foreground import as_rgb_array

from .config import IMAGE_SUFFIXES, METHODS, configured_classes, load_synthesis_config, normalise_class
from .synthesizer import AnomalySynthesizer, SynthesisResult


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
    guess = next((part for part in reversed(folder.resolve().parts) if normalise_class(part) in classes), None)
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
