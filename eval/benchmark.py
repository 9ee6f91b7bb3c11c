"""Latency benchmark, stage by stage (decode, prepare, encode, maps + score, regions, answer), for
1, 4 and 64 references and each encoder backend, beside anomalib's PatchCore on the same weights
and images (eval/anomalib_patchcore.py, when anomalib is installed).

Stages go through the engine's public steps. Maps and score are one call (`AnomalyEngine.assess`
makes both), so they are timed together. "answer" is `Assistant.chat` without the LLM once the
image's detection is cached: intent, question parsing and the grounded sentences. "detect" is the
end-to-end figure a user waits for, file bytes to regions through `engine.detect`, timed on its own
(it includes the reference cache lookup, which hashes the reference images).
"""
from __future__ import annotations

import io
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from assistant.data.datasets import IMAGE_SUFFIXES
from assistant.encoders.base import BACKENDS
from assistant.engine import AnomalyEngine, anomalous_regions, judges_colour, place_map
from assistant.images import load_image
from assistant.maps.memory_bank import similarity_dtype

from .benchmarks_doc import busy

SHOTS = (1, 4, 64)
STAGES = ("decode", "prepare", "encode", "maps_score", "regions", "answer")
QUERIES = 8
BATCH = 8
QUESTION = "Is there any anomaly in the image?"


def benchmark_files(folder: str | None, count: int) -> list[bytes]:
    """Encoded image files from a folder (sorted, cycled), or PNG-encoded noise textures without one."""
    if folder:
        paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise FileNotFoundError(f"no images under {folder}")
        return [paths[i % len(paths)].read_bytes() for i in range(count)]
    rng = np.random.default_rng(0)
    files = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (384, 512, 3), dtype=np.uint8)).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


def query_and_reference_files(folder: str | None, n_queries: int, n_references: int) -> tuple[list[bytes], list[bytes]]:
    """An MVTec-layout folder gives queries from test/ and references from train/good/; any other
    folder (or none) gives both from the same images, references after the queries."""
    root = Path(folder) if folder else None
    if root and (root / "test").is_dir() and (root / "train" / "good").is_dir():
        return benchmark_files(str(root / "test"), n_queries), benchmark_files(str(root / "train" / "good"), n_references)
    files = benchmark_files(folder, n_queries + n_references)
    return files[:n_queries], files[n_queries:]


def _median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def stage_times(assistant, query_files: list[bytes], reference_images: list[Image.Image], class_name: str = "part",
                repeats: int = 3) -> dict:
    """Median ms per stage and end to end over the queries (each `repeats` times, after one warm-up)."""
    from assistant.batch import detect_batch

    engine: AnomalyEngine = assistant.engine
    reference_set = engine.references(reference_images, class_name)
    threshold = reference_set.threshold
    times: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "detect")}

    def clock(stage: str, fn):
        began = time.perf_counter()
        value = fn()
        times[stage].append(time.perf_counter() - began)
        return value

    for round_ in range(repeats + 1):
        for data in query_files:
            image = clock("decode", lambda: load_image(data))
            view, box = clock("prepare", lambda: engine.prepare(image))
            encoded = clock("encode", lambda: engine.encode([view], sources=[image] if judges_colour(reference_set) else None))
            maps, scores = clock("maps_score", lambda: engine.assess(encoded, reference_set, class_name))
            clock("regions", lambda: _regions(maps[0], box, image.size, float(scores[0]), threshold))
            if round_ == 0:
                assistant.detect(image, reference_images, class_name, None)  # cached: what the answer stage reads
            clock("answer", lambda: assistant.chat(image, QUESTION, reference_images, class_name=class_name))
            clock("detect", lambda: engine.detect(load_image(data), reference_images, class_name))
        if round_ == 0:  # warm-up: first calls allocate and pick kernels
            times = {stage: [] for stage in times}
    row = {f"{stage}_ms": _median_ms(values) for stage, values in times.items()}
    row["stages_sum_ms"] = sum(row[f"{stage}_ms"] for stage in STAGES if stage != "answer")
    batch = query_files[:BATCH]
    images = [load_image(data) for data in batch]
    detect_batch(engine, images, reference_images, class_name)  # warm-up at this batch size
    began = time.perf_counter()
    detect_batch(engine, images, reference_images, class_name)
    row[f"batch{len(batch)}_ms_per_image"] = 1000 * (time.perf_counter() - began) / len(batch)
    return row


def _regions(small_map: np.ndarray, box, size: tuple[int, int], score: float, threshold: float):
    """What `engine.detect` does after the score: the map at its place in the photo, regions if anomalous."""
    full_map = place_map(small_map, box, *size)
    return anomalous_regions(full_map, float(small_map.max()), threshold) if score > threshold else []


def backend_report(preset: dict, checkpoint_dir: str | None, query_files: list[bytes],
                   reference_images: list[Image.Image], shots: list[int], repeats: int) -> dict:
    from assistant.assistant import Assistant

    assistant = Assistant(preset, checkpoint_dir, use_llm=False)
    report = {"shots": {}}
    for k in shots:
        began = time.perf_counter()
        references = assistant.engine.references(reference_images[:k], "part")
        build = time.perf_counter() - began
        row = stage_times(assistant, query_files, reference_images[:k], "part", repeats)
        row.update(build_s=build, patches=references.bank.n_patches())
        report["shots"][k] = row
    return report


def run_benchmark(preset: str = "embedded", checkpoint_dir: str | None = None, folder: str | None = None,
                  overrides: dict | None = None, repeats: int = 3, shots: list[int] | None = None,
                  backends: list[str] | None = None, anomalib: bool = True, json_path: str | Path | None = None,
                  queries: int = QUERIES, command: str | None = None) -> dict:
    from assistant.config import deep_merge, load_preset

    from .anomalib_patchcore import patchcore_times

    shots = sorted(shots or SHOTS)
    backends = list(backends or BACKENDS)
    base = load_preset(preset, overrides)
    query_files, reference_files = query_and_reference_files(folder, queries, max(shots))
    reference_images = [load_image(data) for data in reference_files]
    report = {"command": command, "machine": machine(), "preset": base.get("name", preset), "folder": folder or "synthetic noise",
              "queries": len(query_files), "repeats": repeats, "backends": {}}
    if busy(report["machine"]):
        print(f"warning: 1-minute load average {report['machine']['load_average_1min']} at the start: other work "
              "is running, so these times are inflated (on 2 cores a concurrent job doubles them); run on an idle machine")
    for backend in backends:
        settings = deep_merge(base, {"encoder": {"backend": backend}})
        report["backends"][backend] = backend_report(settings, checkpoint_dir, query_files, reference_images, shots, repeats)
        print_backend(backend, report["backends"][backend])
    own = base["encoder"].get("backend", "torch")
    report["detect_backend"] = own if own in backends else backends[0]
    report["detect_ms"] = report["backends"][report["detect_backend"]]["shots"][shots[0]]["detect_ms"]
    if anomalib:
        encoder = AnomalyEngine(deep_merge(base, {"encoder": {"backend": "torch"}}), checkpoint_dir).encoder
        report["anomalib"] = patchcore_times(encoder, query_files, reference_images, shots, repeats)
        print_anomalib(report["anomalib"])
        if "shots" in report["anomalib"]:
            report["anomalib_patchcore_ms"] = report["anomalib"]["shots"][shots[0]]["ms"]
    else:
        report["anomalib"] = {"skipped": "--no-anomalib"}
    print(f"end to end (decode to regions, {shots[0]} reference{'s' if shots[0] > 1 else ''}, "
          f"{report['detect_backend']}): {report['detect_ms']:.1f} ms/image"
          + (f"; anomalib PatchCore {report['anomalib_patchcore_ms']:.1f} ms/image" if "anomalib_patchcore_ms" in report else ""))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"figures written to {json_path}")
    return report


def machine() -> dict:
    """What the figures depend on: threads, CPU, the dtype the memory bank's similarities run in on it
    (bfloat16 where the CPU multiplies it natively, which makes the maps cheaper: docs/method.md,
    "Latency") and how busy the machine was (1-minute load average)."""
    return {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "similarities": str(similarity_dtype("auto", torch.device("cpu"))).removeprefix("torch."),
            "load_average_1min": round(os.getloadavg()[0], 2), "torch": torch.__version__}


def print_backend(backend: str, report: dict) -> None:
    columns = [f"{stage}_ms" for stage in STAGES] + ["detect_ms"]
    print(f"\nbackend {backend}: median ms per image")
    print(f"{'refs':>5}{'build s':>9}" + "".join(f"{c[:-3]:>11}" for c in columns) + f"{'batch ms/img':>14}")
    for k, row in report["shots"].items():
        batch = next(v for key, v in row.items() if key.startswith("batch"))
        print(f"{k:>5}{row['build_s']:>9.1f}" + "".join(f"{row[c]:>11.1f}" for c in columns) + f"{batch:>14.1f}")


def print_anomalib(report: dict) -> None:
    if "skipped" in report:
        print(f"\nanomalib PatchCore: skipped ({report['skipped']})")
        return
    print(f"\nanomalib PatchCore ({report['image_size']} px, layers {', '.join(report['layers'])}, "
          f"coreset {report['coreset_ratio']:.0%}): median ms per image, file bytes to score and map")
    for k, row in report["shots"].items():
        print(f"{k:>5} refs  build {row['build_s']:.1f} s  {row['patches']} patches  {row['ms']:.1f} ms")


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
