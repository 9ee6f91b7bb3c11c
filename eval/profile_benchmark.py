"""Profiles at line scale: time to create one from many good images, to load it, to score with it,
and the latency of a 4096 x 3000 image against a one-image (tiled) profile.

    python -m eval.profile_benchmark --data ../shared/datasets/tire --good 200 --json profile_bench.json

Profiles are written to a temporary $ANOMALY_ASSISTANT_HOME and removed afterwards. Scores from the
loaded profile are checked against the scores from the images it was made from (`max_score_diff`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

LARGE = (4096, 3000)


def timed(fn):
    began = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - began


def mosaic(paths: list[Path], size: tuple[int, int] = LARGE, grid: int = 8) -> Image.Image:
    """`grid` x `grid` photos pasted at native pixel density into one image of `size`."""
    width, height = size[0] // grid, size[1] // grid
    out = Image.new("RGB", size)
    for index, path in enumerate(paths[:grid * grid]):
        with Image.open(path) as image:
            out.paste(image.convert("RGB").resize((width, height)), ((index % grid) * width, (index // grid) * height))
    return out


def run(data: Path, n_good: int, n_queries: int, class_name: str, large: bool) -> dict:
    from assistant import profiles
    from assistant.engine import AnomalyEngine
    from assistant.images import load_image

    good = sorted((data / "train" / "good").iterdir())[:n_good]
    queries = sorted(p for p in (data / "test").rglob("*") if p.is_file())[::7][:n_queries]
    engine, load_models_s = timed(lambda: AnomalyEngine("embedded"))
    info, create_s = timed(lambda: profiles.create(engine, "bench-many", good, class_name))
    fresh = AnomalyEngine("embedded")
    loaded, load_s = timed(lambda: profiles.load("bench-many", fresh))
    scores, seconds = [], []
    for path in queries:
        image = load_image(path)
        detection, took = timed(lambda: fresh.detect(image, loaded.references, class_name))
        scores.append(detection.score)
        seconds.append(took)
    images = [load_image(path) for path in good]
    direct = [engine.detect(load_image(path), images, class_name).score for path in queries]
    report = {
        "data": str(data), "good_images": len(good), "queries": len(queries),
        "model_load_s": round(load_models_s, 2), "profile_create_s": round(create_s, 1),
        "profile_load_s": round(load_s, 3), "detect_with_profile_ms": round(1000 * float(np.median(seconds)), 1),
        "max_score_diff": float(np.max(np.abs(np.asarray(scores) - np.asarray(direct)))),
        "profile_bytes": sum(p.stat().st_size for p in profiles.profile_dir("bench-many").iterdir()),
        "threshold": info["threshold"],
    }
    if large:
        report.update(large_image(engine, data, class_name))
    return report


def large_image(engine, data: Path, class_name: str) -> dict:
    """A 4096 x 3000 image of 64 photos against a one-image profile of 64 other good photos."""
    from assistant import profiles

    good = sorted((data / "train" / "good").iterdir())
    tests = sorted(p for p in (data / "test").rglob("*") if p.is_file())
    reference, query = mosaic(good[-64:]), mosaic(tests[:64])
    folder = Path(tempfile.mkdtemp(prefix="large-"))
    reference.save(folder / "large_good.png")
    info, create_s = timed(lambda: profiles.create(engine, "bench-large", [folder / "large_good.png"], class_name))
    loaded = profiles.load("bench-large", engine)
    engine.detect(query, loaded.references, class_name)  # the first call pays one-time costs
    runs = [timed(lambda: engine.detect(query, loaded.references, class_name))[1] for _ in range(2)]
    return {"large_size": list(LARGE), "large_tiles": info["tiled"]["n_tiles"] if info["tiled"] else 1,
            "large_profile_create_s": round(create_s, 1), "large_detect_s": round(float(np.median(runs)), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="MVTec-layout folder (train/good, test)")
    parser.add_argument("--good", type=int, default=200, help="good images in the profile (default 200)")
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--class-name", default="object")
    parser.add_argument("--no-large", action="store_true", help="skip the 4096 x 3000 image")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="profile-bench-") as home:
        os.environ["ANOMALY_ASSISTANT_HOME"] = home
        report = run(args.data, args.good, args.queries, args.class_name, not args.no_large)
    from eval.evaluate import machine_description

    import torch

    report["machine"], report["torch_threads"] = machine_description(), torch.get_num_threads()
    report["command"] = "python -m eval.profile_benchmark " + " ".join(argv if argv is not None else sys.argv[1:])
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        from assistant.checkpoint import save_json

        save_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
