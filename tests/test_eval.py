"""The evaluation CLI contract on a small real MVTec-layout folder built from the MIT textile set."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
METRICS = {"image_auroc", "pixel_auroc", "aupro", "image_f1_max", "judgement_accuracy", "ms_per_image", "n_test",
           "defects_out_of_frame"}


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "assistant.cli", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    """textile/{train/good, test/good, test/blot, ground_truth/blot}: real photos, painted defects."""
    data = pytest.importorskip("conformal_clip_data")
    paths = sorted(data.nominal_dir().glob("*.jpg"))[100:112]
    root = tmp_path_factory.mktemp("mvtec") / "textile"
    for folder in ("train/good", "test/good", "test/blot", "ground_truth/blot"):
        (root / folder).mkdir(parents=True)
    for i, path in enumerate(paths[:4]):
        Image.open(path).save(root / "train" / "good" / f"{i:03d}.png")
    for i, path in enumerate(paths[4:8]):
        Image.open(path).save(root / "test" / "good" / f"{i:03d}.jpg")
    rng = np.random.default_rng(0)
    for i, path in enumerate(paths[8:12]):
        array = np.asarray(Image.open(path).convert("RGB")).copy()
        mask = np.zeros(array.shape[:2], np.uint8)
        y, x = rng.integers(20, 180, 2)
        array[y:y + 40, x:x + 40] = (255, 30, 30)
        mask[y:y + 40, x:x + 40] = 255
        Image.fromarray(array).save(root / "test" / "blot" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "ground_truth" / "blot" / f"{i:03d}_mask.png")
    return root


def test_eval_writes_the_documented_schema_and_is_deterministic(small_dataset, tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    scores = tmp_path / "scores.csv"
    run = cli("eval", "--data", str(small_dataset.parent), "--category", "textile", "--shots", "1", "--seeds", "2",
              "--output", str(first), "--csv", str(scores))
    assert run.returncode == 0, run.stderr
    assert "textile" in run.stdout
    report = json.loads(first.read_text())
    assert set(report) == {"config", "results"}
    entry = report["results"]["textile"]
    assert set(entry) == METRICS
    assert entry["n_test"] == 8
    assert entry["defects_out_of_frame"] == 0  # a clean run leaves no defect out
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max"):
        assert set(entry[key]) == {"mean", "std"} and 0 <= entry[key]["mean"] <= 100
    assert entry["image_auroc"]["mean"] >= 90  # painted blots are obvious
    assert entry["pixel_auroc"]["mean"] >= 90
    assert len(scores.read_text().strip().splitlines()) == 1 + 2 * 8
    again = cli("eval", "--data", str(small_dataset), "--shots", "1", "--seeds", "2", "--output", str(second))
    assert again.returncode == 0, again.stderr
    repeat = json.loads(second.read_text())["results"]["textile"]
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max"):
        assert repeat[key] == entry[key]


def test_malformed_dataset_is_one_clear_line(small_dataset, tmp_path):
    broken = tmp_path / "broken"
    (broken / "train" / "good").mkdir(parents=True)
    (broken / "test" / "crack").mkdir(parents=True)
    (broken / "ground_truth" / "crack").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(broken / "train" / "good" / "0.png")
    Image.new("RGB", (64, 64)).save(broken / "test" / "crack" / "0.png")
    run = cli("eval", "--data", str(broken), "--shots", "1", "--seeds", "1", timeout=300)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert "0.png" in run.stderr or "mask" in run.stderr
    missing = cli("eval", "--data", str(tmp_path / "nowhere"), "--shots", "1", timeout=300)
    assert missing.returncode == 2 and "nowhere" in missing.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "tire").is_dir(), reason=f"shared datasets not found at {SHARED}")
def test_eval_on_shared_tire_by_path_alone(tmp_path):
    out = tmp_path / "tire.json"
    run = cli("eval", "--data", str(SHARED), "--category", "tire", "--shots", "1", "--seeds", "1", "--output", str(out),
              timeout=1200)
    assert run.returncode == 0, run.stderr
    entry = json.loads(out.read_text())["results"]["tire"]
    assert entry["n_test"] == 112 and entry["pixel_auroc"]["mean"] > 90
