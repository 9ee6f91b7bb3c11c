"""Train the text-map adapters, the bridge and the LLM's LoRA on synthesised anomalies.

    python -m training.train --data conformal-clip-data --steps 2000 --no-llm --out runs/adapters
    accelerate launch --num_processes 2 --cpu -m training.train --data conformal-clip-data --steps 20 --out runs/ddp

See training/README.md for CPU / 1 GPU / N GPU / multi-node commands. Checkpoints are safetensors,
written into DIR/.tmp-step-N and renamed to DIR/step-N; DIR/latest names the newest complete one.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from assistant import checkpoint  # noqa: E402
from training.options import add_arguments  # noqa: E402

LATEST_FILE = "latest"
STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
LOG_FILE = "log.jsonl"
CURVE_FILE = "loss_curve.png"
KEEP_CHECKPOINTS = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
    add_arguments(p)
    return p


# -- checkpoint helpers ---------------------------------------------------------------------------
def latest_checkpoint(out: Path) -> Path | None:
    pointer = out / LATEST_FILE
    if pointer.is_file():
        folder = out / pointer.read_text(encoding="utf-8").strip()
        if (folder / STATE_JSON).is_file():
            return folder
    steps = sorted((int(d.name.split("-")[1]), d) for d in out.glob("step-*") if d.is_dir() and (d / STATE_JSON).is_file())
    return steps[-1][1] if steps else None


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in info.get("scalars", {}).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def save_checkpoint(out: Path, step: int, model, optimizer, args_dict: dict) -> Path:
    final = out / f"step-{step}"
    tmp = out / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_weights(tmp)
    tensors, info = optimizer_tensors(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    checkpoint.save_tensors(tensors, tmp / STATE_TENSORS)
    checkpoint.save_json({"step": step, "optimizer": info, "args": args_dict}, tmp / STATE_JSON)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    checkpoint.atomic_write_bytes(out / LATEST_FILE, final.name.encode())
    old = sorted((int(d.name.split("-")[1]), d) for d in out.glob("step-*") if d.is_dir())
    for _, folder in old[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(folder, ignore_errors=True)
    return final


def plot_curve(log_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for term in ("total", "ce", "focal", "dice"):
        points = [(r["step"], r[term]) for r in rows if term in r]
        if points:
            xs, ys = zip(*points)
            window = max(1, len(ys) // 50)
            smooth = [sum(ys[max(0, i - window + 1):i + 1]) / len(ys[max(0, i - window + 1):i + 1]) for i in range(len(ys))]
            ax.plot(xs, smooth, label=term)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png)


def lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# -- main -----------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> Path:
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import set_seed
    from tqdm import tqdm

    from training.data import SyntheticDataset, collate, resolve_sources
    from training.losses import LossWeights
    from training.model import TrainableAssistant, parse_trainable

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < 1 or args.batch_size < 1:
        raise ValueError("--steps and --batch-size must be >= 1")
    use_llm = not args.no_llm
    trainable = parse_trainable(args.trainable, use_llm)
    weights = LossWeights.parse(args.loss_weights)
    mixed = args.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # cpu=True without CUDA: under torchrun / `accelerate launch --multi_gpu` the processes join a gloo group.
    accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available(), kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    main = accelerator.is_main_process
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    start_time = time.time()

    set_seed(args.seed)
    model = TrainableAssistant(args.preset, trainable, use_llm, args.image_size, weights, bridge_map=args.bridge_map)
    image_size = model.encoder.image_size
    sources = resolve_sources(args.data, args.class_name)
    dataset = SyntheticDataset(sources, image_size, model.map_size, seed=args.seed, anomaly_fraction=args.anomaly_fraction,
                               chat_fraction=args.chat_fraction, mean=model.encoder.mean, std=model.encoder.std,
                               with_text=use_llm)
    params = model.trainable_parameters()
    if not params:
        raise ValueError("nothing to train: check --trainable")
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)

    start = 0
    args_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "handler"}
    found = latest_checkpoint(out) if args.resume else None
    if found is not None:
        from safetensors.torch import load_file

        model.load_weights(found)
        info = json.loads((found / STATE_JSON).read_text(encoding="utf-8"))
        tensors = load_file(str(found / STATE_TENSORS))
        load_optimizer(optimizer, tensors, info["optimizer"])
        torch.set_rng_state(tensors["rng.torch"])
        start = int(info["step"])
        if main:
            print(f"resuming from {found} (step {start})", file=sys.stderr)
    elif args.init is not None:
        loaded = model.load_weights(args.init)
        if main:
            print(f"initial weights from {args.init}: {', '.join(loaded) or 'nothing found'}", file=sys.stderr)
    if main:
        for stale in out.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
        log_path = out / LOG_FILE
        kept = []
        if start and log_path.is_file():
            kept = [l for l in log_path.read_text(encoding="utf-8").splitlines() if l.strip() and json.loads(l)["step"] <= start]
        checkpoint.atomic_write_bytes(log_path, "".join(l + "\n" for l in kept).encode())

    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    model.train()
    warmup = args.warmup if args.warmup is not None else min(100, max(1, args.steps // 20))
    world, rank = accelerator.num_processes, accelerator.process_index
    progress = tqdm(total=args.steps, initial=start, disable=not main or args.no_progress, dynamic_ncols=True,
                    desc="train", file=sys.stderr)
    log_handle = open(out / LOG_FILE, "a", encoding="utf-8") if main else None
    step = start
    try:
        for step in range(start, args.steps):
            for group in optimizer.param_groups:
                group["lr"] = args.lr * lr_factor(step, args.steps, warmup)
            first = (step * world + rank) * args.batch_size
            batch = collate([dataset[first + j] for j in range(args.batch_size)])
            device = accelerator.device
            terms = model(batch["pixels"].to(device), batch["mask"].to(device), batch["class_name"], batch["index"],
                          batch.get("chat"))
            accelerator.backward(terms["total"])
            if args.max_grad_norm and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            values = {k: accelerator.reduce(v.detach().float(), reduction="mean").item() for k, v in terms.items()}
            if main:
                record = {"step": step + 1, "lr": optimizer.param_groups[0]["lr"], **{k: round(v, 6) for k, v in values.items()}}
                log_handle.write(json.dumps(record) + "\n")
                log_handle.flush()
                progress.set_postfix({k: f"{v:.3f}" for k, v in values.items()})
                progress.update(1)
            done = step + 1
            if args.save_every and done % args.save_every == 0 and done < args.steps:
                accelerator.wait_for_everyone()
                if main:
                    save_checkpoint(out, done, unwrapped, optimizer, args_dict)
        step = args.steps
        accelerator.wait_for_everyone()
        if main and start < args.steps:
            save_checkpoint(out, args.steps, unwrapped, optimizer, args_dict)
    finally:
        progress.close()
        if log_handle:
            log_handle.close()
    if main:
        unwrapped.save_weights(out)  # final weights at the root: what AnomalyEngine / Assistant load
        plot_curve(out / LOG_FILE, out / CURVE_FILE)
        rows = [json.loads(l) for l in (out / LOG_FILE).read_text(encoding="utf-8").splitlines() if l.strip()]
        head, tail = rows[:max(1, len(rows) // 10)], rows[-max(1, len(rows) // 10):]
        summary = {k: {"first": sum(r[k] for r in head) / len(head), "last": sum(r[k] for r in tail) / len(tail)}
                   for k in ("total", "ce", "focal", "dice") if rows and k in rows[0]}
        meta = {"command": " ".join(["python -m training.train", *sys.argv[1:]]) if sys.argv and "train" in " ".join(sys.argv) else None,
                "args": args_dict, "steps": args.steps, "resumed_from_step": start or None,
                "duration_s": round(time.time() - start_time, 1), "processes": world, "mixed_precision": mixed,
                "image_size": image_size, "trainable": sorted(trainable), "use_llm": use_llm,
                "data": [{"folder": str(s.folder), "class_name": s.class_name, "n_images": len(s.files)} for s in sources],
                "losses_first_last_10pct": summary}
        previous = out / checkpoint.META_FILE
        if args.init is not None and (Path(args.init) / checkpoint.META_FILE).is_file():
            meta["init_from"] = json.loads((Path(args.init) / checkpoint.META_FILE).read_text(encoding="utf-8"))
        checkpoint.save_json(meta, previous)
        print(json.dumps({"out": str(out), "duration_s": meta["duration_s"], "losses": summary}), file=sys.stderr)
    accelerator.wait_for_everyone()
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
