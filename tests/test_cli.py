"""`anomaly-assistant ask` and `inspect` as a user runs them: subprocesses, real models, real files."""
from __future__ import annotations

import csv
import html
import json
import re
import shutil
from pathlib import Path

from PIL import Image

from assistant.prompts import load
from conftest import REPO, run_cli


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("ask", "inspect", "app", "eval"):
        assert command in result.stdout


def test_ask_json_and_heatmap(textile, tmp_path):
    """Default (language model on): stdout is exactly one JSON object; the overlay PNG is written."""
    heatmap = tmp_path / "out" / "overlay.png"
    query = textile["defect"][1]
    result = run_cli("ask", str(query), "--reference", str(textile["reference"][0]), "--class-name", "textile",
                     "--question", "Is there any defect on this fabric?", "--json", "--heatmap", str(heatmap))
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert set(data) == {"answer", "anomalous", "score", "threshold", "regions", "capture"}
    assert data["capture"] is None  # a texture filling the frame: no background to read the capture on
    assert data["anomalous"] is True and data["answer"].startswith("Yes")
    width, height = Image.open(query).size
    for region in data["regions"]:
        x0, y0, x1, y1 = region["box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height and isinstance(region["position"], str)
    assert Image.open(heatmap).size == (width, height)
    assert [p.name for p in heatmap.parent.iterdir()] == ["overlay.png"]  # no temporary files left


def test_inspect_folder_with_bad_files(textile, bad_inputs, tmp_path):
    folder = tmp_path / "parts"
    (folder / "line2").mkdir(parents=True)
    shutil.copy(textile["normal"][0], folder / "a_normal.png")
    shutil.copy(textile["defect"][0], folder / "line2" / "b_defect.png")
    for name in ("empty.png", "text.png", "truncated.jpg", "animated.gif"):
        shutil.copy(bad_inputs[name].path, folder / "line2" / name)
    (folder / "notes.txt").write_text("not an image, not listed")
    out = tmp_path / "report"
    result = run_cli("inspect", str(folder), "--reference", str(textile["reference"][0]), "--class-name", "textile",
                     "--out", str(out), "--no-llm")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped 1 file that is not an image by its suffix: notes.txt" in result.stderr
    assert "inspected 6 of 6 images" in result.stdout and "3 unreadable" in result.stdout
    note = load("answers")["estimated_threshold"]  # one reference of a surface: said once, on top
    assert f"note:   {note}" in result.stdout

    rows = list(csv.DictReader((out / "report.csv").open(encoding="utf-8")))
    assert list(rows[0]) == ["file", "anomalous", "score", "threshold", "regions", "capture", "answer", "error"]
    assert [r["file"] for r in rows] == sorted(r["file"] for r in rows)
    by_file = {r["file"]: r for r in rows}
    assert set(by_file) == {"a_normal.png", "line2/animated.gif", "line2/b_defect.png", "line2/empty.png",
                            "line2/text.png", "line2/truncated.jpg"}
    assert by_file["line2/animated.gif"]["score"] and not by_file["line2/animated.gif"]["error"]  # first frame
    assert by_file["line2/b_defect.png"]["anomalous"] == "true" and by_file["line2/b_defect.png"]["regions"]
    assert by_file["a_normal.png"]["anomalous"] == "false" and not by_file["a_normal.png"]["error"]
    assert "empty" in by_file["line2/empty.png"]["error"] and by_file["line2/empty.png"]["score"] == ""

    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == sorted(Path(r["file"]).with_suffix(".png").as_posix().replace("/", "__")
                              for r in rows if r["anomalous"] == "true")  # one per anomalous image
    assert "line2__b_defect.png" in overlays
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<style>" in page and "data:image/jpeg;base64," in page
    assert not re.search(r"(src|href)=['\"]https?://", page)  # self-contained
    assert "ANOMALOUS" in page and "Unreadable files (3)" in page and "text.png" in page
    assert "(reference 1: " in page  # the defect's place on the reference photo
    assert page.index(html.escape(note)) < page.index("a_normal.png")
    assert page.index("b_defect.png") < page.index("a_normal.png")  # ordered by score
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_inspect_zero_shot_works_from_the_images_alone(textile, tmp_path):
    """No reference and an empty checkpoint (untrained text map): each image is compared with itself,
    so the painted defect still outranks the normal textile."""
    folder = tmp_path / "parts"
    folder.mkdir()
    shutil.copy(textile["normal"][0], folder / "a_normal.png")
    shutil.copy(textile["defect"][0], folder / "b_defect.png")
    empty = tmp_path / "empty_checkpoint"
    empty.mkdir()
    result = run_cli("inspect", str(folder), "--out", str(tmp_path / "r"), "--no-llm", "--checkpoint", str(empty))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {r["file"]: r for r in csv.DictReader((tmp_path / "r" / "report.csv").open(encoding="utf-8"))}
    assert float(rows["b_defect.png"]["score"]) > float(rows["a_normal.png"]["score"])
    assert rows["b_defect.png"]["anomalous"] == "true" and not rows["b_defect.png"]["error"]
    note = load("answers")["zero_shot_threshold"]  # no reference: said once, on top
    assert result.stdout.count(f"note:   {note}") == 1
    assert html.escape(note) in (tmp_path / "r" / "report.html").read_text(encoding="utf-8")


def test_inspect_zero_shot_without_any_zero_shot_map_is_one_line(textile, tmp_path):
    """A preset without the self map and an untrained text map has nothing to judge by: one line, exit 2."""
    preset = json.loads((REPO / "assistant" / "presets" / "embedded.json").read_text(encoding="utf-8"))
    preset["anomaly_map"]["zero_shot_self_radius"] = 0
    (tmp_path / "no_self_map.json").write_text(json.dumps(preset), encoding="utf-8")
    empty = tmp_path / "empty_checkpoint"
    empty.mkdir()
    result = run_cli("inspect", str(textile["normal"][0].parent), "--out", str(tmp_path / "r"), "--no-llm",
                     "--preset", str(tmp_path / "no_self_map.json"), "--checkpoint", str(empty))
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "reference" in last and "Traceback" not in result.stderr
    assert result.stdout == ""
