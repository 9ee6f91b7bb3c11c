"""The capture check (assistant/capture.py): a photo taken noisier or blurrier than its references
is pointed out in the answer, a photo taken like them is not, and surfaces get no check.

Synthetic photos of a part on a plain background (made here, with a camera's grain) test the
reading itself; real tire and magnetic tile photos test it through the engine and the answer."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from assistant.capture import background_detail, capture_change, reference_details

TOLERANCE = 1.5


def photo(seed: int, grain: float = 3.0, shift: int = 0) -> Image.Image:
    """A grey mat with sensor grain and a textured dark part on it, moved by `shift` pixels."""
    rng = np.random.default_rng(seed)
    image = np.full((300, 400, 3), 120.0)
    yy, xx = np.mgrid[:300, :400]
    part = (yy - 150) ** 2 + (xx - 200 - shift) ** 2 < 90 ** 2
    image[part] = 40 + 30 * (np.sin(xx[part] / 3.0) > 0)[:, None]
    image += rng.normal(0.0, grain, (300, 400, 1))  # grey grain, so the grey reading is its sigma
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def change_of(query: Image.Image, references: list[Image.Image]):
    return capture_change(background_detail(query), reference_details(references), TOLERANCE)


def test_the_background_grain_of_two_photos_taken_alike_agrees():
    first, second = background_detail(photo(0)), background_detail(photo(1, shift=25))
    assert first == pytest.approx(3.0, rel=0.15)  # Immerkaer's estimate reads the grain's sigma
    assert second == pytest.approx(first, rel=0.05)
    assert change_of(photo(1, shift=25), [photo(0)]) is None


def test_noise_blur_and_compression_are_named_with_their_size():
    references = [photo(0), photo(2, shift=-20)]
    noisier = change_of(photo(1, grain=8.0), references)
    assert noisier.change == "noisier" and noisier.ratio > 2.0
    blurred = Image.fromarray(cv2.GaussianBlur(np.asarray(photo(1)), (0, 0), 1.0))
    smoother = change_of(blurred, references)
    assert smoother.change == "smoother" and smoother.ratio < 0.5
    assert change_of(jpeg(photo(1), 40), references).change == "smoother"
    assert change_of(photo(1, grain=3.5), references) is None  # within the tolerance


def test_a_surface_filling_the_frame_has_no_background_to_read():
    texture = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    assert background_detail(Image.fromarray(texture)) is None
    assert capture_change(None, np.array([3.0]), TOLERANCE) is None


@pytest.fixture(scope="module")
def engine():
    from assistant.engine import AnomalyEngine

    return AnomalyEngine("embedded")


def test_the_answer_says_when_a_tire_was_photographed_noisier_or_blurred(engine, tire_dir):
    from assistant.answer import closing_note, grounded_answer

    reference = Image.open(sorted((tire_dir / "train" / "good").iterdir())[0]).convert("RGB")
    query = Image.open(sorted((tire_dir / "test" / "good").iterdir())[0]).convert("RGB")
    clean = engine.detect(query, [reference], "tire")
    assert clean.capture is None and clean.to_json()["capture"] is None
    assert closing_note("judgement", clean) == ""
    pixels = np.asarray(query).astype(np.float32)
    noisy = Image.fromarray(np.clip(pixels + np.random.default_rng(0).normal(0, 8, pixels.shape), 0, 255).astype(np.uint8))
    detection = engine.detect(noisy, [reference], "tire")
    assert detection.to_json()["capture"]["change"] == "noisier"
    note = closing_note("judgement", detection)
    assert note.startswith("This photo is noisier than the reference(s)") and "tire" in note
    assert closing_note("cause", detection) == note and closing_note("where", detection, follow_up=True) == ""
    assert grounded_answer("judgement", detection).split()[0].strip(",.") in ("Yes", "No")  # the verdict leads
    blurred = engine.detect(Image.fromarray(cv2.GaussianBlur(np.asarray(query), (0, 0), 1.2)), [reference], "tire")
    assert blurred.capture.change == "smoother"


def test_surfaces_get_no_capture_check(engine, magnetic_tile_dir):
    reference = Image.open(sorted((magnetic_tile_dir / "train" / "good").iterdir())[0]).convert("RGB")
    query = Image.open(sorted((magnetic_tile_dir / "test" / "good").iterdir())[0]).convert("RGB")
    assert engine.references([reference], "magnetic tile").capture is None
    assert engine.detect(query, [reference], "magnetic tile").capture is None


def test_a_tolerance_below_one_is_refused_in_one_line(engine):
    from assistant.result import EngineError

    with pytest.raises(EngineError, match="capture_check.tolerance must be a factor of at least 1"):
        engine.with_settings({"capture_check": {"tolerance": 0.5}}).capture_tolerance
    assert engine.with_settings({"capture_check": {"tolerance": None}}).capture_tolerance is None
