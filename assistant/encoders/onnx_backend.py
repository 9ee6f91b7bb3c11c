"""ONNX backends for the embedded encoder's backbone: export, INT8 calibration and drop-in runners
(ONNX Runtime in float32 or INT8, OpenVINO in float32).

An export is a folder: `model.onnx` (float32), optionally `model-int8.onnx` (static INT8, QDQ format,
per-channel weights) and `export.json`, written last, which describes the input normalisation, the
levels, the versions that wrote it, the SHA-256 of the backbone weights it came from and of every
model file. A folder is only used when its weights hash matches the encoder's and its files hash
as recorded, so a stale, foreign or damaged export is never run. Input height and width are free
(the "area" resize keeps each image's aspect ratio), and so is the batch size.

Only the backbone call moves to the runtime: `EmbeddedEncoder.encode` still pools the embedding and
returns the same `EncodedImages`, and the text encoder stays in torch.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .base import BACKENDS
from .embedded import EmbeddedEncoder

log = logging.getLogger("assistant.encoders")

MODEL_FILE = "model.onnx"
INT8_FILE = "model-int8.onnx"
META_FILE = "export.json"
EXPORT_FORMAT = 1
OPSET = 17
INPUT_NAME = "pixels"
CACHE_SUBDIR = "onnx"
# 8 and 16 tire images calibrated to the same per-patch agreement; each costs ~0.8 s on a busy 2-core
# machine, so 32 spread over a folder covers its variety in well under a minute.
CALIBRATION_IMAGES = 32


class ExportError(ValueError):
    """An export folder that cannot be used (missing, foreign, damaged): one line for the user."""


# -- hashes and metadata --------------------------------------------------------------------------------
def weights_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over the backbone's state dict (names, shapes and float32 values, in order): the weights an
    export was made from, whatever file they were loaded from."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def level_names(count: int) -> list[str]:
    return [f"level{i}" for i in range(count)]


def export_metadata(encoder: EmbeddedEncoder, weights_hash: str) -> dict:
    import onnx
    import onnxruntime
    import timm

    info = encoder.backbone.feature_info
    return {
        "format": EXPORT_FORMAT,
        "timm_model": encoder.model_name,
        "weights_sha256": weights_hash,
        "opset": OPSET,
        "input": {"name": INPUT_NAME, "layout": "NCHW", "color": "RGB", "scale": 1 / 255,
                  "mean": list(encoder.mean), "std": list(encoder.std),
                  "note": "pixels = (rgb / 255 - mean) / std; height and width free, multiples of 32 as the encoder resizes"},
        "levels": [{"name": name, "channels": channels, "stride": stride}
                   for name, channels, stride in zip(level_names(len(info.channels())), info.channels(), info.reduction())],
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__},
        "files": {},
    }


def read_export(folder: Path, weights_hash: str, int8: bool) -> dict:
    """The metadata of a usable export in `folder`, or ExportError naming what is wrong with it."""
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise ExportError(f"{folder}: no {META_FILE}; write one with `anomaly-assistant export --out {folder}`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{meta_path}: unreadable ({exc.__class__.__name__}); export again") from exc
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{meta_path}: not an export of format {EXPORT_FORMAT}; export again")
    if meta.get("weights_sha256") != weights_hash:
        raise ExportError(f"{folder}: exported from other weights ({meta.get('timm_model', '?')}, "
                          f"sha256 {str(meta.get('weights_sha256'))[:12]}...) than this encoder's; export again")
    name = INT8_FILE if int8 else MODEL_FILE
    files = meta.get("files")
    recorded = files.get(name) if isinstance(files, dict) else None
    if not isinstance(recorded, dict):
        hint = " --int8" if int8 else ""
        raise ExportError(f"{folder}: the export has no {name}; run `anomaly-assistant export --out {folder}{hint}`")
    path = folder / name
    if not path.is_file() or file_sha256(path) != recorded.get("sha256"):
        raise ExportError(f"{path}: missing or changed since export (sha256 differs from {META_FILE}); export again")
    return meta


# -- writing an export ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _temporary_sibling(path: Path):
    """A temporary file path beside `path`, removed unless it was renamed into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; an export is read by whoever runs the models
    try:
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _export_float(backbone: torch.nn.Module, path: Path, example: torch.Tensor) -> None:
    names = level_names(len(backbone.feature_info.channels()))
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    axes.update({name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in names})
    # The TorchScript exporter: the torch.export-based one (torch's default) took 10.4 min of wall time
    # (5 min CPU) for this backbone on a 2-core machine against 1.6 s, and needs onnxscript. timm's
    # "same" padding traces into shape arithmetic, so other input sizes still pad as in torch.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(backbone, (example,), str(path), dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
                          output_names=names, dynamic_axes=axes, do_constant_folding=True)


def _ancestors(model, outputs: list[str], stop_at: tuple[str, ...] = ()) -> list[str]:
    """Names of the nodes that compute `outputs`, walking back to the graph inputs (or to a `stop_at` op)."""
    producer = {output: node for node in model.graph.node for output in node.output}
    found: dict[str, None] = {}
    pending = list(outputs)
    while pending:
        node = producer.get(pending.pop())
        if node is None or node.name in found:
            continue
        found[node.name] = None
        if node.op_type not in stop_at:
            pending.extend(node.input)
    return list(found)


def float_nodes(model) -> list[str]:
    """Nodes the INT8 model keeps in float32.

    - The "same" padding amounts, computed from the input's shape: quantised, they round the pad sizes
      (outputs came out one cell short). Every ancestor of a Pad's amounts back to its Shape node.
    - The stem and the stride-4 blocks (everything that computes level 0). Quantised with the rest,
      their rounding carried into every later level: per-patch cosine to float32 0.98 / 0.97 / 0.94 /
      0.94 by level, and on 52 tire test images (1 reference, 3 seeds) image AUROC 81.8 against torch's
      86.0; in float it is 86.3, for ~5 % more time than all-INT8 on a 2-core AVX2 machine.
    """
    pads = [name for node in model.graph.node if node.op_type == "Pad" for name in node.input[1:]]
    return list(dict.fromkeys(_ancestors(model, pads, stop_at=("Shape",)) + _ancestors(model, level_names(1))))


class _CalibrationImages:
    """onnxruntime's CalibrationDataReader protocol: one preprocessed image per call, None at the end."""

    def __init__(self, encoder: EmbeddedEncoder, images: Sequence[Image.Image]):
        self._encoder = encoder
        self._images = iter(images)

    def get_next(self) -> dict | None:
        image = next(self._images, None)
        if image is None:
            return None
        return {INPUT_NAME: self._encoder.preprocess([image]).cpu().numpy()}


def _export_int8(encoder: EmbeddedEncoder, float_path: Path, path: Path, images: Sequence[Image.Image]) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _temporary_sibling(path) as prepared:
        quant_pre_process(str(float_path), str(prepared))
        keep_float = float_nodes(onnx.load(str(prepared)))
        quantize_static(str(prepared), str(path), _CalibrationImages(encoder, images), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep_float)


def export_encoder(encoder: EmbeddedEncoder, folder: str | os.PathLike, calibration: Sequence[Image.Image] | None = None,
                   calibration_source: str = "") -> dict:
    """Write model.onnx (and model-int8.onnx when calibration images are given) and export.json into `folder`.

    Each file is written to a temporary name and renamed; export.json goes last, so a folder whose
    export was interrupted still describes (and hashes) only complete files.
    """
    if not isinstance(encoder, EmbeddedEncoder) or isinstance(encoder.backbone, OnnxBackbone):
        raise ExportError("only the embedded encoder's torch backbone can be exported")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = export_metadata(encoder, weights_sha256(encoder.backbone))
    example = torch.zeros(1, 3, encoder.image_size, encoder.image_size)
    float_path = folder / MODEL_FILE
    with _temporary_sibling(float_path) as tmp:
        _export_float(encoder.backbone, tmp, example)
        meta["files"][MODEL_FILE] = {"sha256": file_sha256(tmp)}
        os.replace(tmp, float_path)
    if calibration:
        int8_path = folder / INT8_FILE
        with _temporary_sibling(int8_path) as tmp:
            _export_int8(encoder, float_path, tmp, calibration)
            meta["files"][INT8_FILE] = {"sha256": file_sha256(tmp), "format": "QDQ", "weights": "int8 per channel",
                                        "activations": "uint8 per tensor",
                                        "float32": "stem and stride-4 blocks (level 0), padding arithmetic",
                                        "calibration": {
                                            "method": "MinMax", "images": len(calibration), "source": calibration_source}}
            os.replace(tmp, int8_path)
    meta_path = folder / META_FILE
    with _temporary_sibling(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, meta_path)
    return meta


# -- calibration images ---------------------------------------------------------------------------------
def spread(items: Sequence, count: int) -> list:
    """At most `count` items evenly spaced over a sorted list (every kind of image in a folder, not the first few)."""
    if len(items) <= count:
        return list(items)
    return [items[int(i * len(items) / count)] for i in range(count)]


def calibration_images_from(folder: str | os.PathLike, count: int = CALIBRATION_IMAGES) -> list[Image.Image]:
    from ..data.datasets import is_image_file
    from ..images import load_image

    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"--calibration {folder}: not a folder")
    paths = sorted(p for p in folder.rglob("*") if is_image_file(p))
    if not paths:
        raise ExportError(f"--calibration {folder}: no images in it (searched recursively)")
    return [load_image(path) for path in spread(paths, count)]


def default_calibration_images(count: int = CALIBRATION_IMAGES) -> list[Image.Image]:
    """The MIT simulated textile set (conformal-clip-data, a dependency): normal images and both defect kinds.

    Used when no calibration folder is given; `export --calibration` with the user's own parts fits their
    activation ranges better (on tires, tire-calibrated levels agreed slightly closer with float32).
    """
    try:
        import conformal_clip_data as ccd
    except ImportError as exc:
        raise ExportError("INT8 calibration needs images: install conformal-clip-data or export with --calibration FOLDER") from exc
    from ..images import load_image

    nominal = sorted(Path(ccd.nominal_dir()).glob("*.jpg"))
    defects = sorted(Path(ccd.local_dir()).glob("*.jpg")) + sorted(Path(ccd.global_dir()).glob("*.jpg"))
    chosen = spread(nominal, count - count // 4) + spread(defects, count // 4)
    return [load_image(path) for path in chosen]


# -- the cached export ----------------------------------------------------------------------------------
def cache_folder(model_name: str) -> Path:
    from ..llm.embedded import default_cache_root

    return default_cache_root() / CACHE_SUBDIR / model_name


def cached_export(encoder: EmbeddedEncoder, weights_hash: str, int8: bool) -> Path:
    """The cache's export for this encoder, made once (and again when stale or damaged).

    A new export is written into a temporary sibling folder and renamed into place, so concurrent
    processes never see half an export; when another process wins the rename, its export is used.
    """
    final = cache_folder(encoder.model_name)
    try:
        read_export(final, weights_hash, int8)
        return final
    except ExportError as problem:
        if final.exists():
            log.info("re-exporting the ONNX encoder: %s", problem)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o755)
    try:
        log.info("exporting %s to ONNX%s in %s (once)", encoder.model_name, " + INT8" if int8 else "", final)
        calibration = default_calibration_images() if int8 else None
        export_encoder(encoder, tmp, calibration, "conformal-clip-data textile (default)" if int8 else "")
        _replace_folder(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    read_export(final, weights_hash, int8)
    return final


def _replace_folder(new: Path, final: Path) -> None:
    if final.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        with contextlib.suppress(FileNotFoundError):  # another process moved it first
            os.replace(final, trash / final.name)
        shutil.rmtree(trash, ignore_errors=True)
    with contextlib.suppress(OSError):  # another process placed its export first: read_export checks it
        os.replace(new, final)


# -- running ------------------------------------------------------------------------------------------
class OnnxBackbone(torch.nn.Module):
    """Callable like the timm backbone: B x 3 x H x W pixels -> list of level tensors, run by ONNX Runtime."""

    def __init__(self, model_path: Path, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()  # one knob (--threads) for both backends
        options.inter_op_num_threads = 1
        # ONNX Runtime's threads busy-wait after each run by default, on the cores the maps computed
        # next in torch need (docs/method.md, "Latency").
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: the optimiser's notes are not the user's business
        self.model_path = Path(model_path)
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        array = np.ascontiguousarray(pixels.detach().to("cpu", torch.float32).numpy())
        return [torch.from_numpy(level) for level in self.session.run(None, {INPUT_NAME: array})]


class OpenVinoBackbone(torch.nn.Module):
    """Callable like the timm backbone: the float32 ONNX export compiled by OpenVINO for the CPU.

    Inference precision is pinned to float32: OpenVINO's default on a CPU with AVX512-BF16 is bfloat16,
    whose level features deviate from float32 by up to 8 % of their largest value, while float32 matches
    ONNX Runtime's to the last printed digit. The backbone alone runs in 0.85 x ONNX Runtime's time, but
    end to end it gains only in batches (docs/method.md, "Latency"). OpenVINO's INT8 path needs its own
    quantiser (NNCF): the QDQ model written for ONNX Runtime is not run faithfully, so "openvino" is
    float32 only."""

    def __init__(self, model_path: Path, threads: int | None = None):
        super().__init__()
        try:
            import openvino
        except ImportError as exc:
            raise ExportError("encoder backend 'openvino' needs the openvino package: pip install 'anomaly-assistant[openvino]'") from exc
        self.model_path = Path(model_path)
        config = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = openvino.Core().compile_model(str(model_path), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        array = np.ascontiguousarray(pixels.detach().to("cpu", torch.float32).numpy())
        outputs = self.request.infer({0: array})
        # Copied: the request writes its next results into the same output buffers.
        return [torch.from_numpy(np.array(outputs[port])) for port in self.compiled.outputs]


def use_onnx_backend(encoder: EmbeddedEncoder, backend: str, export_dir: str | os.PathLike | None = None,
                     threads: int | None = None) -> EmbeddedEncoder:
    """Replace the encoder's torch backbone by the export run in ONNX Runtime ("onnx": float32,
    "onnx-int8": INT8) or in OpenVINO ("openvino": float32).

    `export_dir`: a folder written by `anomaly-assistant export`, refused with one line when it does
    not fit; without it the export is made once in the user's cache (ANOMALY_ASSISTANT_CACHE).
    """
    if backend not in BACKENDS[1:]:
        raise ValueError(f"encoder backend {backend!r} does not run from an ONNX export; use one of {', '.join(BACKENDS[1:])}")
    int8 = backend == "onnx-int8"
    weights_hash = weights_sha256(encoder.backbone)
    if export_dir is None:
        folder = cached_export(encoder, weights_hash, int8)
    else:
        folder = Path(export_dir).expanduser()
        read_export(folder, weights_hash, int8)
    if backend == "openvino":
        encoder.backbone = OpenVinoBackbone(folder / MODEL_FILE, threads)
    else:
        encoder.backbone = OnnxBackbone(folder / (INT8_FILE if int8 else MODEL_FILE), threads)
    return encoder

