"""Training pipeline: targets, losses, tiny real runs (reproducible, resumable, multi-process)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

conformal = pytest.importorskip("conformal_clip_data", reason="needs the MIT textile set (pip install conformal-clip-data)")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """8 training images of the textile set (never the first 100: those are test images)."""
    folder = tmp_path_factory.mktemp("textile")
    files = sorted(Path(conformal.nominal_dir()).iterdir())[100:108]
    for f in files:
        shutil.copy(f, folder / f.name)
    return folder


def train(args: list[str], timeout: int = 600, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = (launcher or [PY]) + ["-m", "training.train", *args, "--no-progress", "--threads", "1"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def log_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]


# -- targets and losses (fast) --------------------------------------------------------------------
def test_targets_from_mask_match_grounded_answers():
    from assistant.answer import grounded_answer
    from training.targets import conversation, mask_detection

    rng = np.random.default_rng(0)
    mask = np.zeros((90, 90), bool)
    mask[5:20, 5:20] = True
    det = mask_detection(mask, "textile", rng)
    assert det.anomalous and det.score > det.threshold
    assert [r.position for r in det.regions] == ["top left"]
    normal = mask_detection(np.zeros((90, 90), bool), "textile", rng)
    assert not normal.anomalous and normal.score < normal.threshold and normal.regions == []
    seen = set()
    for _ in range(60):
        ex = conversation(det, rng, chat_fraction=0.2)
        seen.add(ex.kind)
        if ex.kind == "grounded":
            assert ex.answer == grounded_answer(ex.intent, det)
            assert "ANOMALOUS" in ex.system
    assert seen == {"grounded", "chat"}
    ex = conversation(normal, rng, chat_fraction=0.0)
    assert "NORMAL" in ex.system and ex.answer == grounded_answer(ex.intent, normal)


def test_losses():
    from training.losses import LossWeights, dice_loss, focal_loss, map_losses, total_loss

    target = torch.zeros(2, 8, 8)
    target[:, 2:5, 2:5] = 1
    good, bad = target * 0.98 + 0.01, 1 - target * 0.98 - 0.01
    assert focal_loss(good, target) < focal_loss(bad, target)
    assert dice_loss(good, target) < 0.05 < dice_loss(bad, target)
    logits = [torch.randn(2, 2, 4, 4, requires_grad=True)]
    focal, dice = map_losses(logits, target)
    total = total_loss({"focal": focal, "dice": dice, "ce": torch.tensor(2.0)}, LossWeights.parse("0.5,1,2"))
    assert torch.isclose(total, 1.0 + focal + 2 * dice)
    total.backward()
    with pytest.raises(ValueError):
        LossWeights.parse("1,1")


def test_dataset_is_deterministic_and_excludes_test_images(small_data):
    from training.data import CONFORMAL, SyntheticDataset, collate, resolve_sources

    source = resolve_sources([CONFORMAL])[0]
    names = {p.name for p in source.files}
    test_names = {p.name for p in sorted(Path(conformal.nominal_dir()).iterdir())[:100]}
    assert not names & test_names and len(names) == 900
    ds = SyntheticDataset(resolve_sources([str(small_data)], ["textile"]), 64, 16, seed=3)
    a, b = ds[5], ds[5]
    assert torch.equal(a["pixels"], b["pixels"]) and torch.equal(a["mask"], b["mask"])
    assert a["chat"].answer == b["chat"].answer
    batch = collate([ds[i] for i in range(6)])
    assert batch["pixels"].shape == (6, 3, 64, 64) and batch["mask"].shape == (6, 16, 16)


# -- real runs ------------------------------------------------------------------------------------
TINY = ["--image-size", "64", "--batch-size", "4", "--no-llm", "--seed", "1"]


@pytest.mark.slow
def test_tiny_run_losses_fall_and_is_reproducible(small_data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        train(["--data", str(small_data), "--class-name", "textile", "--steps", "40", "--lr", "3e-3",
               "--save-every", "20", "--out", str(out), *TINY])
    rows = log_rows(a)
    assert len(rows) == 40
    first = np.mean([r["total"] for r in rows[:8]])
    last = np.mean([r["total"] for r in rows[-8:]])
    assert last < first, (first, last)
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "adapters.safetensors")), load_file(str(b / "adapters.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (a / "loss_curve.png").stat().st_size > 1000
    meta = json.loads((a / "meta.json").read_text())
    assert meta["steps"] == 40 and meta["duration_s"] > 0
    assert (a / "latest").read_text() == "step-40"


@pytest.mark.slow
def test_sigkill_then_resume(small_data, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    args = ["--data", str(small_data), "--class-name", "textile", "--steps", "30", "--save-every", "4", "--out", str(out), *TINY]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([PY, "-m", "training.train", *args, "--no-progress", "--threads", "1"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "step-8").is_dir():
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "step-8").is_dir(), "no checkpoint before the kill"
    latest = out / (out / "latest").read_text().strip()
    killed_at = int(latest.name.split("-")[1])
    assert killed_at < 30
    load_file(str(latest / "adapters.safetensors"))  # intact
    load_file(str(latest / "trainer_state.safetensors"))
    result = train(args + ["--resume"])
    assert f"step {killed_at}" in result.stderr
    rows = log_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 31))
    from assistant.engine import AnomalyEngine

    engine = AnomalyEngine("embedded", checkpoint_dir=out)
    assert engine.text_map.trained


@pytest.mark.slow
def test_run_with_llm_saves_bridge_and_lora(small_data, tmp_path):
    out = tmp_path / "llm"
    train(["--data", str(small_data), "--class-name", "textile", "--steps", "3", "--batch-size", "1",
           "--image-size", "64", "--save-every", "2", "--out", str(out), "--seed", "0"], timeout=900)
    rows = log_rows(out)
    assert len(rows) == 3 and all("ce" in r for r in rows)
    for name in ("adapters.safetensors", "bridge.safetensors", "lora/adapter_model.safetensors", "lora/adapter_config.json"):
        assert (out / name).is_file(), name
    from safetensors.torch import load_file

    lora = load_file(str(out / "lora" / "adapter_model.safetensors"))
    assert lora and sum(v.numel() for v in lora.values()) < 5_000_000


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(small_data, tmp_path):
    out = tmp_path / "ddp"
    # accelerate 1.x: `--cpu --num_processes 2` starts ONE process (simple launcher); `--multi_gpu` on a
    # machine without CUDA starts 2 torchrun workers, and the trainer joins them in a gloo group (cpu=True).
    launcher = [PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    train(["--data", str(small_data), "--class-name", "textile", "--steps", "4", "--save-every", "2",
           "--out", str(out), *TINY], launcher=launcher)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["processes"] == 2 and len(log_rows(out)) == 4
    assert (out / "adapters.safetensors").is_file()


def test_train_subcommand_registered():
    from assistant.cli import build_parser

    args = build_parser().parse_args(["train", "--data", "conformal-clip-data", "--out", "x", "--no-llm", "--steps", "2"])
    assert args.no_llm and args.steps == 2 and callable(args.handler)
