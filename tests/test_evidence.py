"""Visual evidence on real photos: a region's place is found on the reference photo, also when the
part was photographed turned, and the conversation, the JSON and the page's gallery show it."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from assistant.assistant import Assistant
from assistant.evidence import reference_areas
from assistant.maps.memory_bank import augmentation, view_matrix


def open_rgb(path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def assistant():
    return Assistant("embedded", use_llm=False)


def with_blot(photo: Image.Image, x: float, y: float) -> tuple[Image.Image, tuple[int, int]]:
    """The photo with a bright blot centred at (x, y) of its size, and that centre in pixels."""
    marked = photo.copy()
    cx, cy = int(x * photo.width), int(y * photo.height)
    ImageDraw.Draw(marked).ellipse((cx - 14, cy - 10, cx + 14, cy + 10), fill=(250, 250, 250))
    return marked, (cx, cy)


def centre_error(box, point) -> float:
    return float(np.hypot((box[0] + box[2]) / 2 - point[0], (box[1] + box[3]) / 2 - point[1]))


def test_each_view_matrix_takes_a_point_where_the_view_puts_it(tire_dir):
    photo = open_rgb(sorted((tire_dir / "train" / "good").iterdir())[0])
    marked = photo.copy()
    ImageDraw.Draw(marked).rectangle((96, 56, 104, 64), fill=(255, 0, 0))
    for name in ("identity", "hflip", "vflip", "rot90", "rot180", "rot270", "identity+rot30", "hflip+rot120"):
        view = np.asarray(augmentation(name)(marked)).astype(int)
        ys, xs = np.nonzero((view[..., 0] > 200) & (view[..., 1] < 60) & (view[..., 2] < 60))
        x, y, _ = view_matrix(name, photo) @ (100.5, 60.5, 1.0)
        assert abs(xs.mean() - x) < 1.5 and abs(ys.mean() - y) < 1.5, name


@pytest.mark.parametrize("angle", [0, 150])
def test_the_same_place_is_found_on_the_reference_photo_also_turned(assistant, tire_dir, angle):
    """The reference itself with a blot, photographed turned: the matching area on the reference
    lies where the blot was painted (tires are 384-512 px; the region found is about 60-100 px)."""
    engine = assistant.engine
    photo = open_rgb(sorted((tire_dir / "train" / "good").iterdir())[0])
    references = engine.references([photo], "tire")
    for x, y in ((0.35, 0.4), (0.6, 0.65)):
        marked, painted = with_blot(photo, x, y)
        query = augmentation(f"identity+rot{angle}")(marked) if angle else marked
        detection = engine.detect(query, [photo], "tire")
        assert detection.anomalous and detection.regions
        area = reference_areas(engine, query, detection, [photo], references)[0]
        assert area.reference == 0 and centre_error(area.box, painted) < 30, (angle, area, painted)


def test_a_surface_region_is_found_in_place(assistant, magnetic_tile_dir):
    engine = assistant.engine
    photo = open_rgb(sorted((magnetic_tile_dir / "train" / "good").iterdir())[0])
    marked, painted = with_blot(photo, 0.5, 0.6)
    detection = engine.detect(marked, [photo], "magnetic tile")
    area = reference_areas(engine, marked, detection, [photo], engine.references([photo], "magnetic tile"))[0]
    assert centre_error(area.box, painted) < 25 and area.similarity > 0.9, area


def test_compare_answers_with_the_reference_place_in_words_json_and_gallery(assistant, tire_dir):
    from assistant.app_ui import zoom_crops

    reference = open_rgb(sorted((tire_dir / "train" / "good").iterdir())[0])
    query = open_rgb(tire_dir / "test" / "contamination" / "021.jpg")  # flagged against this reference
    result = assistant.chat(query, "Compare it with the reference: what is different?", [reference], class_name="tire")
    assert result.intent == "compare" and result.detection.anomalous
    assert "reference 1 is at the" in result.answer or "On reference 1 the closest match" in result.answer, result.answer
    regions = result.to_json()["regions"]
    areas = [region["reference_area"] for region in regions]
    assert all(area is None or (area["reference"] == 1 and len(area["box"]) == 4) for area in areas) and any(areas)
    shown = zoom_crops(result)
    assert len(shown) == len(regions) + sum(area is not None for area in areas)
    assert any(caption.startswith("reference 1, same place") for _, caption in shown)

    normal = assistant.chat(reference, "Compare it with the reference.", [reference], class_name="tire")
    assert not normal.detection.anomalous and "reference_area" not in str(normal.to_json())
