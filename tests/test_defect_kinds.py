"""Defect kinds from labelled examples: folder checks, matching on real images with the real engine,
and `ask --defects` / `eval-kinds` as a user runs them."""
from __future__ import annotations

import json
import re
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from assistant.defect_kinds import (DefectExamples, DefectKindError, KindMatcher, describe, examples_from_archive,
                                    find_examples, load_example, load_examples)
from conftest import run_cli


def write_image(path, size=(64, 48), value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value // 2, 30)).save(path)
    return path


def write_mask(path, size=(64, 48), box=(10, 10, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    mask.save(path)
    return path


# -- malformed folders: one line each, before any model is loaded ------------------------------------
def test_examples_with_masks_beside_or_in_a_masks_folder(tmp_path):
    write_image(tmp_path / "cut" / "a.png")
    write_mask(tmp_path / "cut" / "a_mask.png")
    write_image(tmp_path / "hole" / "b.jpg")
    write_mask(tmp_path / "hole" / "masks" / "b.png")
    write_image(tmp_path / "hole" / "c.png")
    (tmp_path / "hole" / ".DS_Store").write_bytes(b"\0")
    examples = find_examples(tmp_path)
    assert [(e.kind, e.image.name, e.mask.name if e.mask else None) for e in examples] == [
        ("cut", "a.png", "a_mask.png"), ("hole", "b.jpg", "b.png"), ("hole", "c.png", None)]
    loaded = [load_example(e) for e in examples]
    assert loaded[0].mask.shape == (48, 64) and loaded[0].mask.sum() == 400 and loaded[2].mask is None


@pytest.mark.parametrize("make, expected", [
    (lambda root: (root / "cut").mkdir(parents=True), "cut: no example images for kind 'cut'"),
    (lambda root: (write_image(root / "cut" / "a.png"), (root / "cut" / "notes.txt").write_text("x")),
     "notes.txt: not an image"),
    (lambda root: (write_image(root / "cut" / "a.png"), write_mask(root / "cut" / "b_mask.png")),
     "b_mask.png: mask without an image"),
    (lambda root: (write_image(root / "cut" / "a.png"), (root / "cut" / "extra").mkdir()), "extra: unexpected folder"),
    (lambda root: root.mkdir(), "no kind folders"),
    (lambda root: None, "folder not found"),
])
def test_malformed_folders_give_one_line(tmp_path, make, expected):
    root = tmp_path / "defects"
    make(root)
    with pytest.raises(DefectKindError) as error:
        DefectExamples.from_folder(root)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_mask_size_mismatch_and_empty_mask(tmp_path):
    write_image(tmp_path / "cut" / "a.png", size=(64, 48))
    write_mask(tmp_path / "cut" / "a_mask.png", size=(32, 24))
    with pytest.raises(DefectKindError, match=r"a_mask.png: mask is 32x24 but its image a.png is 64x48"):
        DefectExamples.from_folder(tmp_path)
    write_mask(tmp_path / "cut" / "a_mask.png", size=(64, 48), box=(0, 0, 0, 0))
    with pytest.raises(DefectKindError, match="mask is empty"):
        DefectExamples.from_folder(tmp_path)


def test_ask_with_a_malformed_folder_exits_2_with_one_line(tmp_path):
    query = write_image(tmp_path / "query.png")
    write_image(tmp_path / "defects" / "cut" / "a.png")
    (tmp_path / "defects" / "cut" / "readme.md").write_text("x")
    result = run_cli("ask", str(query), "--defects", str(tmp_path / "defects"), "--no-llm", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "readme.md: not an image" in result.stderr


# -- matching on real images ------------------------------------------------------------------------
def masked(dataset, kind: str) -> list[tuple]:
    """(image path, mask path) of a dataset's anomalous test images of one kind, sorted by name."""
    images = sorted((dataset / "test" / kind).iterdir())
    return [(path, dataset / "ground_truth" / kind / f"{path.stem}_mask.png") for path in images]


def copy_examples(root, kind: str, pairs) -> None:
    (root / kind).mkdir(parents=True, exist_ok=True)
    for image, mask in pairs:
        shutil.copy(image, root / kind / image.name)
        shutil.copy(mask, root / kind / f"{image.stem}_mask.png")


def zip_folder(folder, archive, inside: str = "", extra: dict | None = None):
    """FOLDER's files zipped as a user's file manager does, under INSIDE/, with EXTRA members added."""
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zipped.write(path, f"{inside}{path.relative_to(folder).as_posix()}")
        for name, data in (extra or {}).items():
            zipped.writestr(name, data)
    return archive


def test_a_zip_of_the_examples_folder_loads_as_the_folder_does(tire_dir, tmp_path):
    """Kinds at the top of the archive or the folder itself zipped, with a file manager's litter: the
    same examples, masks and images as the folder gives, held in memory once the archive is unpacked."""
    defects = tmp_path / "defects"
    for kind in ("cut", "hole"):
        copy_examples(defects, kind, masked(tire_dir, kind)[:2])
    expected = DefectExamples.from_folder(defects)
    litter = {"__MACOSX/cut/._x.png": b"", "defects/.DS_Store": b""}
    for name, inside in (("kinds.zip", ""), ("folder.zip", "defects/")):
        loaded = load_examples(zip_folder(defects, tmp_path / name, inside, litter if inside else None))
        assert loaded.kinds == expected.kinds and loaded.labels == expected.labels
        for got, want in zip(loaded.examples, expected.examples):
            assert got.example.image.name == want.example.image.name
            assert got.image.size == want.image.size and np.array_equal(got.mask, want.mask)
            assert np.array_equal(np.asarray(got.image), np.asarray(want.image))
    assert load_examples(defects).labels == expected.labels  # a folder still loads as a folder


def test_unsafe_or_broken_archives_give_one_line_naming_the_archive(tmp_path):
    good = write_image(tmp_path / "src" / "cut" / "a.png")
    cases = {
        "escape.zip": ({"../../evil.png": good.read_bytes()}, "outside the examples folder"),
        "absolute.zip": ({"/etc/evil.png": good.read_bytes()}, "outside the examples folder"),
        "empty.zip": ({}, "holds no files"),
        "text.zip": ({"cut/a.png": good.read_bytes(), "cut/notes.txt": b"hi"}, "text.zip/cut/notes.txt: not an image"),
        "loose.zip": ({"a.png": good.read_bytes()}, "no kind folders"),
    }
    for name, (members, expected) in cases.items():
        with zipfile.ZipFile(tmp_path / name, "w") as zipped:
            for member, data in members.items():
                zipped.writestr(member, data)
        with pytest.raises(DefectKindError) as error:
            examples_from_archive(tmp_path / name)
        message = str(error.value)
        assert expected in message and "\n" not in message and str(tmp_path) not in message, (name, message)
    (tmp_path / "fake.zip").write_bytes(b"not a zip at all")
    with pytest.raises(DefectKindError, match="fake.zip: not a readable .zip"):
        load_examples(tmp_path / "fake.zip")
    assert not (tmp_path.parent / "evil.png").exists()


@pytest.fixture(scope="module")
def engine():
    from assistant.engine import AnomalyEngine

    return AnomalyEngine("embedded")


def test_separable_kinds_classify_and_a_far_region_is_rejected(engine, tire_dir, magnetic_tile_dir, tmp_path):
    """Tire contamination and magnetic-tile blowholes, 3 examples each (spread over the captures) from a
    folder: 14 other images of the two kinds mostly get their kind, and patches of the plain background
    of a tire photo (no part, no defect) are none of these kinds."""
    contamination, blowhole = masked(tire_dir, "contamination"), masked(magnetic_tile_dir, "blowhole")
    copy_examples(tmp_path, "contamination", contamination[0:24:8])
    copy_examples(tmp_path, "blowhole", blowhole[0:60:20])
    examples = DefectExamples.from_folder(tmp_path)
    assert examples.kinds == ["blowhole", "contamination"] and examples.count("blowhole") == 3
    matcher = examples.matcher(engine)
    matches = []
    for kind, pairs in (("contamination", contamination[3:30:4]), ("blowhole", blowhole[3:30:4])):
        for image_path, mask_path in pairs:
            image = Image.open(image_path).convert("RGB")
            mask = np.asarray(Image.open(mask_path).convert("L")) > 127
            matches.append((kind, matcher.match(describe(engine, image, mask))))
    assert sum(match.nearest_kind == kind for kind, match in matches) >= 11  # 12 of 14 measured
    assert sum(match.kind == kind for kind, match in matches) >= 8  # 10 measured; the rest "none of these"
    assert all(match.to_json()["closest_examples"] == f"{match.closest} of 3" for _, match in matches)
    tire = Image.open(contamination[5][0]).convert("RGB")
    for y, x in ((40, 40), (0, 0), (200, 150)):
        background = np.zeros((tire.height, tire.width), bool)
        background[y:y + 50, x:x + 60] = True
        far = matcher.match(describe(engine, tire, background))
        assert far.kind is None and far.distance > far.threshold


def test_a_matcher_without_shape_blocks_uses_its_own_threshold():
    """Engine regions carry no shape block: they are matched on the other blocks with a threshold and
    temperature fitted on those blocks alone."""
    rng = np.random.default_rng(0)
    descriptors = [{"crop_level2": rng.normal(size=8) + 3 * k, "crop_level3": rng.normal(size=8) - 3 * k,
                    "view_level2": rng.normal(size=8) * (k + 1), "shape": rng.normal(size=4) + k}
                   for k in (0, 1) for _ in range(3)]
    matcher = KindMatcher(descriptors, ["a"] * 3 + ["b"] * 3)
    without_shape = {key: value for key, value in descriptors[0].items() if key != "shape"}
    assert matcher.match(without_shape).nearest_kind == "a"
    assert set(matcher._fits) == {("crop_level2", "crop_level3", "view_level2")}


@pytest.mark.slow
def test_ask_json_names_the_kind_of_each_region(tire_dir, tmp_path):
    """`ask --defects --json`: every region gets a kind (or null), a confidence and its closest examples,
    and "What kind of defect is it?" is answered with the user's kinds."""
    defects = tmp_path / "defects"
    for kind in ("contamination", "cut", "hole"):
        copy_examples(defects, kind, masked(tire_dir, kind)[:3])
    query = masked(tire_dir, "contamination")[6][0]
    reference = sorted((tire_dir / "train" / "good").iterdir())[0]
    result = run_cli("ask", str(query), "--reference", str(reference), "--class-name", "tire", "--defects", str(defects),
                     "--question", "What kind of defect is it?", "--json", "--no-llm")
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(result.stdout)
    assert data["anomalous"] is True and data["regions"]
    for region in data["regions"]:
        assert region["kind"] in ("contamination", "cut", "hole", None)
        assert 0 < region["kind_confidence"] <= 1 and region["closest_examples"].endswith(" of 3")
    assert "It looks most like a *" in data["answer"] or "none of the kinds you gave me" in data["answer"]


@pytest.mark.slow
def test_eval_kinds_reports_accuracy_and_rejection(tire_dir, tmp_path):
    output = tmp_path / "kinds.json"
    result = run_cli("eval-kinds", "--data", str(tire_dir), "--defect-shots", "1", "--seeds", "1", "--subset", "dev",
                     "--regions", "mask", "--output", str(output))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(output.read_text())["tire"]
    assert report["kinds"] == ["combined", "contamination", "cut", "hole"] and report["examples_per_kind"]["cut"] == 1
    for key in ("defect_kind_accuracy", "open_set_rejection"):
        assert set(report[key]) == {"mean", "std"} and 0 <= report[key]["mean"] <= 100
    assert report["defect_kind_accuracy"]["mean"] > 40  # chance is 25 %


def test_kind_sentences_name_the_kind_or_say_none():
    """The answer to "What kind of defect is it?" with examples: each region's kind and how many of its
    nearest examples agree, positions when there are several, the open-set sentence otherwise, and
    once the hint that a kind matched from the engine's region needs checking."""
    from assistant.answer import kind_note
    from assistant.defect_kinds import KindMatch
    from assistant.result import Detection, Region

    regions = [Region((0, 0, 10, 10), "top left", 0.01, 2.0), Region((50, 50, 60, 60), "center", 0.01, 1.5)]
    detection = Detection(True, 2.0, 1.0, np.zeros((64, 64), np.float32), regions, (64, 64), "few-shot", 1)
    kinds = ("cut", "hole")
    cut = KindMatch("cut", "cut", 0.8, 3, 4, 0.5, 0.7, kinds)
    far = KindMatch(None, "hole", 0.6, 1, 2, 0.9, 0.7, kinds)
    one = kind_note("describe", detection, "What kind of defect is it?", [cut])
    assert one.startswith("It looks most like a *cut* (closest to 3 of your 4 cut examples). Take the kind as a hint")
    both = kind_note("describe", detection, "What kind of defect is it?", [cut, far])
    assert both.startswith("At the top left, it looks most like a *cut*")
    assert "At the center, it looks like none of the kinds you gave me (cut and hole): the nearest, *hole*," in both
    assert both.count("Take the kind as a hint") == 1
    assert kind_note("judgement", detection, "Is there a hole?", [far]).startswith("It looks like none of the kinds")
    assert kind_note("describe", detection, "What kind of defect is it?", []) == ""  # no examples: as before


@pytest.mark.slow
def test_inspect_reports_the_kind_of_each_region(tire_dir, tmp_path):
    import csv

    defects = tmp_path / "defects"
    for kind in ("contamination", "hole"):
        copy_examples(defects, kind, masked(tire_dir, kind)[0:24:8])
    parts = tmp_path / "parts"
    parts.mkdir()
    for image, _ in masked(tire_dir, "contamination")[5:7]:
        shutil.copy(image, parts / image.name)
    reference = sorted((tire_dir / "train" / "good").iterdir())[0]
    result = run_cli("inspect", str(parts), "--reference", str(reference), "--class-name", "tire",
                     "--defects", str(defects), "--out", str(tmp_path / "report"), "--no-llm")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "report" / "report.csv").open(encoding="utf-8")))
    flagged = [row for row in rows if row["anomalous"] == "true"]
    assert flagged
    for row in flagged:
        assert re.search(r"\] ((contamination|hole) \(\d+ %, closest to \d of 3\)|none of the kinds given)", row["regions"])
    html = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "closest to" in html or "none of the kinds given" in html
