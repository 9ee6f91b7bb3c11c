"""The surface texture map on real textile photos: a zone finished differently stands out, the
reference itself does not, only surfaces get the map, and it shows where without deciding."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter

from assistant.engine import AnomalyEngine
from assistant.maps.memory_bank import augment
from assistant.maps.texture_map import TextureBank, window_stats


@pytest.fixture(scope="module")
def engine():
    return AnomalyEngine("embedded", checkpoint_dir="/nonexistent-untrained")


@pytest.fixture(scope="module")
def plain(engine):
    """The same engine without the texture map."""
    return AnomalyEngine({**engine.preset, "anomaly_map": {k: v for k, v in engine.map_cfg.items() if k != "texture_map"}},
                         checkpoint_dir="/nonexistent-untrained")


@pytest.fixture(scope="module")
def nominal():
    data = pytest.importorskip("conformal_clip_data")
    return [Image.open(p).convert("RGB") for p in sorted(data.nominal_dir().glob("*.jpg"))[:2]]


def refinished_bottom(image: Image.Image) -> Image.Image:
    """The bottom third sharpened and its contrast doubled: every patch is still weave, but the
    finish of that zone is not the reference's."""
    out = image.copy()
    height = image.height
    box = (0, 2 * height // 3, image.width, height)
    zone = ImageEnhance.Contrast(image.crop(box).filter(ImageFilter.SHARPEN)).enhance(2.0)
    out.paste(zone, box)
    return out


def test_window_stats_need_an_odd_window():
    with pytest.raises(ValueError, match="odd"):
        window_stats(torch.zeros(1, 3, 8, 8), 4)
    stats = window_stats(torch.arange(64.0).reshape(1, 1, 8, 8), 3)
    assert stats.shape == (1, 2, 8, 8) and float(stats[0, 1].min()) > 0


def test_a_refinished_zone_stands_out_and_the_reference_does_not(engine, nominal):
    reference, other = nominal
    level = engine.map_cfg["texture_map"]["level"]
    views = engine.encode_each(augment([reference], engine.bank.cfg["augmentations"]))
    bank = TextureBank(level, 15).fit([v.levels for v in views], [views[0].levels])
    assert bank.unit > 0
    assert float(bank.distance_maps(views[0].levels).max()) < 0.05  # in the bank itself (cdist rounding aside)

    plain = bank.distance_maps(engine.encode([other]).levels)[0].numpy()
    changed = bank.distance_maps(engine.encode([refinished_bottom(other)]).levels)[0].numpy()
    rows = changed.shape[0]
    top, bottom = slice(0, rows // 3), slice(rows - rows // 4, rows)
    assert changed[bottom].mean() > 1.5 * plain[bottom].mean()
    assert changed[bottom].mean() > 1.5 * changed[top].mean()


def test_only_surfaces_get_the_texture_map(engine, plain, nominal, tire_dir):
    surface = engine.references([nominal[0]], "textile")
    assert surface.texture is not None and not surface.relative
    tire = Image.open(sorted((tire_dir / "train" / "good").iterdir())[0]).convert("RGB")
    part = engine.references([tire], "tire")
    assert part.relative and part.texture is None
    assert plain.references([nominal[0]], "textile").texture is None


def test_the_texture_map_shows_where_but_does_not_decide(engine, plain, nominal):
    """Added to the map, not to the score: score and threshold are those of the engine without it,
    the reference's own map is unchanged, and a refinished zone lights up where it is."""
    reference, other = nominal
    query = refinished_bottom(other)
    shown, unshown = engine.detect(query, [reference], "textile"), plain.detect(query, [reference], "textile")
    assert shown.score == pytest.approx(unshown.score) and shown.threshold == pytest.approx(unshown.threshold)
    added = shown.anomaly_map - unshown.anomaly_map
    assert np.isfinite(added).all() and float(added.min()) > -1e-5
    third = added.shape[0] // 3
    assert added[2 * third:].mean() > 3 * added[:third].mean() and added[2 * third:].mean() > 0
    itself = engine.detect(reference, [reference], "textile")
    assert not itself.anomalous
    np.testing.assert_allclose(itself.anomaly_map, plain.detect(reference, [reference], "textile").anomaly_map, atol=1e-5)
