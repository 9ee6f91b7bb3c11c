"""Latency benchmark: feature extraction, maps and total per image at batch 1 and 16, and how the
query time grows with the memory bank (1, 4, 16, 64 shots)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from assistant.data.datasets import IMAGE_SUFFIXES
from assistant.engine import AnomalyEngine
from assistant.images import load_image

SHOTS = (1, 4, 16, 64)


def benchmark_images(folder: str | None, count: int) -> list[Image.Image]:
    """Images from a folder (cycled), or deterministic noise textures when none is given."""
    if folder:
        paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise FileNotFoundError(f"no images under {folder}")
        return [load_image(paths[i % len(paths)]) for i in range(count)]
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (384, 512, 3), dtype=np.uint8)) for _ in range(count)]


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up: first calls allocate and pick kernels
    began = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - began) / repeats


def stage_times(engine: AnomalyEngine, images: list[Image.Image], references, batch: int, repeats: int) -> dict:
    views = [engine.prepare(image)[0] for image in images[:batch]]
    chunk = [view.resize(views[0].size) for view in views]  # a batch shares one input size, as on a production line
    encoded = engine.encode(chunk)
    features = _timed(lambda: engine.encode(chunk), repeats) / batch
    maps = _timed(lambda: engine.assess(encoded, references, "object"), repeats) / batch
    return {"features_ms": 1000 * features, "map_ms": 1000 * maps, "total_ms": 1000 * (features + maps)}


def run_benchmark(preset: str = "embedded", checkpoint_dir: str | None = None, folder: str | None = None,
                  overrides: dict | None = None, repeats: int = 5) -> dict:
    from assistant.config import load_preset

    engine = AnomalyEngine(load_preset(preset, overrides), checkpoint_dir)
    images = benchmark_images(folder, 16 + max(SHOTS))
    queries, pool = images[:16], images[16:]
    one_shot = engine.references(pool[-1:])  # not pool[:1], so the shots table times a fresh build
    size = engine.encoder.image_size
    print(f"preset {engine.preset.get('name', preset)}, input {size}px, torch threads {torch.get_num_threads()}, "
          f"text map {'trained' if engine.text_map.trained else 'untrained (bank only)'}")
    report = {"batch": {}, "bank": {}}
    print(f"{'batch':>6}{'features ms/img':>18}{'map+score ms/img':>19}{'total ms/img':>15}")
    for batch in (1, 16):
        row = stage_times(engine, queries, one_shot, batch, repeats if batch == 1 else max(1, repeats // 3))
        report["batch"][batch] = row
        print(f"{batch:>6}{row['features_ms']:>18.1f}{row['map_ms']:>19.1f}{row['total_ms']:>15.1f}")
    zero_shot = stage_times(engine, queries, None, 1, repeats)
    report["zero_shot"] = zero_shot
    print(f"zero-shot (no references), batch 1: map+score {zero_shot['map_ms']:.1f} ms/img")
    encoded = engine.encode(queries[:1])
    print(f"{'shots':>6}{'bank patches':>15}{'build s':>9}{'map+score ms/img':>19}")
    for shots in SHOTS:
        began = time.perf_counter()
        refs = engine.references(pool[:shots])
        build = time.perf_counter() - began
        ms = 1000 * _timed(lambda: engine.assess(encoded, refs, "object"), repeats)
        patches = sum(int(b.shape[0]) for b in refs.bank.banks)
        report["bank"][shots] = {"patches": patches, "build_s": build, "map_ms": ms}
        print(f"{shots:>6}{patches:>15}{build:>9.1f}{ms:>19.1f}")
    return report


def answer_latency(preset: str, checkpoint_dir: str | None, image_path: str, reference_path: str | None,
                   max_new_tokens: int = 60, repeats: int = 3) -> dict:
    """Seconds from question to full answer (map + generation) on a new image each time, the
    detection cache cleared so nothing is reused between repeats."""
    from assistant.assistant import Assistant

    assistant = Assistant(preset, checkpoint_dir).load()
    references = [reference_path] if reference_path else None
    assistant.chat(image_path, references=references)  # warm-up: kernels, prompt caches
    times, tokens = [], []
    for _ in range(repeats):
        assistant._detections.clear()
        began = time.perf_counter()
        result = assistant.chat(image_path, "Is there any anomaly in the image?", references, max_new_tokens=max_new_tokens)
        times.append(time.perf_counter() - began)
        tokens.append(len(assistant.tokenizer(result.llm_text)["input_ids"]) if result.llm_text else 0)
    print(f"answer latency over {repeats} runs (max {max_new_tokens} new tokens, torch threads {torch.get_num_threads()}): "
          f"median {np.median(times):.2f} s, min {min(times):.2f} s; LLM words kept in {sum(t > 0 for t in tokens)}/{repeats}")
    print(f"last answer: {result.answer}")
    return {"median_s": float(np.median(times)), "min_s": float(min(times))}
