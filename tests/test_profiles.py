"""Profiles (assistant/profiles.py): a reference set built once, saved, loaded and used in place of images.

Real engine, real images (the shared tire and magnetic tile sets), real files on disk; the CLI runs
as a user runs it. Profiles go to the session's temporary $ANOMALY_ASSISTANT_HOME (conftest.py).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from assistant import profiles
from assistant.images import load_image
from conftest import run_cli


@pytest.fixture(scope="module")
def engine():
    from assistant.engine import AnomalyEngine

    return AnomalyEngine("embedded")


def good_folder(dataset, tmp_path, count: int):
    folder = tmp_path / f"{dataset.name}_good"
    folder.mkdir()
    for path in sorted((dataset / "train" / "good").iterdir())[:count]:
        shutil.copy(path, folder / path.name)
    return folder


def test_a_loaded_profile_judges_as_its_reference_images_do(engine, tire_dir, tmp_path):
    """An object (turned views, one bank per view): the set read back from disk gives the scores and
    maps the set built from the images gives, with nothing encoded at load time."""
    good = sorted(good_folder(tire_dir, tmp_path, 1).iterdir())
    info = profiles.create(engine, "tire-one", good, "tire")
    assert info["n_good_images"] == 1 and info["class_name"] == "tire" and info["tiled"] is None
    assert set(info["good_images"]) == {good[0].name} and len(info["good_images"][good[0].name]) == 64
    folder = profiles.profile_dir("tire-one")
    assert sorted(p.name for p in folder.iterdir()) == [profiles.PROFILE_FILE, profiles.REFERENCES_FILE]
    assert not list(folder.parent.glob(".*"))  # no staging folder left behind
    loaded = profiles.load("tire-one", engine)
    assert loaded.references is not engine.references([load_image(good[0])], "tire")
    assert loaded.references.bank.pose_views > 0 and loaded.references.n_images == 1
    references = [load_image(good[0])]
    built = engine.references(references, "tire")
    assert built.capture is not None and np.allclose(loaded.references.capture, built.capture)
    for path in sorted((tire_dir / "test" / "cut").iterdir())[:2] + sorted((tire_dir / "test" / "good").iterdir())[:1]:
        image = load_image(path)
        from_images = engine.detect(image, references, "tire")
        from_profile = engine.detect(image, loaded.references, "tire")
        assert from_profile.score == pytest.approx(from_images.score, abs=1e-6)
        assert from_profile.anomalous == from_images.anomalous and from_profile.n_references == 1
        assert np.allclose(from_profile.anomaly_map, from_images.anomaly_map, atol=1e-5)


def test_a_surface_profile_keeps_its_texture_statistics_and_defect_examples(engine, magnetic_tile_dir, tmp_path):
    """A surface with two references (texture bank and tile statistics) and labelled defect examples:
    the described examples name the same kinds after loading as the folder does."""
    good = sorted(good_folder(magnetic_tile_dir, tmp_path, 2).iterdir())
    defects = tmp_path / "defects"
    for kind in ("blowhole", "crack"):
        (defects / kind).mkdir(parents=True)
        for image in sorted((magnetic_tile_dir / "test" / kind).iterdir())[:3]:
            shutil.copy(image, defects / kind / image.name)
            shutil.copy(magnetic_tile_dir / "ground_truth" / kind / f"{image.stem}_mask.png",
                        defects / kind / f"{image.stem}_mask.png")
    info = profiles.create(engine, "tile-two", good, "magnetic tile", defects)
    assert info["defect_kinds"] == {"blowhole": 3, "crack": 3}
    loaded = profiles.load("tile-two", engine)
    assert loaded.references.stats is not None and loaded.references.texture is not None
    assert loaded.defects.kinds == ["blowhole", "crack"]
    from assistant.defect_kinds import DefectExamples

    examples = DefectExamples.from_folder(defects)
    references = [load_image(path) for path in good]
    for path in sorted((magnetic_tile_dir / "test" / "blowhole").iterdir())[3:6]:
        image = load_image(path)
        detection = engine.detect(image, loaded.references, "magnetic tile")
        assert detection.score == pytest.approx(engine.detect(image, references, "magnetic tile").score, abs=1e-6)
        from_profile = loaded.defects.classify(engine, image, detection)
        from_folder = examples.classify(engine, image, detection, references, "magnetic tile")
        assert [(m.kind, round(m.confidence, 4)) for m in from_profile] == [(m.kind, round(m.confidence, 4)) for m in from_folder]


def test_the_cli_makes_lists_shows_uses_and_deletes_a_profile(magnetic_tile_dir, tmp_path):
    """`ask --profile` gives the decision and score `ask --reference` gives with the same image."""
    good = good_folder(magnetic_tile_dir, tmp_path, 1)
    made = run_cli("profile", "create", "tile-cli", "--good", str(good), "--class-name", "magnetic tile")
    assert made.returncode == 0, made.stderr
    assert "profile 'tile-cli': 1 good images" in made.stdout
    again = run_cli("profile", "create", "tile-cli", "--good", str(good))
    assert again.returncode == 2 and "exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    listed = run_cli("profile", "list")
    assert "tile-cli: magnetic tile, 1 good images" in listed.stdout
    shown = run_cli("profile", "show", "tile-cli", "--json")
    assert json.loads(shown.stdout)["class_name"] == "magnetic tile"

    query = str(sorted((magnetic_tile_dir / "test" / "crack").iterdir())[0])
    reference = str(next(good.iterdir()))
    with_profile = run_cli("ask", query, "--profile", "tile-cli", "--json", "--no-llm")
    with_images = run_cli("ask", query, "--reference", reference, "--class-name", "magnetic tile", "--json", "--no-llm")
    assert with_profile.returncode == 0 and with_images.returncode == 0, with_profile.stderr + with_images.stderr
    a, b = json.loads(with_profile.stdout), json.loads(with_images.stdout)
    assert a["anomalous"] == b["anomalous"] and round(a["score"], 3) == round(b["score"], 3)
    assert a["threshold"] == pytest.approx(b["threshold"]) and "magnetic tile" in a["answer"]

    both = run_cli("ask", query, "--profile", "tile-cli", "--reference", reference)
    assert both.returncode == 2 and "not both" in both.stderr
    deleted = run_cli("profile", "delete", "tile-cli")
    assert deleted.returncode == 0 and not profiles.profile_dir("tile-cli").exists()
    gone = run_cli("ask", query, "--profile", "tile-cli")
    assert gone.returncode == 2 and "no profile named 'tile-cli'" in gone.stderr


def damage(folder, how: str) -> None:
    info_path = folder / profiles.PROFILE_FILE
    info = json.loads(info_path.read_text())
    if how == "json":
        info_path.write_text(info_path.read_text()[:40])
    elif how == "tensors":
        tensors = folder / profiles.REFERENCES_FILE
        tensors.write_bytes(tensors.read_bytes()[:1000])
    elif how == "missing tensors":
        (folder / profiles.REFERENCES_FILE).unlink()
    elif how == "preset":
        info["preset_hash"] = "0" * 16
        info_path.write_text(json.dumps(info))
    elif how == "version":
        info["project_version"] = "0.0.1"
        info_path.write_text(json.dumps(info))
    elif how == "format":
        info["format"] = 99
        info_path.write_text(json.dumps(info))


@pytest.mark.parametrize("how, expected", [
    ("json", "not readable JSON"), ("tensors", "cannot be read"), ("missing tensors", "is missing"),
    ("preset", "was made with preset"), ("version", "version 0.0.1"), ("format", "another format"),
])
def test_a_damaged_or_foreign_profile_is_refused_in_one_line(engine, magnetic_tile_dir, tmp_path, how, expected):
    name = "tile-base"
    if not profiles.profile_dir(name).exists():
        profiles.create(engine, name, sorted(good_folder(magnetic_tile_dir, tmp_path, 1).iterdir()), "magnetic tile")
    copy = f"tile-{how.replace(' ', '-')}"
    shutil.copytree(profiles.profile_dir(name), profiles.profile_dir(copy))
    damage(profiles.profile_dir(copy), how)
    with pytest.raises(profiles.ProfileError, match=expected) as raised:
        profiles.load(copy, engine)
    assert "\n" not in str(raised.value)


def test_the_cli_refuses_a_damaged_profile_in_one_line(engine, magnetic_tile_dir, tmp_path):
    """Found after the models loaded (the tensors are read then): still one line and exit 2."""
    profiles.create(engine, "tile-broken", sorted(good_folder(magnetic_tile_dir, tmp_path, 1).iterdir()), "magnetic tile")
    damage(profiles.profile_dir("tile-broken"), "tensors")
    query = str(sorted((magnetic_tile_dir / "test" / "crack").iterdir())[0])
    result = run_cli("ask", query, "--profile", "tile-broken", "--no-llm")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: profile is damaged")


def test_a_failed_create_keeps_the_profile_it_would_replace(engine, magnetic_tile_dir, tmp_path):
    good = sorted(good_folder(magnetic_tile_dir, tmp_path, 1).iterdir())
    profiles.create(engine, "tile-kept", good, "magnetic tile")
    before = (profiles.profile_dir("tile-kept") / profiles.PROFILE_FILE).read_bytes()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        profiles.create(engine, "tile-kept", [*good, broken], "magnetic tile", replace=True)
    assert (profiles.profile_dir("tile-kept") / profiles.PROFILE_FILE).read_bytes() == before
    assert profiles.load("tile-kept", engine).references.n_images == 1
    assert not list(profiles.profiles_home().glob(".*"))
    with pytest.raises(profiles.ProfileError, match="profile name"):
        profiles.create(engine, "../escape", good)


def small_set(dataset, root, kind: str = "crack", n: int = 4):
    """An MVTec-layout copy of a few of `dataset`'s images: 2 good train, n good and n `kind` tests."""
    for part, source in (("train/good", sorted((dataset / "train" / "good").iterdir())[:2]),
                         ("test/good", sorted((dataset / "test" / "good").iterdir())[:n]),
                         (f"test/{kind}", sorted((dataset / "test" / kind).iterdir())[:n])):
        (root / part).mkdir(parents=True, exist_ok=True)
        for path in source:
            shutil.copy(path, root / part / path.name)
            if kind in part:
                (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                mask = f"{path.stem}_mask.png"
                shutil.copy(dataset / "ground_truth" / kind / mask, root / "ground_truth" / kind / mask)
    return root


def test_eval_and_inspect_take_a_profile(engine, magnetic_tile_dir, tmp_path):
    """`eval --profile` scores the set against the profile's set: the figures a 1-shot eval gives
    when it draws that same reference; `inspect --profile` writes the scores `detect` gives."""
    from assistant.cli import main
    from assistant.data import discover
    from eval.evaluate import draw_references, run_evaluation

    data = small_set(magnetic_tile_dir, tmp_path / "magnetic_tile")
    drawn = draw_references(discover(data)[0], 1, 0)
    profiles.create(engine, "tile-drawn", drawn, "magnetic tile")
    kwargs = dict(data=str(data), categories=None, output=None, progress=False, engine=engine)
    with_profile = run_evaluation(shots=0, seeds=3, profile="tile-drawn", **kwargs)
    drawing = run_evaluation(shots=1, seeds=1, class_name="magnetic tile", **kwargs)
    assert with_profile["config"]["profile"] == "tile-drawn" and with_profile["config"]["shots"] == 1
    ours, theirs = (next(iter(report["results"].values())) for report in (with_profile, drawing))
    for metric in ("image_auroc", "pixel_auroc"):
        assert ours[metric]["mean"] == pytest.approx(theirs[metric]["mean"], abs=1e-6)

    out = tmp_path / "report"
    queries = data / "test" / "crack"
    assert main(["inspect", str(queries), "--profile", "tile-drawn", "--no-llm", "--out", str(out)]) == 0
    rows = (out / "report.csv").read_text().splitlines()
    header = rows[0].split(",")
    reference = [load_image(drawn[0])]
    assert len(rows) == 5 and "profile tile-drawn" in (out / "report.html").read_text()
    for line in rows[1:]:
        row = dict(zip(header, line.split(",")))
        expected = engine.detect(load_image(queries / row["file"]), reference, "magnetic tile").score
        assert float(row["score"]) == pytest.approx(expected, abs=1e-4)


def test_a_profile_of_large_images_is_tiled_and_used_in_tiles(engine, magnetic_tile_dir, tmp_path):
    """Good images larger than one view make a tiled profile; its queries are cut at its scale."""
    cells = [Image.open(p).convert("RGB").resize((520, 520)) for p in sorted((magnetic_tile_dir / "train" / "good").iterdir())[:2]]
    mosaic = Image.new("RGB", (1040, 520))
    for index, cell in enumerate(cells):
        mosaic.paste(cell, (index * 520, 0))
    path = tmp_path / "large_good.png"
    mosaic.save(path)
    info = profiles.create(engine, "tile-large", [path], "magnetic tile")
    assert info["tiled"] and info["tiled"]["n_tiles"] > 1
    loaded = profiles.load("tile-large", engine)
    query = mosaic.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    from_profile = engine.detect(query, loaded.references, "magnetic tile")
    from_images = engine.detect(query, [mosaic], "magnetic tile")
    assert from_profile.anomaly_map.shape == (520, 1040)
    assert from_profile.score == pytest.approx(from_images.score, abs=1e-5)
    one_view = engine.references([cells[0]], "magnetic tile")
    with pytest.raises(ValueError, match="needs tiles"):
        engine.detect(query, one_view, "magnetic tile")
