"""Anomaly synthesis (training/synthesis/) on real normal images.

Textile images come from the MIT `conformal-clip-data` package; the tire images from
../shared/datasets/tire (skipped with a message when that folder is absent).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from assistant.foreground import estimate_foreground
from assistant.images import load_image
from training.synthesis import (
    METHODS,
    AnomalySynthesizer,
    SynthesisConfig,
    load_synthesis_config,
    main,
    perlin_noise,
    preview_grid,
)

ROOT = Path(__file__).resolve().parents[1]
TIRE_DIR = ROOT.parent / "shared" / "datasets" / "tire" / "train" / "good"


def _small(image: Image.Image, longest: int = 256) -> Image.Image:
    factor = longest / max(image.size)
    if factor >= 1:
        return image
    return image.resize((round(image.width * factor), round(image.height * factor)), Image.BILINEAR)


@pytest.fixture(scope="module")
def textile_images() -> list[Image.Image]:
    ccd = pytest.importorskip("conformal_clip_data", reason="pip install conformal-clip-data (MIT textile set)")
    files = sorted(Path(ccd.nominal_dir()).glob("*.jpg"))[:5]
    assert len(files) == 5
    return [load_image(f) for f in files]


@pytest.fixture(scope="module")
def tire_images() -> list[Image.Image]:
    if not TIRE_DIR.is_dir():
        pytest.skip(f"tire dataset not found at {TIRE_DIR} (see ../shared/datasets/README.md)")
    files = sorted(TIRE_DIR.glob("*.jpg"))[:4]
    if len(files) < 2:
        pytest.skip(f"too few tire images in {TIRE_DIR}")
    return [_small(load_image(f)) for f in files]


@pytest.fixture(params=["textile", "tire"])
def dataset(request, textile_images):
    """(class name, images) for each data set; tire skips when the data is absent."""
    if request.param == "textile":
        return "textile", textile_images
    return "tire", request.getfixturevalue("tire_images")


def _arrays(image: Image.Image, mask: np.ndarray):
    return np.asarray(image, dtype=np.int16), np.asarray(mask)


# ---- configuration ----------------------------------------------------------------------------
def test_config_per_class():
    textile = load_synthesis_config("textile")
    assert textile.foreground == "none" and textile.rotate and textile.flip
    tire = load_synthesis_config("tire")
    assert tire.foreground == "auto" and not tire.rotate
    tile = load_synthesis_config("magnetic_tile")
    assert not tile.rotate and tile.flip
    assert load_synthesis_config("Magnetic Tile") == tile  # names are normalised
    for config in (textile, tire, tile):
        assert set(config.weights()) <= set(METHODS) and abs(sum(config.weights().values()) - 1) < 1e-9


def test_unknown_class_gets_default():
    default = load_synthesis_config(None)
    assert load_synthesis_config("no_such_class") == default
    raw = json.loads((ROOT / "training" / "synthesis.json").read_text())["default"]
    assert default.foreground == raw["foreground"] and default.max_patches == raw["max_patches"]


def test_config_validation(tmp_path):
    with pytest.raises(ValueError):
        SynthesisConfig(methods={"poisson": 1.0, "mystery": 1.0})
    with pytest.raises(ValueError):
        SynthesisConfig(foreground="sometimes")
    with pytest.raises(ValueError):
        SynthesisConfig(patch_min_width=0.5, patch_max_width=0.1)
    path = tmp_path / "synthesis.json"
    path.write_text(json.dumps({"default": {"foreground": "none"}, "classes": {"x": {"methods": {"perlin": 0}}}}))
    assert load_synthesis_config("x", path).weights() == pytest.approx({"poisson": 4 / 7, "cutpaste": 3 / 7})
    path.write_text(json.dumps({"default": {"typo_setting": 1}}))
    with pytest.raises(ValueError):
        load_synthesis_config(None, path)


# ---- determinism --------------------------------------------------------------------------------
def test_same_seed_same_result(dataset):
    name, images = dataset
    config = load_synthesis_config(name)
    image, donors = images[0], images[1:]
    first = AnomalySynthesizer(config, seed=7).synthesize(image, donors)
    again = AnomalySynthesizer(config, seed=7).synthesize(image, donors)
    other = AnomalySynthesizer(config, seed=8).synthesize(image, donors)
    assert np.array_equal(np.asarray(first[0]), np.asarray(again[0]))
    assert np.array_equal(first[1], again[1])
    assert not (np.array_equal(np.asarray(first[0]), np.asarray(other[0])) and np.array_equal(first[1], other[1]))


def test_passed_rng_is_the_only_source(textile_images):
    config = load_synthesis_config("textile")
    image, donors = textile_images[0], textile_images[1:]
    synth = AnomalySynthesizer(config, seed=3)
    a = synth.synthesize(image, donors, rng=np.random.default_rng(11))
    b = AnomalySynthesizer(config, seed=99).synthesize(image, donors, rng=np.random.default_rng(11))
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and np.array_equal(a[1], b[1])
    # the internal generator was not touched by the call with an explicit rng
    after = synth.synthesize(image, donors)
    fresh = AnomalySynthesizer(config, seed=3).synthesize(image, donors)
    assert np.array_equal(np.asarray(after[0]), np.asarray(fresh[0])) and np.array_equal(after[1], fresh[1])


# ---- exact masks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_mask_is_exact(dataset, method):
    name, images = dataset
    config = load_synthesis_config(name)
    synth = AnomalySynthesizer(config, seed=0)
    for i in range(4):
        image = images[i % len(images)]
        donors = [im for j, im in enumerate(images) if j != i % len(images)]
        result = synth.synthesize_detailed(image, donors, method=method)
        out, mask = _arrays(result.image, result.mask)
        before = np.asarray(image, dtype=np.int16)
        assert result.image.mode == "RGB" and result.image.size == image.size
        assert mask.dtype == bool and mask.shape == before.shape[:2]
        assert mask.sum() >= config.min_mask_pixels
        diff = np.abs(out - before).max(axis=2)
        if "poisson" in result.methods:
            assert diff[~mask].max(initial=0) <= config.change_threshold
        else:
            assert diff[~mask].max(initial=0) == 0
        assert diff[mask].mean() >= config.min_mean_change * 0.5  # the anomaly is really there
        assert set(result.methods) <= {method, "cutpaste", "fallback"}


def test_flat_image_still_gets_an_anomaly():
    config = SynthesisConfig(min_mask_pixels=30)
    image = Image.new("RGB", (48, 40), (128, 128, 128))
    out, mask = AnomalySynthesizer(config, seed=1).synthesize(image, [])
    assert mask.sum() >= 30
    diff = np.abs(np.asarray(out, dtype=np.int16) - 128).max(axis=2)
    assert diff[~mask].max(initial=0) == 0 and diff[mask].min() > 0


# ---- foreground -----------------------------------------------------------------------------------
def test_tire_anomalies_land_on_the_tire(tire_images):
    config = load_synthesis_config("tire")
    assert config.foreground == "auto"
    synth = AnomalySynthesizer(config, seed=5)
    inside = total = 0
    for i, image in enumerate(tire_images):
        fg = estimate_foreground(image)
        assert 0.15 < fg.mean() < 0.8, "the tyre covers roughly a third of the frame"
        for method in METHODS:
            _, mask = synth.synthesize(image, tire_images[:i] + tire_images[i + 1:], method=method)
            inside += int((mask & fg).sum())
            total += int(mask.sum())
    assert inside / total >= 0.9


def test_texture_foreground_is_everything(textile_images):
    assert estimate_foreground(textile_images[0]).all()


def test_foreground_finds_an_object_quickly():
    rng = np.random.default_rng(0)
    image = rng.normal(20, 4, size=(512, 384, 3))
    yy, xx = np.mgrid[:512, :384]
    blob = ((yy - 250) / 150.0) ** 2 + ((xx - 200) / 90.0) ** 2 < 1
    image[blob] = rng.normal(110, 25, size=(int(blob.sum()), 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    fg = estimate_foreground(image)
    assert (fg & blob).sum() / blob.sum() > 0.95, "the object is covered"
    assert (fg & ~blob).sum() / blob.sum() < 0.3, "at most a thin margin around it"
    times = []
    for _ in range(5):
        start = time.perf_counter()
        estimate_foreground(image)
        times.append(time.perf_counter() - start)
    assert min(times) < 0.02, f"estimate_foreground took {min(times) * 1000:.1f} ms at 512 px"


def test_perlin_noise_shape_range_and_seed():
    a = perlin_noise((50, 70), (4, 2), np.random.default_rng(0))
    b = perlin_noise((50, 70), (4, 2), np.random.default_rng(0))
    c = perlin_noise((50, 70), (4, 2), np.random.default_rng(1))
    assert a.shape == (50, 70) and np.isfinite(a).all()
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a).max() <= 1.5 and a.std() > 0.05


# ---- preview --------------------------------------------------------------------------------------
def test_preview_grid(tmp_path, textile_images):
    synth = AnomalySynthesizer(load_synthesis_config("textile"), seed=0)
    items = [synth.synthesize_detailed(textile_images[0], textile_images[1:], method=m) for m in METHODS]
    items.append((textile_images[1], np.zeros((250, 250), bool)))
    path = preview_grid(items, tmp_path / "grid.png", columns=2)
    with Image.open(path) as grid:
        assert grid.format == "PNG" and grid.width > grid.height > 300
        pixels = np.asarray(grid.convert("RGB"))
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    assert red.sum() > 20, "mask contours are drawn in red"
    with pytest.raises(ValueError):
        preview_grid([], tmp_path / "empty.png")


def test_preview_cli_textile(tmp_path):
    out = tmp_path / "textile.png"
    run = subprocess.run([sys.executable, "-m", "training.synthesis", "--data", "conformal-clip-data",
                          "--out", str(out), "--n", "4", "--seed", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == str(out)
    with Image.open(out) as grid:
        assert grid.format == "PNG"
        assert 400 < grid.width < 5000 and 200 < grid.height < 5000


def test_preview_cli_tire(tmp_path, capsys, tire_images):
    out = tmp_path / "tire.png"
    assert main(["--data", str(TIRE_DIR), "--out", str(out), "--n", "3", "--columns", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as grid:
        assert grid.format == "PNG" and grid.width > grid.height > 200
