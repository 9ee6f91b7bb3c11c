"""anomalib's PatchCore on our EfficientNet-Lite weights, timed beside our engine in `bench`.

What most users of the field would run instead: anomalib's own torch model (no Lightning loop),
layers blocks.2 and blocks.4 (strides 8 and 16, the levels our memory bank reads), its default
256 x 256 input and 10 % coreset, with the weights copied from our encoder so both start from the
same network. anomalib is an optional extra (`pip install 'anomaly-assistant[bench]'`); without it
`patchcore_times` says why it skipped.
"""
from __future__ import annotations

import importlib
import statistics
import time
import warnings

import numpy as np
import torch
from PIL import Image

from assistant.images import load_image

LAYERS = ("blocks.2", "blocks.4")
IMAGE_SIZE = 256
CORESET_RATIO = 0.1


def missing_reason() -> str | None:
    """Why anomalib's PatchCore cannot run here, or None."""
    try:
        with warnings.catch_warnings():  # anomalib's own deprecation notes about modules we do not use
            warnings.simplefilter("ignore", FutureWarning)
            importlib.import_module("anomalib.models.image.patchcore.torch_model")
    except ImportError as exc:
        return f"anomalib is not installed (pip install 'anomaly-assistant[bench]'): {exc}"
    return None


def patchcore_model(encoder):
    """A PatchcoreModel whose backbone holds `encoder`'s weights (timm names on both sides)."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = PatchcoreModel(layers=list(LAYERS), backbone=encoder.model_name, pre_trained=False, num_neighbors=9)
    target = model.feature_extractor.feature_extractor
    source = encoder.backbone.state_dict()
    missing = [key for key in target.state_dict() if key not in source]
    if missing:
        raise ValueError(f"anomalib's {encoder.model_name} has weights ours lacks: {missing[:3]}")
    target.load_state_dict({key: source[key] for key in target.state_dict()})
    return model


def pixels(image: Image.Image, encoder) -> torch.Tensor:
    """Squashed to 256 x 256 and normalised as the EfficientNet-Lite weights expect (mean = std = 0.5)."""
    array = np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)[None]
    mean = torch.tensor(encoder.mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.std).view(1, 3, 1, 1)
    return (tensor - mean) / std


@torch.no_grad()
def fit(model, references: list[Image.Image], encoder) -> float:
    """Memory bank from the references; seconds taken."""
    began = time.perf_counter()
    model.train()
    for image in references:
        model(pixels(image, encoder))
    with warnings.catch_warnings():  # 2.7 flags its own deprecated argument even when it is not passed
        warnings.simplefilter("ignore", DeprecationWarning)
        model.subsample_embedding(CORESET_RATIO)
    model.eval()
    return time.perf_counter() - began


@torch.no_grad()
def query_ms(model, query_files: list[bytes], encoder, repeats: int) -> float:
    """Median ms from file bytes to image score and full-size map."""
    def one(data: bytes) -> None:
        output = model(pixels(load_image(data), encoder))
        float(output.pred_score[0])

    one(query_files[0])  # warm-up
    times = []
    for _ in range(repeats):
        for data in query_files:
            began = time.perf_counter()
            one(data)
            times.append(1000 * (time.perf_counter() - began))
    return statistics.median(times)


def patchcore_times(encoder, query_files: list[bytes], references: list[Image.Image], shots: list[int],
                    repeats: int) -> dict:
    """{"shots": {k: {"build_s", "patches", "ms"}}}, or {"skipped": reason}."""
    reason = missing_reason()
    if reason:
        return {"skipped": reason}
    report: dict = {"image_size": IMAGE_SIZE, "layers": list(LAYERS), "coreset_ratio": CORESET_RATIO, "shots": {}}
    for k in shots:
        model = patchcore_model(encoder)
        build = fit(model, references[:k], encoder)
        report["shots"][k] = {"build_s": build, "patches": int(model.memory_bank.shape[0]),
                              "ms": query_ms(model, query_files, encoder, repeats)}
    return report
