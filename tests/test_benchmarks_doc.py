"""docs/benchmarks.md is what eval/benchmarks_doc.py makes of docs/eval/*.json, and every figure in it
is its run's figure. Reads JSON and Markdown only: no model is loaded."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from conftest import REPO
from eval import benchmarks_doc

DOC = REPO / "docs" / "benchmarks.md"
EVAL_DIR = REPO / "docs" / "eval"
FIGURE = re.compile(r"^(-?\d+(?:\.\d+)?) ± (\d+(?:\.\d+)?)$")
TITLE_TO_KEY = {"image AUROC": "image_auroc", "pixel AUROC": "pixel_auroc", "AUPRO": "aupro",
                "F1-max": "image_f1_max", "verdict": "judgement_accuracy"}


def same_figure(text: str, value) -> bool:
    """A table cell against a JSON {"mean", "std"}: equal to the one decimal shown, or both absent."""
    if text == "n/a":
        return not isinstance(value, dict) or value.get("mean") is None
    match = FIGURE.match(text)
    if not match or not isinstance(value, dict) or value.get("mean") is None:
        return False
    return abs(float(match[1]) - value["mean"]) <= 0.05 + 1e-9 and abs(float(match[2]) - (value["std"] or 0.0)) <= 0.05 + 1e-9


def tables_after(lines: list[str], start: int) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the first Markdown table at or after line `start`."""
    index = start
    while not lines[index].startswith("|"):
        index += 1
    header = [c.strip() for c in lines[index].strip("|").split("|")]
    rows = []
    for line in lines[index + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return header, rows


def test_the_committed_file_is_what_the_runs_give(tmp_path):
    out = tmp_path / "benchmarks.md"
    assert benchmarks_doc.main(["--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == DOC.read_text(encoding="utf-8"), \
        "docs/benchmarks.md is stale: run `.venv/bin/python -m eval.benchmarks_doc` and commit it"
    assert benchmarks_doc.main(["--check"]) == 0


def test_every_run_table_figure_is_the_json_figure():
    lines = DOC.read_text(encoding="utf-8").splitlines()
    checked = 0
    for number, line in enumerate(lines):
        run = re.match(r"- run: `docs/eval/([^`]+)`, set `([^`]+)`", line)
        if not run:
            continue
        results = json.loads((EVAL_DIR / run[1]).read_text(encoding="utf-8"))["results"]
        header, rows = tables_after(lines, number)
        assert header[:2] == ["images", "n"]
        for row in rows:
            key = run[2] if row[0] == "all" else f"{run[2]}:{row[0]}"
            assert key in results, f"{run[1]}: no result {key!r}"
            assert row[1] == str(results[key]["n_test"])
            for title, text in zip(header[2:], row[2:]):
                assert same_figure(text, results[key].get(TITLE_TO_KEY[title])), f"{run[1]} {key} {title}: {text}"
                checked += 1
    assert checked >= 100  # every run of the shipped engine has a table


def test_the_summary_is_each_runs_whole_set_row():
    lines = DOC.read_text(encoding="utf-8").splitlines()
    header, rows = tables_after(lines, lines.index("## Summary"))
    expected = [(name, set_name, setting) for name, set_name, setting, _ in benchmarks_doc.CURRENT]
    assert [(r[0], r[1]) for r in rows] == [(s, t) for _, s, t in expected]
    for (name, _, _), row in zip(expected, rows):
        data = json.loads((EVAL_DIR / name).read_text(encoding="utf-8"))
        whole = data["results"][benchmarks_doc.categories(data["results"])[0]]
        for title, text in zip(header[2:6], row[2:6]):
            assert same_figure(text, whole.get(TITLE_TO_KEY[title])), f"{name} {title}: {text}"
        assert row[7] == str(whole["n_test"])


def test_other_runs_show_their_own_headline_figures():
    lines = DOC.read_text(encoding="utf-8").splitlines()
    _, rows = tables_after(lines, lines.index("## Other runs"))
    listed = {row[0].strip("`") for row in rows}
    current = {name for name, *_ in benchmarks_doc.CURRENT}
    runs = {p.name for p in EVAL_DIR.glob("*.json")
            if benchmarks_doc.is_eval_run(json.loads(p.read_text(encoding="utf-8")))}
    assert listed == runs - current
    for row in rows:
        data = json.loads((EVAL_DIR / row[0].strip("`")).read_text(encoding="utf-8"))
        whole = data["results"][row[1]]
        for key, text in zip(("image_auroc", "pixel_auroc", "aupro"), row[4].split(" / ")):
            mean = whole[key]["mean"]
            assert text == "n/a" if mean is None else abs(float(text) - mean) <= 0.05 + 1e-9
        assert row[5] != "not described"


def test_a_matrix_run_gets_a_table_per_set_and_its_absence_is_fine(tmp_path):
    runs = tmp_path / "eval"
    runs.mkdir()
    shutil.copy(EVAL_DIR / "tire_1shot_score_border.json", runs)
    (runs / "not_a_run.json").write_text("[1, 2]", encoding="utf-8")
    (runs / "broken.json").write_text("{", encoding="utf-8")
    without = benchmarks_doc.generate(runs)
    assert "## Benchmark matrix" not in without and "### tire · 1 reference" in without
    assert "magnetic_tile_1shot_score_border.json" in without  # named as missing, not a failure

    figure = {"mean": 81.3, "std": 1.5}
    rows = [{"set": "tire", "family": "object", "condition": condition, "shots": shots, "seeds": 5, "n_test": 112,
             "image_auroc": figure, "pixel_auroc": figure, "aupro": {"mean": None, "std": None},
             "judgement_accuracy": figure, "image_f1_max": figure}
            for condition in ("clean", "pose") for shots in (1, 4)]
    rows.append({**rows[0], "set": "tire_logical", "family": None})
    config = {"sources": ["/x/shared/datasets", "conformal-clip-data"], "shots": [1, 4], "seeds": 5,
              "many_shot_seeds": 2, "conditions": {"clean": [], "pose": ["rotate", "shift"]}, "split": "holdout",
              "preset": "embedded", "text_map_trained": True, "torch_threads": 2, "pixel_eval_side": 256}
    (runs / "matrix.json").write_text(json.dumps({"config": config, "rows": rows}), encoding="utf-8")
    text = benchmarks_doc.generate(runs)
    assert "## Benchmark matrix" in text
    assert ("`anomaly-assistant matrix --shots 1,4 --seeds 5 --many-shot-seeds 2 --conditions clean,pose "
            "--split holdout --output docs/eval/matrix.json`") in text
    assert "### tire (family: object)" in text and "### tire_logical (family: -)" in text
    assert "| pose | 4 | 5 | 112 | 81.3 ± 1.5 | 81.3 ± 1.5 | n/a | 81.3 ± 1.5 |" in text
    assert "## Other runs" not in text  # the matrix is not listed as an eval run


@pytest.mark.parametrize("name", [name for name, *_ in benchmarks_doc.CURRENT])
def test_each_run_of_the_shipped_engine_records_its_machine(name):
    config = json.loads((EVAL_DIR / name).read_text(encoding="utf-8"))["config"]
    assert config.get("machine"), f"{name}: add the machine it ran on to its config"


def test_the_profile_figures_are_the_benchmark_runs_own():
    path = EVAL_DIR / benchmarks_doc.PROFILE_FILE
    if not path.is_file():
        pytest.skip("no profile benchmark run in docs/eval")
    data = json.loads(path.read_text(encoding="utf-8"))
    lines = DOC.read_text(encoding="utf-8").splitlines()
    _, rows = tables_after(lines, lines.index("## Profiles and large images"))
    figures = dict(rows)
    assert figures["profile create"] == f"{data['profile_create_s']} s"
    assert figures["profile load (beyond model loading)"] == f"{data['profile_load_s']} s"
    assert figures["good images in the profile"] == str(data["good_images"])


def test_the_speed_and_memory_figures_are_the_benchmark_runs_own():
    bench, memory = EVAL_DIR / benchmarks_doc.BENCH_FILE, EVAL_DIR / benchmarks_doc.MEMORY_FILE
    if not bench.is_file() or not memory.is_file():
        pytest.skip("no bench or memory benchmark run in docs/eval")
    lines = DOC.read_text(encoding="utf-8").splitlines()
    header, rows = tables_after(lines, lines.index("### Latency by stage (`anomaly-assistant bench`)"))
    detect = header.index("detect (end to end)")
    data = json.loads(bench.read_text(encoding="utf-8"))
    for backend, report in data["backends"].items():
        for shots, row in report["shots"].items():
            shown = next(r for r in rows if r[0] == backend and r[1] == shots)
            assert shown[detect] == f"{row['detect_ms']:.1f}"
    assert f"- end to end, 1 reference: {data['detect_ms']:.1f} ms (target 150 ms)" in lines
    busy_line = [line for line in lines if line.startswith("- machine:") and "torch threads" in line and "load average" in line]
    assert ("the machine was busy" in busy_line[0]) == (data["machine"]["load_average_1min"] > 0.5)
    _, rows = tables_after(lines, lines.index("### Memory (`eval/memory_benchmark.py`)"))
    figures = {row[0]: row[1] for row in rows}
    peak = json.loads(memory.read_text(encoding="utf-8"))["inspect_peak_mib"]
    assert any(value == f"peak {peak} MiB" for value in figures.values())


def test_the_defect_kind_figures_are_the_eval_kinds_runs_own():
    runs = {path.name: json.loads(path.read_text(encoding="utf-8")) for path in EVAL_DIR.glob("*_kinds.json")}
    if not runs:
        pytest.skip("no eval-kinds run in docs/eval")
    lines = DOC.read_text(encoding="utf-8").splitlines()
    header, rows = tables_after(lines, lines.index("## Defect kinds (`anomaly-assistant eval-kinds`)"))
    accuracy = header.index("kind accuracy")
    for name, data in runs.items():
        for entry in data.values():
            for regions, figures in (("mask", entry), ("engine", entry.get("engine_region") or {})):
                if "defect_kind_accuracy" not in figures:
                    continue
                shown = next(r for r in rows if r[0] == f"`{name}`" and r[2] == entry["subset"] and r[3] == regions
                             and r[4] == str(entry["defect_shots"]))
                assert shown[accuracy] == benchmarks_doc.cell(figures["defect_kind_accuracy"])
