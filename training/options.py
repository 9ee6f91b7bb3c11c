"""Command-line options of the trainer, importable without torch (the CLI builds its parser fast)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", required=True, help="folders of normal images, or 'conformal-clip-data' (MIT textile nominal[100:])")
    p.add_argument("--class-name", nargs="*", default=None, help="class name per --data folder (default: folder name; textile for conformal-clip-data)")
    p.add_argument("--out", required=True, type=Path, help="output folder (checkpoints, log.jsonl, loss_curve.png, final weights)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 5%% of --steps, at most 100)")
    p.add_argument("--loss-weights", default="1,1,1", help="ce,focal,dice (default 1,1,1)")
    p.add_argument("--trainable", default="adapters,prompt_learner,projection,lora")
    p.add_argument("--no-llm", action="store_true", help="train only the text-map adapters with focal+dice (fast)")
    p.add_argument("--init", type=Path, default=None, help="start from the weights in this folder (adapters/bridge/lora present there)")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--image-size", type=int, default=None, help="encoder input size (default: the preset's)")
    p.add_argument("--preset", default="embedded")
    p.add_argument("--bridge-map", default="mix", choices=("mix", "text", "mask"), help="what the prompt learner sees (see training/model.py)")
    p.add_argument("--chat-fraction", type=float, default=0.12, help="share of general chat examples")
    p.add_argument("--anomaly-fraction", type=float, default=0.5)
    p.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "bf16", "fp16"),
                   help="auto: bf16 on GPUs that support it, otherwise no")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
