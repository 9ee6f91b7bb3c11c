"""Scales, size limits and the way round of a yes/no question, read from what users type."""
from __future__ import annotations

import numpy as np
import pytest

from assistant.measure import Limit, format_length, largest_region, parse_limit, parse_scale, region_size
from assistant.question import is_yes_no_question, polarity, question_clause, read_question
from assistant.result import Detection, Region

IMAGE = (500, 400)  # width, height in pixels


@pytest.mark.parametrize("text,mm_per_pixel", [
    ("0.1 mm per pixel", 0.1),
    ("The scale is 0.05 mm/px.", 0.05),
    ("0,2 mm per px", 0.2),
    (".5 mm per pixel", 0.5),
    ("Scale is 20 px per mm.", 0.05),
    ("10 pixels/mm", 0.1),
    ("each pixel is 5 µm", 0.005),
    ("one pixel is 25 um", 0.025),
    ("pixel size 12 μm", 0.012),
    ("1 px = 0.05 mm", 0.05),
    ("3 px = 0.3 mm", 0.1),
    ("0.01 cm per pixel", 0.1),
    ("the image is 50 mm wide", 0.1),
    ("The photo is 120 mm across, how big is it?", 0.24),
    ("the picture covers about 5 cm", 0.1),
    ("field of view: 80 mm", 0.16),
    ("a 25 cm wide photo", 0.5),
    ("image height is 40 mm", 0.1),
    ("the image is 4 cm tall", 0.1),
    ("the width of the image is 100 mm", 0.2),
    ("The IMAGE is 50 MM wide", 0.1),
])
def test_scales_people_state(text, mm_per_pixel):
    assert parse_scale(text, IMAGE) == pytest.approx(mm_per_pixel)


@pytest.mark.parametrize("text", [
    "How big is it?", "reject above 2 mm", "In the image, reject above 2 mm", "The part is 3 mm thick",
    "the defect is 40 px long", "0 mm per pixel", "Is it bigger than a millimetre?", "It is 50% of the image",
])
def test_no_scale_where_none_is_stated(text):
    assert parse_scale(text, IMAGE) is None


@pytest.mark.parametrize("text,limit", [
    ("reject above 2 mm", Limit(2.0, "mm")),
    ("Reject above 2 mm: what should I do?", Limit(2.0, "mm")),
    ("Anything longer than 1.5 mm goes to scrap.", Limit(1.5, "mm")),
    ("tolerance: 0.5mm", Limit(0.5, "mm")),
    ("defects up to 500 µm are fine", Limit(0.5, "mm")),
    ("Is it under 1 cm?", Limit(10.0, "mm")),
    ("max 40 px", Limit(40.0, "px")),
    ("Reject if longer than 40 pixels", Limit(40.0, "px")),
    ("the image is 50 mm wide, reject above 2 mm", Limit(2.0, "mm")),
    ("We scrap anything over 3mm; 0.1 mm per pixel", Limit(3.0, "mm")),
])
def test_limits_people_state(text, limit):
    assert parse_limit(text) == limit


@pytest.mark.parametrize("text", [
    "the image is 50 mm wide", "0.1 mm per pixel", "The part is 3 mm thick", "How big is the defect?",
    "reject it", "Scale is 20 px per mm.", "reject above 0 mm",
])
def test_no_limit_where_none_is_stated(text):
    """A scale is not a limit, and a length without a word of limit is a description."""
    assert parse_limit(text) is None


def test_limit_text_and_lengths():
    assert Limit(2.0, "mm").text() == "2 mm" and Limit(0.5, "mm").text() == "0.5 mm"
    assert format_length(3.6512, "mm") == "3.65 mm" and format_length(123.4, "px") == "123 px"
    region = Region(box=(10, 20, 40, 30), position="top left", area_fraction=0.001, peak=2.0)
    size = region_size(region, 0.1)
    assert (size.width_px, size.height_px, size.length_px) == (30, 10, 30)
    assert size.length("mm") == pytest.approx(3.0) and size.length("px") == 30.0
    assert region_size(region, None).length("mm") is None


def test_largest_region_is_the_longest_box():
    small = Region(box=(0, 0, 10, 10), position="top left", area_fraction=0.01, peak=5.0)
    long = Region(box=(100, 100, 160, 105), position="center", area_fraction=0.001, peak=2.0)
    detection = Detection(True, 5.0, 1.0, np.zeros((2, 2), np.float32), [small, long], (200, 200), "few-shot", 2)
    assert largest_region(detection) is long


@pytest.mark.parametrize("text,side", [
    ("Is there any anomaly?", "bad"), ("Is it damaged?", "bad"), ("Any defects?", "bad"), ("Is anything wrong?", "bad"),
    ("Should I reject it?", "bad"), ("Is there a crack?", "bad"), ("Does it need rework?", "bad"),
    ("Is it OK?", "good"), ("OK to ship?", "good"), ("Does this pass inspection?", "good"), ("Is it normal?", "good"),
    ("Is it free of defects?", "good"), ("Is there no damage?", "good"), ("Can I ship it?", "good"),
    ("Is it OK despite the scratch?", "good"), ("Is the surface smooth and clean?", "good"),
    ("Is there a defect compared with the good sample?", "bad"), ("Is it anomalous?", "bad"), ("Is it abnormal?", "bad"),
    ("Is it OK or not?", "good"),
    ("We scrap anything over 2 mm. Is this one over?", "bad"),
    ("Defects up to 1 mm are acceptable. Should I accept it?", "good"),
    ("", "bad"),  # the default question, "Is there any anomaly?"
    ("Pass or fail?", None), ("Is this a good part or a bad one?", None), ("Is it normal or anomalous?", None),
    ("Where is it?", None), ("How big is the defect? The scale is 0.1 mm per pixel.", None),
    ("Reject above 2 mm: what should I do?", None), ("Check this part for defects.", None),
])
def test_which_way_round_a_question_is(text, side):
    assert polarity(text) == side


def test_the_question_is_the_clause_with_the_question_mark():
    assert question_clause("reject above 2 mm: what should i do?") == "what should i do?"
    assert question_clause("no question here") == "no question here"
    assert is_yes_no_question("Is it fine") and is_yes_no_question("Good part?")
    assert not is_yes_no_question("Describe it.") and not is_yes_no_question("Why?")


def test_a_scale_said_now_wins_over_one_said_before_and_over_the_setting():
    history = [{"role": "user", "content": "The image is 100 mm wide. Is there a defect?"},
               {"role": "assistant", "content": "Yes, there is an anomaly."}]
    now = read_question("How big is it at 0.1 mm per pixel?", history, IMAGE, mm_per_pixel=0.3)
    assert now.mm_per_pixel == pytest.approx(0.1) and now.scale_source == "your message" and now.follow_up
    before = read_question("How big is it?", history, IMAGE, mm_per_pixel=0.3)
    assert before.mm_per_pixel == pytest.approx(0.2) and before.scale_source == "earlier in our conversation"
    setting = read_question("How big is it?", [], IMAGE, mm_per_pixel=0.3)
    assert setting.mm_per_pixel == pytest.approx(0.3) and setting.scale_source == "the scale setting"
    assert not setting.follow_up
    none = read_question("How big is it?", [], IMAGE)
    assert none.mm_per_pixel is None and none.scale_source == "" and none.limit is None
    limited = read_question("What should I do?", [{"role": "user", "content": "We reject above 2 mm."}], IMAGE)
    assert limited.limit == Limit(2.0, "mm")
