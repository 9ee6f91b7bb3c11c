"""The evaluation protocol: dev / holdout split, capture perturbations, the logical proxy, the matrix."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from assistant.data import discover
from eval import perturb
from assistant.foreground import foreground_box
from eval import part_proxy
from eval.logical_proxy import build
from eval.protocol import family_of, in_dev, select

from test_eval import cli

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def part_on_background(size=(200, 160)) -> tuple[Image.Image, np.ndarray]:
    """A textured grey part with a bright mark (the 'defect', masked) on a plain dark background."""
    rng = np.random.default_rng(0)
    image = np.full((size[1], size[0], 3), 20, np.uint8)
    image[40:120, 50:150] = rng.integers(90, 140, (80, 100, 3))
    image[60:80, 110:130] = 250
    mask = np.zeros(image.shape[:2], bool)
    mask[60:80, 110:130] = True
    return Image.fromarray(image), mask


def texture(size=(200, 160)) -> Image.Image:
    """Diagonal stripes with grain: a woven surface filling the frame."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[:size[1], :size[0]]
    stripes = 128 + 70 * np.sin((x + y) / 6.0)
    grey = np.clip(stripes + rng.normal(0, 10, stripes.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))


def test_dev_and_holdout_halves_are_fixed_disjoint_and_cover_the_set(tmp_path):
    split = discover(small_mvtec(tmp_path))[0]
    dev, holdout = select(split, "dev"), select(split, "holdout")
    names = lambda s: {str(sample.path) for sample in s.test}
    assert names(dev) | names(holdout) == names(split) and not names(dev) & names(holdout)
    assert names(select(split, "dev")) == names(dev)  # the same every time
    assert in_dev("tire", "good", "000") == in_dev("tire", "good", "000")
    # a derived set's image goes where its source goes
    assert in_dev("tire_logical", "missing", "007__missing") == in_dev("tire", "good", "007")
    assert family_of("tire_logical") == "object" and family_of("my_part") is None
    with pytest.raises(ValueError, match="unknown split"):
        select(split, "train")


def test_rotation_moves_the_mask_with_the_part():
    image, mask = part_on_background()
    for key in ("a", "b", "c"):
        out, moved, kept = perturb.apply(["rotate"], image, mask, key)
        assert kept == 1.0  # a part keeps all of itself on its grown canvas
        array = np.asarray(out)
        assert out.size[0] >= image.size[0] - 1 and out.size[1] >= image.size[1] - 1  # the whole part stays in
        assert moved.sum() >= 0.9 * mask.sum()
        bright = array.min(axis=2) > 200
        overlap = (bright & moved).sum() / max(1, (bright | moved).sum())
        assert overlap > 0.6, f"mask and mark overlap {overlap:.2f} after rotation {key}"
        assert array[:8, :8].mean() < 40  # corners filled with background, not black or part


def test_a_surface_is_cropped_to_real_pixels_after_rotation():
    image = texture()
    out, _, _ = perturb.apply(["rotate"], image, None, "x")
    array = np.asarray(out)
    assert out.size[0] < image.size[0] and out.size[1] < image.size[1]
    assert abs(out.size[0] / out.size[1] - image.size[0] / image.size[1]) < 0.05
    assert (array.max(axis=2) == 0).mean() < 0.001  # no filled corners


def test_a_turned_surface_keeps_its_defect_in_the_frame_or_says_it_lost_it():
    image = np.asarray(texture()).copy()
    height, width = image.shape[:2]
    corner = np.zeros((height, width), bool)
    corner[4:14, 4:14] = True  # a defect in a corner, which a turned frame of real pixels cannot hold
    kept_corner = []
    for key in ("a", "b", "c", "d", "e", "f"):
        _, moved, kept = perturb.apply(["rotate", "shift"], Image.fromarray(image), corner, key)
        assert abs(kept - moved.sum() / corner.sum()) < 0.35  # the share is what the frame shows (resampled)
        kept_corner.append(kept)
    assert min(kept_corner) < 0.5
    # Among the largest frames of real pixels, the one over the defect is kept.
    valid = np.ones((100, 200), bool)
    defect = np.zeros_like(valid)
    defect[40:50, 10:20] = True
    x0, y0, x1, y1 = perturb.largest_valid_rectangle(valid, 1.0, defect)
    assert min(x1 - x0, y1 - y0) >= 98 and x0 <= 10
    assert abs(perturb.largest_valid_rectangle(valid, 1.0)[0] - 50) <= 1  # without a defect: the centred one
    # Without masks a surface is only turned by right angles: every pixel stays.
    out, _, kept = perturb.apply(["rotate", "shift"], Image.fromarray(image), None, "a", keep_every_pixel=True)
    assert sorted(out.size) == sorted((width, height)) and kept == 1.0
    assert np.array_equal(np.sort(np.asarray(out), axis=None), np.sort(image, axis=None))


def test_perturbations_are_reproducible_and_change_the_image():
    image, mask = part_on_background()
    names = perturb.parse("light,blur,jpeg,noise,shift,scale")
    first, _, _ = perturb.apply(names, image, mask, "k")
    again, _, _ = perturb.apply(names, image, mask, "k")
    other, _, _ = perturb.apply(names, image, mask, "other")
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))
    for name in ("light", "blur", "jpeg", "noise"):
        changed, same_mask, _ = perturb.apply([name], image, mask, "k")
        assert np.abs(np.asarray(changed, np.int16) - np.asarray(image, np.int16)).mean() > 0.3, name
        assert np.array_equal(same_mask, mask)  # light and focus do not move the defect
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb.parse("rotate,sharpen")


def test_an_image_gets_the_same_change_however_its_root_is_spelled(tmp_path, monkeypatch):
    image, mask = part_on_background()
    monkeypatch.chdir(tmp_path)
    relative = Path("..") / tmp_path.name / "tire" / "test" / "cut" / "003.png"
    absolute = tmp_path / "tire" / "test" / "cut" / "003.png"
    assert perturb.key_of(relative) == perturb.key_of(absolute) == "tire/test/cut/003.png"
    turned = [perturb.apply(["rotate", "shift"], image, mask, perturb.key_of(path))[0] for path in (relative, absolute)]
    assert np.array_equal(np.asarray(turned[0]), np.asarray(turned[1]))


def small_mvtec(tmp_path) -> Path:
    """part/{train/good, test/good, test/mark, ground_truth/mark}: parts on a plain background."""
    root = tmp_path / "part"
    for folder in ("train/good", "test/good", "test/mark", "ground_truth/mark"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i in range(6):
        image, mask = part_on_background()
        clean = np.asarray(image).copy()
        clean[60:80, 110:130] = rng.integers(90, 140, (20, 20, 3))
        Image.fromarray(clean).save(root / "train" / "good" / f"{i:03d}.png")
        Image.fromarray(clean).save(root / "test" / "good" / f"{i:03d}.png")
        image.save(root / "test" / "mark" / f"{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "ground_truth" / "mark" / f"{i:03d}_mask.png")
    return root


def test_logical_proxy_is_an_mvtec_set_with_masks_where_the_image_changed(tmp_path):
    split = discover(small_mvtec(tmp_path))[0]
    root = build(split, tmp_path / "proxies")
    proxy = discover(root)[0]
    assert proxy.name == "part_logical" and proxy.has_masks
    assert {"missing", "extra", "turned", "colour"} >= set(proxy.defect_types) >= {"missing", "colour"}
    for sample in [s for s in proxy.test if s.label == 1]:
        source = root / "test" / "good" / f"{sample.path.stem.split('__')[0]}.png"
        changed = np.abs(np.asarray(Image.open(sample.path), np.int16) - np.asarray(Image.open(source), np.int16)).max(axis=2) > 0
        mask = np.asarray(Image.open(sample.mask_path)) > 127
        assert mask.any() and changed[mask].mean() > 0.5, sample.path.name
        assert changed[~mask].mean() < 0.01, sample.path.name  # nothing changed outside the mask
    assert build(split, tmp_path / "proxies") == root  # made once, reused


def test_eval_reports_splits_perturbations_and_the_logical_proxy(tmp_path, monkeypatch):
    data = small_mvtec(tmp_path)
    out = tmp_path / "r.json"
    env_cache = tmp_path / "cache"
    monkeypatch.setenv("ANOMALY_ASSISTANT_CACHE", str(env_cache))
    run = cli("eval", "--data", str(data), "--shots", "1", "--seeds", "1", "--split", "dev", "--perturb", "rotate",
              "--logical-proxy", "--output", str(out))
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert report["config"]["split"] == "dev" and report["config"]["perturbations"] == ["rotate"]
    entry = report["results"]["part_logical"]
    assert 0 <= entry["judgement_accuracy"]["mean"] <= 100 and entry["n_test"] < 30
    assert (env_cache / "proxies" / "part_logical" / "test").is_dir()
    bad = cli("eval", "--data", str(data), "--perturb", "sharpen")
    assert bad.returncode == 2 and "unknown perturbation" in bad.stderr and "Traceback" not in bad.stderr


def small_surface_set(tmp_path) -> Path:
    """magnetic_tile/{train/good, test/good, test/spot, ground_truth/spot}: striped grey surfaces
    filling the frame, the defect a red square (named as the shared ground-surface set, so that the
    protocol's family and split rules for its proxy apply)."""
    root = tmp_path / "magnetic_tile"
    for folder in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(4)
    for i in range(4):
        tile = np.repeat((100 + 40 * np.sin(np.arange(160) / 3.0))[None, :, None], 120, axis=0).repeat(3, axis=2)
        tile = np.clip(tile + rng.normal(0, 6, tile.shape), 0, 255).astype(np.uint8)
        Image.fromarray(tile).save(root / "train" / "good" / f"{i:03d}.png")
        Image.fromarray(tile).save(root / "test" / "good" / f"{i:03d}.png")
        tile[30:50, 90:110] = (230, 20, 20)
        mask = np.zeros(tile.shape[:2], np.uint8)
        mask[30:50, 90:110] = 255
        Image.fromarray(tile).save(root / "test" / "spot" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "ground_truth" / "spot" / f"{i:03d}_mask.png")
    return root


def test_part_proxy_places_each_surface_photo_as_a_part_at_any_angle_with_its_mask(tmp_path):
    split = discover(small_surface_set(tmp_path))[0]
    assert part_proxy.applies(split) and not part_proxy.applies(discover(small_mvtec(tmp_path))[0])
    root = part_proxy.build(split, tmp_path / "proxies")
    proxy = discover(root)[0]
    assert proxy.name == "magnetic_tile_part" and family_of(proxy.name) == "object" and proxy.has_masks
    assert len(proxy.train_good) == 4 and sorted(s.defect for s in proxy.test) == sorted(s.defect for s in split.test)
    angles = set()
    for sample in proxy.test:
        image = Image.open(sample.path).convert("RGB")
        assert foreground_box(image) is not None  # a part on a plain background, which the engine crops
        assert in_dev(proxy.name, sample.defect, sample.path.stem) == in_dev(split.name, sample.defect, sample.path.stem)
        if sample.mask_path:
            pixels = np.asarray(image, np.int16)[np.asarray(Image.open(sample.mask_path)) > 127]
            assert len(pixels) > 200 and np.median(pixels[:, 0] - pixels[:, 1]) > 120  # the red square moved with its mask
        part = (np.asarray(image.convert("L")) > 60).astype(np.uint8)
        contour = max(cv2.findContours(part, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0], key=len)
        angles.add(round(cv2.minAreaRect(contour)[2]) % 90)
    assert len(angles) > 4  # each photo lies at its own angle
    assert part_proxy.build(split, tmp_path / "proxies") == root  # made once, reused


@pytest.mark.slow  # about 4 minutes: every set x shots x condition of a small set, with turned reference views
def test_matrix_writes_json_and_a_markdown_table(tmp_path, monkeypatch):
    data = small_mvtec(tmp_path)
    monkeypatch.setenv("ANOMALY_ASSISTANT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "matrix.json"
    run = cli("matrix", "--data", str(data), "--shots", "1,2", "--seeds", "1", "--conditions", "clean,pose",
              "--split", "all", "--output", str(out))
    assert run.returncode == 0, run.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {(r["set"], r["condition"], r["shots"]) for r in rows} == {
        (s, c, k) for s in ("part", "part_logical") for c in ("clean", "pose") for k in (1, 2)}
    table = out.with_suffix(".md").read_text()
    assert table.count("| part_logical |") == 4 and "verdict" in table
    # A resumed run keeps the rows the file holds (a marked row survives: it was not measured again)
    # and finishes the one the interrupted run had not reached.
    report = json.loads(out.read_text())
    report["complete"], report["rows"] = False, report["rows"][:-1]
    report["rows"][0]["n_test"] = -1
    out.write_text(json.dumps(report))
    resumed = cli("matrix", "--data", str(data), "--shots", "1,2", "--seeds", "1", "--conditions", "clean,pose",
                  "--split", "all", "--output", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads(out.read_text())
    assert again["complete"] and len(again["rows"]) == 8 and again["rows"][0]["n_test"] == -1
    last, first_run = again["rows"][-1], rows[-1]
    assert (last["set"], last["condition"], last["shots"]) == (first_run["set"], first_run["condition"], first_run["shots"])
    assert last["image_auroc"] == first_run["image_auroc"] and last["n_test"] == first_run["n_test"]
