"""Dataset discovery on small synthetic trees and on the shared real datasets."""
from __future__ import annotations

import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from assistant.data import (
    DatasetError,
    Sample,
    discover,
    load_conformal_textile,
    load_folder,
    load_mvtec,
    validate,
)
from assistant.images import load_mask

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
needs_shared = pytest.mark.skipif(
    not (SHARED / "tire").is_dir() or not (SHARED / "magnetic_tile").is_dir(),
    reason=f"shared evaluation datasets not found at {SHARED} (they are never copied into the repo)",
)


# ------------------------------------------------------------------------------------ tree helpers

def _rng(path: Path) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(path.name.encode()))


def write_image(path: Path, kind: str = "rgb", size=(24, 16)) -> Path:
    """Write a real image file: rgb/gray/rgba (PIL, by suffix) or 16-bit PNG (cv2)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = _rng(path)
    if kind == "gray":
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").save(path)
    elif kind == "rgba":
        Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA").save(path)
    elif kind == "16bit":
        assert cv2.imwrite(str(path), rng.integers(0, 65536, (h, w), dtype=np.uint16))
    else:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(path)
    return path


def write_mask(path: Path, size=(24, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[4:9, 5:12] = 255
    Image.fromarray(mask, "L").save(path)
    return path


def mvtec_tree(root: Path, masks: bool = True) -> Path:
    """train/good: 3 (gray PNG, RGBA PNG, 16-bit PNG); test/good: 2 JPG; test/scratch: 2 PNG
    (masks <stem>_mask.png); test/dent: 1 JPG (mask named <stem>.png); plus files to ignore."""
    write_image(root / "train/good/000.png", "gray")
    write_image(root / "train/good/001.png", "rgba")
    write_image(root / "train/good/002.png", "16bit")
    write_image(root / "train/good/.hidden.png")
    (root / "train/good/notes.txt").write_text("not an image")
    write_image(root / "test/good/000.jpg")
    write_image(root / "test/good/001.JPG")  # upper-case suffix counts
    write_image(root / "test/scratch/001.png")
    write_image(root / "test/scratch/000.png")
    write_image(root / "test/dent/000.jpg")
    write_image(root / "validation/good/000.png")  # ignored
    (root / "LICENSE.txt").write_text("licence")
    (root / "test/.DS_Store").write_bytes(b"\0\0")
    if masks:
        write_mask(root / "ground_truth/scratch/000_mask.png")
        write_mask(root / "ground_truth/scratch/001_mask.png")
        write_mask(root / "ground_truth/dent/000.png")
    return root


def folder_tree(root: Path, n_good: int = 4, bad_name: str = "bad") -> Path:
    for i in range(n_good):
        write_image(root / f"good/g{i}.png", "gray" if i % 2 else "rgb")
    write_image(root / f"{bad_name}/b0.jpg")
    write_image(root / f"{bad_name}/b1.png", "rgba")
    return root


# ------------------------------------------------------------------------------------ MVTec layout

def test_load_mvtec_finds_images_masks_and_ignores_the_rest(tmp_path):
    root = mvtec_tree(tmp_path / "widget")
    split = load_mvtec(root)
    assert split.name == "widget" and split.root == root
    assert [p.name for p in split.train_good] == ["000.png", "001.png", "002.png"]
    assert [(s.path.parent.name, s.path.name, s.label) for s in split.test] == [
        ("dent", "000.jpg", 1), ("good", "000.jpg", 0), ("good", "001.JPG", 0),
        ("scratch", "000.png", 1), ("scratch", "001.png", 1)]
    by_name = {(s.defect, s.path.name): s for s in split.test}
    assert by_name["scratch", "001.png"].mask_path == root / "ground_truth/scratch/001_mask.png"
    assert by_name["dent", "000.jpg"].mask_path == root / "ground_truth/dent/000.png"
    assert by_name["good", "000.jpg"].mask_path is None
    assert split.has_masks
    assert split.defect_types == ["dent", "scratch"]
    assert split.counts() == {"train_good": 3, "test_good": 2, "test_anomalous": 3}
    assert load_mvtec(root) == split  # deterministic
    assert validate(split) is split  # gray, RGBA, 16-bit and masks all open


def test_load_mvtec_without_ground_truth_is_image_level(tmp_path):
    split = load_mvtec(mvtec_tree(tmp_path / "widget", masks=False))
    assert all(s.mask_path is None for s in split.test)
    assert not split.has_masks
    assert sum(s.label for s in split.test) == 3


def test_missing_mask_names_the_image(tmp_path):
    root = mvtec_tree(tmp_path / "widget")
    (root / "ground_truth/scratch/001_mask.png").unlink()
    with pytest.raises(DatasetError) as err:
        load_mvtec(root)
    assert str(root / "test/scratch/001.png") in str(err.value)
    assert "\n" not in str(err.value)


def test_defect_without_ground_truth_folder_has_no_masks(tmp_path):
    root = mvtec_tree(tmp_path / "widget")
    for f in (root / "ground_truth/dent").iterdir():
        f.unlink()
    (root / "ground_truth/dent").rmdir()
    split = load_mvtec(root)
    assert [s.mask_path for s in split.test if s.defect == "dent"] == [None]
    assert not split.has_masks


@pytest.mark.parametrize("broken, named", [
    ("empty_defect", "test/crack"),
    ("empty_train", "train/good"),
    ("no_train", "train/good"),
    ("no_test", "test"),
])
def test_malformed_trees_raise_naming_the_path(tmp_path, broken, named):
    root = mvtec_tree(tmp_path / "widget")
    if broken == "empty_defect":
        (root / "test/crack").mkdir()
        (root / "test/crack/readme.txt").write_text("no images here")
    elif broken in ("empty_train", "no_train"):
        for f in (root / "train/good").iterdir():
            f.unlink()
        if broken == "no_train":
            (root / "train/good").rmdir()
    else:
        for f in sorted((root / "test").rglob("*"), reverse=True):
            f.rmdir() if f.is_dir() else f.unlink()
        (root / "test").rmdir()
    with pytest.raises(DatasetError) as err:
        load_mvtec(root)
    assert str(root / named) in str(err.value)
    assert "\n" not in str(err.value)


def test_validate_names_the_first_unreadable_file(tmp_path):
    root = mvtec_tree(tmp_path / "widget")
    (root / "test/scratch/000.png").write_bytes(b"this is not a PNG at all")
    split = load_mvtec(root)  # listing does not decode
    with pytest.raises(DatasetError) as err:
        validate(split)
    message = str(err.value)
    assert message.startswith(str(root / "test/scratch/000.png"))
    assert "unreadable image" in message and "\n" not in message


def test_validate_names_an_unreadable_mask(tmp_path):
    root = mvtec_tree(tmp_path / "widget")
    (root / "ground_truth/dent/000.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="ground_truth/dent/000.png: unreadable mask"):
        validate(load_mvtec(root))


# ------------------------------------------------------------------------------------ plain folders

def test_load_folder_splits_good_images_in_half(tmp_path):
    root = folder_tree(tmp_path / "parts", n_good=5)
    write_mask(root / "masks/b0_mask.png")
    write_mask(root / "masks/b1.png")
    split = load_folder(root)
    assert [p.name for p in split.train_good] == ["g0.png", "g1.png", "g2.png"]
    assert [(s.path.name, s.label, s.defect) for s in split.test] == [
        ("g3.png", 0, "good"), ("g4.png", 0, "good"), ("b0.jpg", 1, "bad"), ("b1.png", 1, "bad")]
    assert [s.mask_path.name for s in split.test if s.label] == ["b0_mask.png", "b1.png"]
    assert split.has_masks
    validate(split)


def test_load_folder_uses_train_folder_and_aliases(tmp_path):
    root = folder_tree(tmp_path / "parts", n_good=2, bad_name="anomalous")
    write_image(root / "train/r0.png")
    split = load_folder(root)
    assert [p.name for p in split.train_good] == ["r0.png"]
    assert [s.defect for s in split.test] == ["good", "good", "anomalous", "anomalous"]
    assert not split.has_masks


def test_load_folder_errors(tmp_path):
    root = folder_tree(tmp_path / "one", n_good=1)
    with pytest.raises(DatasetError, match="at least 2 good"):
        load_folder(root)
    root = folder_tree(tmp_path / "masked")
    write_mask(root / "masks/b0_mask.png")
    with pytest.raises(DatasetError, match=str(root / "bad/b1.png")):
        load_folder(root)
    write_image(tmp_path / "nobad/good/g0.png")
    with pytest.raises(DatasetError, match="anomalous images"):
        load_folder(tmp_path / "nobad")


# ------------------------------------------------------------------------------------ discover

def test_discover_single_and_folder_of_datasets(tmp_path):
    mvtec_tree(tmp_path / "b_widget")
    mvtec_tree(tmp_path / "a_gadget", masks=False)
    folder_tree(tmp_path / "c_parts")
    (tmp_path / "README.md").write_text("# datasets")
    (tmp_path / "not_a_dataset").mkdir()
    assert [s.name for s in discover(tmp_path)] == ["a_gadget", "b_widget", "c_parts"]
    assert [s.name for s in discover(str(tmp_path / "b_widget"))] == ["b_widget"]
    assert [s.name for s in discover(tmp_path / "c_parts")] == ["c_parts"]
    assert [s.name for s in discover(tmp_path, categories=["b_widget"])] == ["b_widget"]
    assert [s.name for s in discover(tmp_path, categories="c_parts,a_gadget")] == ["a_gadget", "c_parts"]
    with pytest.raises(DatasetError, match="unknown category nope; available: a_gadget, b_widget, c_parts"):
        discover(tmp_path, categories=["b_widget", "nope"])
    with pytest.raises(DatasetError, match="available: b_widget"):
        discover(tmp_path / "b_widget", categories=["other"])


def test_discover_errors_name_the_path_and_layouts(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as err:
        discover(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value) and "MVTec" in str(err.value)
    assert "good/" in str(err.value) and "conformal-clip-data" in str(err.value)
    with pytest.raises(DatasetError, match="not found"):
        discover(tmp_path / "missing")
    (tmp_path / "half/train/good").mkdir(parents=True)  # train/ without test/
    with pytest.raises(DatasetError, match="train/good|test"):
        discover(tmp_path / "half")


# ------------------------------------------------------------------------------------ textile

def test_textile_adapter():
    pytest.importorskip("conformal_clip_data", reason="pip install conformal-clip-data")
    split = load_conformal_textile()
    assert split.counts() == {"train_good": 900, "test_good": 100, "test_anomalous": 200}
    assert [sum(s.defect == d for s in split.test) for d in ("good", "local", "global")] == [100, 100, 100]
    assert not split.has_masks and all(s.mask_path is None for s in split.test)
    good = [s.path for s in split.test if s.label == 0]
    assert good == sorted(good) and good[-1].name < split.train_good[0].name
    assert {p.name for p in split.train_good}.isdisjoint(p.name for p in good)
    assert [s.name for s in discover("conformal-clip-data")] == ["textile"]
    assert discover("textile")[0].counts() == split.counts()
    assert load_conformal_textile(10).counts()["test_anomalous"] == 20


def test_textile_adapter_without_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "conformal_clip_data", None)  # import now fails
    with pytest.raises(DatasetError, match="pip install conformal-clip-data"):
        load_conformal_textile()


# ------------------------------------------------------------------------------------ real data

@needs_shared
def test_real_tire():
    split = load_mvtec(SHARED / "tire")
    assert split.counts() == {"train_good": 210, "test_good": 25, "test_anomalous": 87}
    assert split.defect_types == ["combined", "contamination", "cut", "hole"]
    assert split.has_masks and all(s.mask_path.is_file() for s in split.test if s.label)
    assert all("validation" not in p.parts for p in split.train_good)


@needs_shared
def test_real_magnetic_tile_and_its_empty_masks():
    split = load_mvtec(SHARED / "magnetic_tile")
    assert split.counts() == {"train_good": 762, "test_good": 190, "test_anomalous": 392}
    assert split.defect_types == ["blowhole", "break", "crack", "fray", "uneven"]
    assert split.has_masks
    uneven = [s for s in split.test if s.defect == "uneven"]
    empty = [s for s in uneven if not load_mask(s.mask_path, Image.open(s.path).size).any()]
    assert len(empty) == 4  # empty in the source dataset; still valid masks


@needs_shared
def test_real_folder_of_datasets():
    splits = discover(SHARED)  # README.md next to the datasets is ignored
    assert [s.name for s in splits] == ["magnetic_tile", "tire"]
    assert [s.name for s in discover(SHARED, categories=["tire"])] == ["tire"]
    with pytest.raises(DatasetError, match="available: magnetic_tile, tire"):
        discover(SHARED, categories=["bottle"])


def test_sample_defaults():
    assert Sample(Path("x.png"), 0, "good").mask_path is None
