"""Bad input through the command lines: exit code 2 and one line on stderr naming the problem.

(The same corpus goes through the web app's API in tests/test_app.py.) Input is checked before any
model is loaded, so each refusal here costs only the start of the CLI.
"""
from __future__ import annotations

import json

import pytest
from PIL import Image

from conftest import run_cli


def assert_refused(result, *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout[-500:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr and lines[0].startswith("error:")
    for word in words:
        assert word.lower() in lines[0].lower(), f"{word!r} not in {lines[0]!r}"
    assert result.stdout == ""


def _error_cases(corpus):
    return [name for name, case in corpus.items() if case.expect == "error"]


def test_ask_refuses_each_bad_image_with_one_line(bad_inputs):
    reference = str(bad_inputs["reference.png"].path)
    for name in _error_cases(bad_inputs):
        case = bad_inputs[name]
        assert_refused(run_cli("ask", str(case.path), "--reference", reference, "--json"), *case.words)


def test_ask_refuses_bad_reference_and_options(bad_inputs, tmp_path):
    good = str(bad_inputs["good.png"].path)
    assert_refused(run_cli("ask", good, "--reference", str(bad_inputs["text.png"].path)), "reference text.png")
    assert_refused(run_cli("ask", str(tmp_path / "missing.png")), "missing.png", "not found")
    assert_refused(run_cli("ask", str(tmp_path)), "folder")
    assert_refused(run_cli("ask", good, "--threshold", "-1"), "threshold")
    assert_refused(run_cli("ask", good, "--heatmap", str(tmp_path)), "--heatmap")
    assert_refused(run_cli("ask", good, "--preset", "no-such-preset"), "no-such-preset", "embedded")


def test_ask_copes_with_odd_but_valid_images(bad_inputs, tmp_path):
    """EXIF-rotated query, reference of another size, 10,000-character question: a correct answer."""
    from make_bad_inputs import LONG_MESSAGE

    case = bad_inputs["exif_rotated.jpg"]
    heatmap = tmp_path / "overlay.png"
    result = run_cli("ask", str(case.path), "--reference", str(bad_inputs["reference_other_size.png"].path),
                     "--question", LONG_MESSAGE, "--json", "--heatmap", str(heatmap), "--no-llm")
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(result.stdout)
    assert data["answer"] and data["anomalous"] in (True, False) and data["threshold"] > 0
    assert Image.open(heatmap).size == case.size  # upright: the EXIF rotation was applied
    for region in data["regions"]:
        x0, y0, x1, y1 = region["box"]
        assert x1 <= case.size[0] and y1 <= case.size[1]


def test_inspect_refuses_bad_arguments(bad_inputs, tmp_path):
    folder = str(bad_inputs["good.png"].path.parent)
    assert_refused(run_cli("inspect", str(tmp_path / "nope"), "--out", str(tmp_path / "r")), "not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    assert_refused(run_cli("inspect", str(empty), "--out", str(tmp_path / "r")), "no images")
    assert_refused(run_cli("inspect", folder, "--reference", str(bad_inputs["bomb.png"].path), "--out",
                           str(tmp_path / "r")), "reference bomb.png", "too large")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert_refused(run_cli("inspect", folder, "--out", str(a_file)), "not a folder")
    assert not (tmp_path / "r").exists()  # nothing written for a refused run


@pytest.mark.parametrize("layout", ["unreadable_train_image", "missing_folder", "no_dataset"])
def test_eval_refuses_malformed_dataset(bad_inputs, tmp_path, layout):
    root = tmp_path / "broken"
    if layout == "unreadable_train_image":
        (root / "train" / "good").mkdir(parents=True)
        (root / "test" / "good").mkdir(parents=True)
        (root / "test" / "cut").mkdir(parents=True)
        (root / "train" / "good" / "000.png").write_bytes(bad_inputs["text.png"].path.read_bytes())
        (root / "test" / "good" / "000.png").write_bytes(bad_inputs["good.png"].path.read_bytes())
        (root / "test" / "cut" / "000.png").write_bytes(bad_inputs["truncated.png"].path.read_bytes())
        words = ["000.png"]
    elif layout == "missing_folder":
        words = ["not found"]
    else:
        root.mkdir()
        (root / "random.txt").write_text("nothing here")
        words = ["no dataset"]
    assert_refused(run_cli("eval", "--data", str(root), "--seeds", "1"), *words)
