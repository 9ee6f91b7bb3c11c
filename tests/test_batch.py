"""Batched detection (`batch.detect_batch`, what `inspect --batch` runs) gives what `engine.detect`
gives image by image: real engine, real images, with a reference and zero-shot."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from assistant.assistant import Assistant
from assistant.batch import detect_batch, size_groups
from assistant.images import load_image
from conftest import SHARED_DATASETS

ccd = pytest.importorskip("conformal_clip_data", reason="conformal-clip-data is not installed")


@pytest.fixture(scope="module")
def assistant():
    return Assistant("embedded", use_llm=False)


def textiles() -> tuple[list, list]:
    nominal = sorted(Path(ccd.nominal_dir()).glob("*.jpg"))
    local = sorted(Path(ccd.local_dir()).glob("*.jpg"))
    return [load_image(p) for p in (nominal[30], local[0], local[1])], [load_image(nominal[1])]


def tires() -> tuple[list, list]:
    test = SHARED_DATASETS / "tire" / "test"
    if not test.is_dir():
        pytest.skip(f"tire dataset not found at {test} (shared data is not shipped with the project)")
    files = [test / "good" / "000.jpg", test / "cut" / "000.jpg", test / "hole" / "001.jpg", test / "cut" / "004.jpg"]
    return [load_image(p) for p in files], [load_image(SHARED_DATASETS / "tire" / "train" / "good" / "000.jpg")]


def assert_same(batched, single):
    assert batched.score == pytest.approx(single.score, rel=1e-5, abs=1e-6)
    assert (batched.anomalous, batched.threshold, batched.threshold_estimated, batched.mode, batched.n_references) == \
        (single.anomalous, single.threshold, single.threshold_estimated, single.mode, single.n_references)
    assert [(r.box, r.position) for r in batched.regions] == [(r.box, r.position) for r in single.regions]
    np.testing.assert_allclose(batched.anomaly_map, single.anomaly_map, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("images_of", [textiles, tires], ids=["textile surface", "tire object (cropped)"])
def test_batched_detection_is_detection_image_by_image(assistant, images_of):
    images, references = images_of()
    engine = assistant.engine
    groups = size_groups(engine, [engine.prepare(image)[0] for image in images])
    assert any(len(group) > 1 for group in groups), f"no two views shared a forward pass: {groups}"
    for refs in (references, None):  # few-shot and zero-shot
        batched = detect_batch(engine, images, refs, "part")
        for image, detection in zip(images, batched):
            assert_same(detection, engine.detect(image, refs, "part"))
    assert any(d.anomalous for d in batched) or images_of is textiles  # the tire set holds visible cuts


def test_answers_after_detect_many_read_its_detections(assistant):
    """`inspect` detects a batch, then asks about each image: the answer must be about the batch's
    detection (the cache key matches, class name spacing included), not a second computation."""
    images, references = textiles()
    detections = assistant.detect_many(images, references, " textile ", None)
    for image, detection in zip(images, detections):
        result = assistant.chat(image, None, references, class_name=" textile ")
        assert result.detection is detection
        assert result.to_json()["score"] == round(detection.score, 6)


def test_images_detect_scores_in_tiles_take_that_path(assistant):
    """A photo larger than one view is scored in tiles by `engine.detect`; a batch must not squeeze it
    into one view beside the small images it came with."""
    images, _ = textiles()
    large = images[1].resize((1300, 1300))  # longer side above the 1024 pixels one view takes
    batched = detect_batch(assistant.engine, [images[0], large], None, "part")
    assert batched[1].image_size == (1300, 1300)
    assert_same(batched[1], assistant.engine.detect(large, None, "part"))
    assert_same(batched[0], assistant.engine.detect(images[0], None, "part"))
