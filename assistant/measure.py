"""Millimetres from what the user says: a scale ("0.1 mm per pixel", "the image is 50 mm wide") and a
size limit ("reject above 2 mm") parsed from a message, and region sizes in pixels and millimetres.

The engine measures in pixels only; a scale is a fact only the user has, so sizes in millimetres
appear exactly when the user has given one in the question, earlier in the conversation, or as a
setting.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .result import Detection, Region

NUMBER = r"(\d*[.,]?\d+)"
# millimetres per unit; the longest spellings first so that "mm" never reads as "m"
UNITS_MM = {"millimetres": 1.0, "millimeters": 1.0, "millimetre": 1.0, "millimeter": 1.0, "mm": 1.0,
            "centimetres": 10.0, "centimeters": 10.0, "centimetre": 10.0, "centimeter": 10.0, "cm": 10.0,
            "micrometres": 1e-3, "micrometers": 1e-3, "micrometre": 1e-3, "micrometer": 1e-3, "microns": 1e-3,
            "micron": 1e-3, "µm": 1e-3, "μm": 1e-3, "um": 1e-3, "inches": 25.4, "inch": 25.4}
LENGTH = "(" + "|".join(re.escape(unit) for unit in UNITS_MM) + r")(?![a-zµμ])"
PIXEL = r"(?:pixels?|px|pix)(?![a-z])"
IMAGE = r"(?:image|photo|picture|frame|field of view|fov|view|shot)"
TALL = r"(?:tall|high|height)"

PER_PIXEL = re.compile(rf"{NUMBER}\s*{LENGTH}\s*(?:per|/|a|an|for each|for every|each)\s*{PIXEL}")
PIXELS_PER = re.compile(rf"{NUMBER}\s*{PIXEL}\s*(?:per|/|a|an|for each|for every|each)\s*{LENGTH}")
PIXEL_EQUALS = re.compile(rf"(?:(?:1|one|a|an|each|every)\s*{PIXEL}|pixel size|pixel pitch)\s*(?:is|=|equals|corresponds to|covers|of|:)?\s*"
                          rf"(?:about |roughly |around )?{NUMBER}\s*{LENGTH}")
PIXELS_EQUAL = re.compile(rf"{NUMBER}\s*{PIXEL}\s*(?:is|are|=|equals?|correspond to|cover)\s*{NUMBER}\s*{LENGTH}")
APPROX = r"(?:about |roughly |around |approximately |exactly |some )?"
SIDE = rf"(wide|across|in width|long|{TALL})"
# "the image is 50 mm wide", "the photo covers about 120 mm", "field of view: 40 mm high"
IMAGE_IS = re.compile(rf"{IMAGE}\s*(?:is|was|covers|shows|spans|measures|of|:|=)?\s*{APPROX}{NUMBER}\s*{LENGTH}\s*{SIDE}?")
# "a 50 mm wide image", "a 40 mm field of view"
SIDE_IMAGE = re.compile(rf"{NUMBER}\s*{LENGTH}\s*{SIDE}?\s*{IMAGE}\b")
# "image width is 50 mm", "the width of the photo is 5 cm"
IMAGE_SIDE = re.compile(rf"(?:{IMAGE}\s*(width|{TALL})|(width|{TALL}) of the {IMAGE})\b[^.?!;\d]{{0,12}}?{NUMBER}\s*{LENGTH}")

SCALE_PATTERNS = (PER_PIXEL, PIXELS_PER, PIXELS_EQUAL, PIXEL_EQUALS, IMAGE_SIDE, IMAGE_IS, SIDE_IMAGE)
LIMIT_WORDS = (r"reject|scrap|discard|fail|limit|tolerance|tolerate|max|maximum|allowed|allowable|accept|acceptable|"
               r"spec|larger|bigger|longer|wider|greater|more than|above|over|exceed|exceeds|exceeding|beyond|up to|"
               r"at most|under|below|less than|smaller|shorter|within")
SIZE = re.compile(rf"{NUMBER}\s*(?:{LENGTH}|({PIXEL}))")
SENTENCE_END = re.compile(r"[.?!;]\s|[.?!;]$")


@dataclass(frozen=True)
class Limit:
    """A size limit the user gave: regions longer than it fail."""

    value: float
    unit: str  # "mm" or "px"

    def text(self) -> str:
        return f"{format_number(self.value)} {self.unit}"


@dataclass(frozen=True)
class RegionSize:
    width_px: int
    height_px: int
    area_fraction: float
    mm_per_pixel: float | None

    @property
    def length_px(self) -> int:
        return max(self.width_px, self.height_px)

    def length(self, unit: str) -> float | None:
        """The longer side of the region's box in 'mm' or 'px' (None in mm without a scale)."""
        if unit == "px":
            return float(self.length_px)
        return None if self.mm_per_pixel is None else self.length_px * self.mm_per_pixel


def parse_scale(text: str, image_size: tuple[int, int]) -> float | None:
    """Millimetres per pixel stated in `text`, or None. `image_size` (width, height) turns an image
    extent ("the image is 50 mm wide") into a scale."""
    lowered = _normalise(text)
    if match := PER_PIXEL.search(lowered):
        return _positive(_float(match[1]) * UNITS_MM[match[2]])
    if match := PIXELS_PER.search(lowered):
        return _positive(UNITS_MM[match[2]] / max(_float(match[1]), 1e-12))
    if match := PIXELS_EQUAL.search(lowered):
        return _positive(_float(match[2]) * UNITS_MM[match[3]] / max(_float(match[1]), 1e-12))
    if match := PIXEL_EQUALS.search(lowered):
        return _positive(_float(match[1]) * UNITS_MM[match[2]])
    width, height = image_size
    if match := IMAGE_SIDE.search(lowered):
        side = match[1] or match[2]
        return _positive(_float(match[3]) * UNITS_MM[match[4]] / _side_pixels(side, width, height))
    if match := IMAGE_IS.search(lowered) or SIDE_IMAGE.search(lowered):
        return _positive(_float(match[1]) * UNITS_MM[match[2]] / _side_pixels(match[3] or "wide", width, height))
    return None


def parse_limit(text: str) -> Limit | None:
    """A size limit in `text` ("reject above 2 mm", "our tolerance is 0.5 mm", "max 40 px"): a length
    in a sentence that speaks of a limit, once any scale statement is taken out; else None."""
    lowered = _normalise(text)
    for pattern in SCALE_PATTERNS:
        lowered = pattern.sub(" ", lowered)
    for sentence in SENTENCE_END.split(lowered):
        if not re.search(rf"\b({LIMIT_WORDS})\b|[<>≤≥]", sentence):
            continue
        if match := SIZE.search(sentence):
            value = _float(match[1])
            if value <= 0:
                continue
            if match[3]:
                return Limit(value, "px")
            return Limit(value * UNITS_MM[match[2]], "mm")
    return None


def latest(parse, texts: list[str]):
    """The first non-None result of `parse` over `texts` (newest first)."""
    for text in texts:
        found = parse(text)
        if found is not None:
            return found
    return None


def region_size(region: Region, mm_per_pixel: float | None) -> RegionSize:
    x0, y0, x1, y1 = region.box
    return RegionSize(int(x1 - x0), int(y1 - y0), float(region.area_fraction), mm_per_pixel)


def largest_region(detection: Detection) -> Region | None:
    """The region with the longest box side: the one a size limit decides on."""
    if not detection.regions:
        return None
    return max(detection.regions, key=lambda r: max(r.box[2] - r.box[0], r.box[3] - r.box[1]))


def format_length(value: float, unit: str) -> str:
    return f"{format_number(value)} {unit}"


def format_number(value: float) -> str:
    """Two significant digits, at most two decimals: region boxes are only good to a few pixels."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value:.2f}".rstrip("0").rstrip(".") if value >= 0.01 else f"{value:.3g}"


def _side_pixels(side: str, width: int, height: int) -> float:
    pixels = height if re.fullmatch(TALL, side or "") else width
    return float(max(pixels, 1))


def _normalise(text: str) -> str:
    return " ".join(str(text).lower().replace("×", "x").split())


def _float(text: str) -> float:
    return float(text.replace(",", "."))


def _positive(value: float) -> float | None:
    return value if value > 0 else None
