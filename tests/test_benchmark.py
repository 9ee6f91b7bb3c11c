"""`bench` on the real embedded engine: every stage is measured, the JSON carries the figures the
issue asks for, and anomalib's PatchCore runs on our weights (or says why it cannot). Figures are
printed, not asserted: only that each is measured."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from assistant.assistant import Assistant
from assistant.images import load_image
from conftest import run_cli
from eval.anomalib_patchcore import missing_reason, patchcore_model, patchcore_times, pixels
from eval.benchmark import STAGES, benchmark_files, run_benchmark, stage_times


@pytest.fixture(scope="module")
def assistant():
    return Assistant("embedded", use_llm=False)


def test_every_stage_is_timed(assistant):
    files = benchmark_files(None, 3)
    row = stage_times(assistant, files[:2], [load_image(files[2])], repeats=1)
    for stage in (*STAGES, "detect"):
        assert row[f"{stage}_ms"] > 0, stage
    assert row["stages_sum_ms"] == pytest.approx(sum(row[f"{s}_ms"] for s in STAGES if s != "answer"))
    assert row["batch2_ms_per_image"] > 0


def test_bench_json_has_detect_and_anomalib_figures(tmp_path):
    out = tmp_path / "bench.json"
    run_benchmark(shots=[1], backends=["torch"], repeats=1, queries=2, json_path=out)
    report = json.loads(out.read_text())
    assert report["detect_ms"] > 0 and report["detect_backend"] == "torch"
    assert report["backends"]["torch"]["shots"]["1"]["patches"] > 0
    assert report["machine"]["torch_threads"] == torch.get_num_threads()
    if missing_reason() is None:
        assert report["anomalib_patchcore_ms"] > 0
        assert report["anomalib"]["shots"]["1"]["patches"] == 102  # 10 % of one 32 x 32 grid at 256 px
    else:
        assert "anomalib_patchcore_ms" not in report and "not installed" in report["anomalib"]["skipped"]


def test_patchcore_runs_our_weights(assistant):
    if missing_reason():
        pytest.skip(missing_reason())
    encoder = assistant.engine.encoder
    model = patchcore_model(encoder)
    x = pixels(load_image(benchmark_files(None, 1)[0]), encoder)
    with torch.no_grad():
        theirs = model.feature_extractor(x)
        ours = encoder.backbone(x)
    torch.testing.assert_close(theirs["blocks.2"], ours[1])  # the bank's levels 1 and 2
    torch.testing.assert_close(theirs["blocks.4"], ours[2])


def test_patchcore_without_anomalib_says_why(monkeypatch, assistant):
    for name in [name for name in sys.modules if name == "anomalib" or name.startswith("anomalib.")] or ["anomalib"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed (earlier tests imported it)
    report = patchcore_times(assistant.engine.encoder, benchmark_files(None, 1), [], [1], repeats=1)
    assert set(report) == {"skipped"} and "anomalib is not installed" in report["skipped"]


def test_bench_refuses_bad_options():
    result = run_cli("bench", "--backends", "torch,gpu", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --backends takes torch, onnx, onnx-int8, openvino; got 'torch,gpu'"
