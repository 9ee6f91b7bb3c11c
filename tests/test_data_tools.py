"""`anomaly-assistant data summary|convert` on real image files written here and on the shared datasets."""
from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from assistant.data import DatasetError, discover, list_images
from assistant.data.convert import convert, split_good
from assistant.data.summary import summarize
from conftest import run_cli

SIZE = (24, 16)


def write_image(path: Path, size=SIZE, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def write_mask(path: Path, size=SIZE, box=(5, 4, 12, 9)) -> Path:
    """A 0/255 mask marking `box` (x0, y0, x1, y1), or nothing when box is None."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        mask[y0:y1, x0:x1] = 255
    Image.fromarray(mask, "L").save(path)
    return path


def mvtec_tree(root: Path) -> Path:
    for i in range(3):
        write_image(root / "train/good" / f"{i:03d}.png")
    write_image(root / "train/good/003.png", size=(40, 30), mode="L")
    write_image(root / "test/good/000.png")
    for i in range(2):
        write_image(root / "test/scratch" / f"{i:03d}.png")
        write_mask(root / "ground_truth/scratch" / f"{i:03d}_mask.png")
    write_image(root / "test/dent/000.png", size=(32, 16))
    write_mask(root / "ground_truth/dent/000_mask.png", size=(32, 16), box=None)
    write_image(root / "validation/good/000.png")
    return root


def lines_of(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def one_error_line(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------ summary

def test_summary_counts_sizes_modes_masks_and_balance(tmp_path):
    root = mvtec_tree(tmp_path / "widget")
    chart, figures = tmp_path / "out" / "chart.png", tmp_path / "out" / "figures.json"
    result = run_cli("data", "summary", str(root), "--chart", str(chart), "--json", str(figures))
    assert result.returncode == 0, result.stderr
    rows = lines_of(result.stdout)
    for split, defect, count in (("train", "good", 4), ("test", "good", 1), ("test", "scratch", 2), ("test", "dent", 1)):
        assert [split, defect, str(count)] in rows
    assert ["total", "8"] in rows
    # widths 24 x6, 32, 40; heights 16 x7, 30: each side on its own
    assert "sizes    min 24x16, median 24x16, max 40x30" in result.stdout
    assert "modes    L 1, RGB 7" in result.stdout
    # masks: 3 of 3 anomalous images; areas 35/384 twice and 0 once
    area = 100 * (2 * 35 / 384) / 3
    assert f"masks    3 of 3 anomalous images (100.0 %), mean masked area {area:.2f} % of the image, 1 marks nothing" in result.stdout
    assert "balance  good : anomalous = 5 : 3 (1.67 : 1); test 1 : 3 (0.33 : 1)" in result.stdout
    assert "not used validation/" in result.stdout

    data = json.loads(figures.read_text())["categories"]
    assert [c["name"] for c in data] == ["widget"]
    assert data[0]["counts"] == [{"split": "train", "defect": "good", "images": 4},
                                 {"split": "test", "defect": "good", "images": 1},
                                 {"split": "test", "defect": "dent", "images": 1},
                                 {"split": "test", "defect": "scratch", "images": 2}]
    assert data[0]["sizes"] == {"min": [24, 16], "median": [24, 16], "max": [40, 30]}
    assert data[0]["masks"]["mean_area"] == pytest.approx(2 * 35 / 384 / 3)
    with Image.open(chart) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 100


def test_summary_names_unreadable_files_instead_of_failing(tmp_path):
    root = mvtec_tree(tmp_path / "widget")
    (root / "train/good/broken.png").write_bytes(b"not a png at all")
    summary = summarize(discover(root)[0])
    assert summary.count("train") == 5
    assert len(summary.unreadable) == 1 and summary.unreadable[0].startswith(str(root / "train/good/broken.png"))
    assert sum(summary.modes.values()) == 8


def test_summary_reports_the_upright_size_of_exif_rotated_photos(tmp_path):
    from assistant.images import load_image

    root = mvtec_tree(tmp_path / "widget")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the camera was turned by 90 degrees
    Image.fromarray(np.zeros((20, 60, 3), np.uint8)).save(root / "train/good/turned.jpg", exif=exif)
    summary = summarize(discover(root)[0])
    assert load_image(root / "train/good/turned.jpg").size == (20, 60)
    assert summary.size_stats()["max"] == [40, 60]  # width 40 from 003.png, height 60 from the turned photo


def test_summary_of_a_folder_of_datasets_has_an_overview(tmp_path):
    mvtec_tree(tmp_path / "all" / "widget")
    mvtec_tree(tmp_path / "all" / "bracket")
    result = run_cli("data", "summary", str(tmp_path / "all"))
    assert result.returncode == 0, result.stderr
    rows = lines_of(result.stdout)
    assert rows[0] == ["category", "train", "good", "test", "good", "test", "anomalous", "defect", "types", "masks"]
    assert rows[1] == ["bracket", "4", "1", "3", "2", "3/3"] and rows[2] == ["widget", "4", "1", "3", "2", "3/3"]


def test_summary_errors_are_one_line(tmp_path):
    assert "no dataset found" in one_error_line(run_cli("data", "summary", str(tmp_path)))
    root = mvtec_tree(tmp_path / "widget")
    assert "is a folder" in one_error_line(run_cli("data", "summary", str(root), "--chart", str(tmp_path)))


def test_summary_of_the_shared_tire_set_matches_its_files(tire_dir):
    result = run_cli("data", "summary", str(tire_dir))
    assert result.returncode == 0, result.stderr
    rows = lines_of(result.stdout)
    expected = {("train", "good"): tire_dir / "train" / "good"}
    expected.update({("test", d.name): d for d in (tire_dir / "test").iterdir() if d.is_dir()})
    for (split, defect), folder in expected.items():
        files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
        assert [split, defect, str(len(files))] in rows
    anomalous = sum(len(list(d.iterdir())) for (split, name), d in expected.items() if name != "good")
    assert f"masks    {anomalous} of {anomalous} anomalous images (100.0 %)" in result.stdout
    assert "not used validation/" in result.stdout


# ------------------------------------------------------------------------------------------ convert

def folder_per_class(root: Path, n_good: int = 10) -> Path:
    for i in range(n_good):
        write_image(root / "good" / f"part_{i:02d}.png")
    for i in range(3):
        write_image(root / "scratch" / f"s{i}.jpg")
    write_image(root / "dent" / "d0.png")
    (root / "README.txt").write_text("loose files in SRC are ignored")
    return root


def test_split_good_is_a_fixed_rule_on_file_names(tmp_path):
    names = [Path(f"/a/{i}.png") for i in range(10)]
    train, test = split_good(names, 0.2, "x")
    assert len(test) == 2 and sorted(train + test) == sorted(names)
    moved = [Path("/elsewhere") / p.name for p in reversed(names)]  # other folder, other order
    assert [p.name for p in split_good(moved, 0.2, "x")[1]] == [p.name for p in test]
    assert len(split_good(names[:2], 0.01, "x")[1]) == 1 and len(split_good(names[:2], 0.99, "x")[0]) == 1
    with pytest.raises(DatasetError, match="need at least 2 normal images"):
        split_good(names[:1], 0.2, "x")


def test_convert_folder_per_class_links_files_into_the_mvtec_layout(tmp_path):
    src = folder_per_class(tmp_path / "src")
    result = run_cli("data", "convert", str(src), "--layout", "folder-per-class", "--out", str(tmp_path / "dst"))
    assert result.returncode == 0, result.stderr
    assert "train good 8, test good 2, test anomalous 4 (dent, scratch), masks no" in result.stdout
    dst = tmp_path / "dst"
    assert sorted(p.name for p in dst.iterdir()) == ["test", "train"]
    good = sorted(p.name for p in list_images(dst / "train/good") + list_images(dst / "test/good"))
    assert good == sorted(p.name for p in list_images(src / "good"))
    for written in list_images(dst / "test/scratch"):
        assert os.path.samefile(written, src / "scratch" / written.name)  # a hard link, not a copy
    assert len(list_images(src / "good")) == 10  # sources stay

    again = convert(src, "folder-per-class", tmp_path / "copy", copy=True)
    assert (again.linked, again.copied) == (0, 14)
    assert [p.name for p in list_images(tmp_path / "copy/test/good")] == [p.name for p in list_images(dst / "test/good")]
    assert not os.path.samefile(tmp_path / "copy/test/scratch/s0.jpg", src / "scratch/s0.jpg")
    halves = convert(src, "folder-per-class", tmp_path / "half", test_fraction=0.5)
    assert halves.splits[0].counts() == {"train_good": 5, "test_good": 5, "test_anomalous": 4}


def test_convert_folder_per_class_with_another_normal_folder_name(tmp_path):
    src = tmp_path / "src"
    for i in range(4):
        write_image(src / "OK" / f"{i}.png")
    write_image(src / "crack" / "c.png")
    split = convert(src, "folder-per-class", tmp_path / "dst", good_name="ok").splits[0]
    assert split.counts() == {"train_good": 3, "test_good": 1, "test_anomalous": 1}


def test_convert_image_mask_list(tmp_path):
    data = tmp_path / "data"
    for i in range(5):
        write_image(data / "img" / f"g{i}.png")
    write_image(data / "img/black.png")
    write_mask(data / "masks/black.png", box=None)
    for name in ("a", "b"):
        write_image(data / "img" / f"{name}.png")
        write_mask(data / "masks" / f"{name}.png")
    write_image(data / "img/c.png")
    mask_bmp = data / "masks/c.bmp"
    Image.fromarray(np.pad(np.full((4, 4), 255, np.uint8), ((2, 10), (3, 17))), "L").save(mask_bmp)
    write_image(data / "img/d.png")
    rows = ["image,mask,label", *(f"img/g{i}.png,," for i in range(5)), "img/black.png,masks/black.png,good",
            "img/a.png,masks/a.png,scratch", "img/b.png,masks/b.png,scratch", "img/c.png,masks/c.bmp,1",
            f"{data / 'img/d.png'},,dent"]
    (data / "list.csv").write_text("\n".join(rows) + "\n")
    result = convert(data / "list.csv", "image-mask-list", tmp_path / "dst")
    split = result.splits[0]
    assert split.counts() == {"train_good": 5, "test_good": 1, "test_anomalous": 4}
    assert split.defect_types == ["anomalous", "dent", "scratch"]
    dst = tmp_path / "dst"
    assert sorted(p.name for p in (dst / "ground_truth").iterdir()) == ["anomalous", "scratch"]  # dent: no masks
    assert sorted(p.name for p in (dst / "ground_truth/scratch").iterdir()) == ["a_mask.png", "b_mask.png"]
    converted = dst / "ground_truth/anomalous/c_mask.png"
    with Image.open(converted) as png:
        assert png.format == "PNG"
        assert np.array_equal(np.asarray(png), np.asarray(Image.open(mask_bmp)))
    assert not list((dst / "ground_truth").rglob("black*"))  # the empty mask of a good row is dropped


def aebad_tree(root: Path) -> Path:
    for shift in ("same", "view"):
        for i in range(2):
            write_image(root / "train/good" / shift / f"{i:04d}.png")
        write_image(root / "test/good" / shift / "0100.png")
        for defect in ("ablation", "groove"):
            write_image(root / "test" / defect / shift / "0200.png")
            write_mask(root / "ground_truth" / defect / shift / "0200.png")
    write_image(root / "test/groove/view/0201.png")
    write_mask(root / "ground_truth/groove/view/0201.png")
    return root


def test_convert_aebad_makes_one_category_per_domain_shift(tmp_path):
    src = aebad_tree(tmp_path / "AeBAD" / "AeBAD_S")
    result = convert(tmp_path / "AeBAD", "aebad", tmp_path / "dst")  # the folder holding AeBAD_S works too
    splits = {s.name: s for s in result.splits}
    assert sorted(splits) == ["same", "view"]
    assert splits["same"].counts() == {"train_good": 4, "test_good": 1, "test_anomalous": 2}
    assert splits["view"].counts() == {"train_good": 4, "test_good": 1, "test_anomalous": 3}
    assert [p.name for p in splits["view"].train_good] == ["same_0000.png", "same_0001.png", "view_0000.png", "view_0001.png"]
    assert splits["view"].has_masks and splits["view"].defect_types == ["ablation", "groove"]
    mask = next(s.mask_path for s in splits["view"].test if s.path.name == "0201.png")
    assert mask.name == "0201_mask.png" and os.path.samefile(mask, src / "ground_truth/groove/view/0201.png")


# ------------------------------------------------------------------------------------------ errors

def test_convert_refuses_what_it_cannot_map_with_one_line(tmp_path):
    src = folder_per_class(tmp_path / "src")
    (src / "dent" / "notes.txt").write_text("x")
    line = one_error_line(run_cli("data", "convert", str(src), "--layout", "folder-per-class", "--out", str(tmp_path / "a")))
    assert "notes.txt: not an image" in line
    (src / "dent" / "notes.txt").unlink()

    dst = tmp_path / "taken"
    (dst / "old").mkdir(parents=True)
    line = one_error_line(run_cli("data", "convert", str(src), "--layout", "folder-per-class", "--out", str(dst)))
    assert "exists and is not empty (use --force" in line
    result = run_cli("data", "convert", str(src), "--layout", "folder-per-class", "--out", str(dst), "--force")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in dst.iterdir()) == ["test", "train"]

    line = one_error_line(run_cli("data", "convert", str(src), "--layout", "folder-per-class", "--out", str(src / "out")))
    assert "overlaps the source" in line
    line = one_error_line(run_cli("data", "convert", str(src), "--layout", "aebad", "--out", str(tmp_path / "b")))
    assert "not an AeBAD-S tree" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_convert_names_missing_masks_and_collisions(tmp_path):
    src = aebad_tree(tmp_path / "aebad")
    (src / "ground_truth/groove/view/0201.png").unlink()
    with pytest.raises(DatasetError, match=r"0201\.png: no mask in .*groove/view"):
        convert(src, "aebad", tmp_path / "dst")

    data = tmp_path / "list"
    write_image(data / "a/x.png")
    write_image(data / "b/x.png")
    write_image(data / "g/1.png")
    write_image(data / "g/2.png")
    write_mask(data / "m/x.png")
    (data / "list.csv").write_text("g/1.png,\ng/2.png,\na/x.png,m/x.png,cut\nb/x.png,m/x.png,cut\n")
    with pytest.raises(DatasetError, match=r"b/x\.png: collides with .*a/x\.png"):
        convert(data / "list.csv", "image-mask-list", tmp_path / "dst")
    (data / "list.csv").write_text("g/1.png,\ng/2.png,\na/x.png,m/x.png,cut\nb/x.png,,cut\n")
    with pytest.raises(DatasetError, match=r"defect 'cut' has masks except on row 4"):
        convert(data / "list.csv", "image-mask-list", tmp_path / "dst")
    (data / "list.csv").write_text("g/1.png,\ng/2.png,\na/x.png,m/missing.png\n")
    with pytest.raises(DatasetError, match=r"row 3: mask m/missing\.png not found"):
        convert(data / "list.csv", "image-mask-list", tmp_path / "dst")
    (data / "list.csv").write_text("g/1.png,,good\ng/2.png,m/x.png,good\n")
    with pytest.raises(DatasetError, match=r"row 2: labelled 'good' but its mask x\.png marks a defect"):
        convert(data / "list.csv", "image-mask-list", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_a_broken_source_image_is_named_and_nothing_is_written(tmp_path):
    src = folder_per_class(tmp_path / "src")
    broken = src / "scratch" / "s1.jpg"
    broken.write_bytes(broken.read_bytes()[:60])  # truncated JPEG
    line = one_error_line(run_cli("data", "convert", str(src), "--layout", "folder-per-class", "--out", str(tmp_path / "dst")))
    assert line.startswith(f"error: {broken}: unreadable image") and line.endswith("(nothing written)")
    assert list(tmp_path.iterdir()) == [src]  # no output, no staging folder left


def test_converted_shared_tire_set_reads_back_the_same(tire_dir, tmp_path):
    """A real set, flattened to one folder per class and converted back: same images, same counts."""
    flat = tmp_path / "flat"
    for sample in discover(tire_dir)[0].test:
        target = flat / sample.defect / sample.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample.path, target)
    split = convert(flat, "folder-per-class", tmp_path / "dst").splits[0]
    original = discover(tire_dir)[0]
    assert split.defect_types == original.defect_types
    assert split.counts()["test_anomalous"] == original.counts()["test_anomalous"]
    assert split.counts()["train_good"] + split.counts()["test_good"] == original.counts()["test_good"]
