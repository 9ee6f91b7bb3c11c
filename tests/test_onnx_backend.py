"""The ONNX backends of the embedded encoder: export, parity with torch (ONNX Runtime, OpenVINO), INT8, cache and refusals."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from conftest import SHARED_DATASETS, run_cli

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

from assistant.config import load_preset  # noqa: E402
from assistant.encoders import create_encoder  # noqa: E402
from assistant.encoders.onnx_backend import (INT8_FILE, META_FILE, MODEL_FILE, ExportError, OnnxBackbone,  # noqa: E402
                                             default_calibration_images, export_encoder)

TIRE_IMAGE = SHARED_DATASETS / "tire" / "test" / "cut" / "000.jpg"


@pytest.fixture(scope="module")
def encoder_cfg() -> dict:
    return load_preset("embedded")["encoder"]


@pytest.fixture(scope="module")
def torch_encoder(encoder_cfg):
    return create_encoder(encoder_cfg)


@pytest.fixture(scope="module")
def export_dir(torch_encoder, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("onnx_export")
    export_encoder(torch_encoder, folder, default_calibration_images(4), "textile x4 (test)")
    return folder


def synthetic_image(width: int = 512, height: int = 384) -> Image.Image:
    """Shapes, edges and noise over a gradient: structure at every level, not flat noise."""
    rng = np.random.default_rng(3)
    ramp = np.linspace(40, 200, width, dtype=np.float32)[None, :, None]
    array = np.clip(ramp + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(array)
    draw = ImageDraw.Draw(image)
    draw.ellipse([60, 50, 200, 170], fill=(30, 30, 30))
    draw.rectangle([280, 200, 460, 330], outline=(250, 240, 220), width=6)
    draw.line([0, height - 1, width - 1, 0], fill=(120, 20, 20), width=4)
    return image


def real_image(name: str) -> Image.Image:
    if name == "synthetic":
        return synthetic_image()
    if not TIRE_IMAGE.is_file():
        pytest.skip(f"tire image not found at {TIRE_IMAGE} (shared data is not shipped with the project)")
    return Image.open(TIRE_IMAGE).convert("RGB")


def backbone_levels(encoder, pixels: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(encoder.backbone(pixels))


def onnx_encoder(encoder_cfg, export_dir, backend="onnx"):
    return create_encoder({**encoder_cfg, "backend": backend, "export_dir": str(export_dir)})


@pytest.fixture(scope="module")
def float_encoder(encoder_cfg, export_dir):
    return onnx_encoder(encoder_cfg, export_dir)


@pytest.fixture(scope="module")
def int8_encoder(encoder_cfg, export_dir):
    return onnx_encoder(encoder_cfg, export_dir, "onnx-int8")


@pytest.fixture(scope="module")
def openvino_encoder(encoder_cfg, export_dir):
    pytest.importorskip("openvino", reason="openvino is not installed (extra 'openvino')")
    return onnx_encoder(encoder_cfg, export_dir, "openvino")


def assert_levels_match(reference: list[torch.Tensor], levels: list[torch.Tensor]) -> None:
    assert len(levels) == len(reference) == 4
    for level, (want, got) in enumerate(zip(reference, levels)):
        assert got.shape == want.shape, f"level {level}"
        relative = float((got - want).abs().max() / want.abs().max())
        assert relative < 1e-4, f"level {level}: max |onnx - torch| is {relative:.2e} of the level's range"


@pytest.mark.parametrize("name", ["synthetic", "tire"])
def test_float_export_matches_torch_backbone(torch_encoder, float_encoder, name):
    pixels = torch_encoder.preprocess([real_image(name)])
    assert_levels_match(backbone_levels(torch_encoder, pixels), backbone_levels(float_encoder, pixels))


def test_one_export_serves_every_input_size(torch_encoder, float_encoder):
    image = synthetic_image()
    sizes = {torch_encoder.preprocess([image]).shape[2:], torch_encoder.preprocess([image], 256).shape[2:]}
    assert len(sizes) == 2  # the preset's 448 px "area" view and the text map's 256 px view
    for size in [None, 256]:
        pixels = torch_encoder.preprocess([image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], size)
        assert_levels_match(backbone_levels(torch_encoder, pixels), backbone_levels(float_encoder, pixels))


@pytest.mark.parametrize("name", ["synthetic", "tire"])
def test_openvino_backend_matches_torch_at_every_input_size(torch_encoder, openvino_encoder, name):
    """OpenVINO runs the same float32 export; pinned to float32 it agrees with torch as ONNX Runtime does,
    also at the text map's second input size and for a batch of two."""
    from assistant.encoders.onnx_backend import OpenVinoBackbone

    assert isinstance(openvino_encoder.backbone, OpenVinoBackbone)
    image = real_image(name)
    for size in [None, 256]:
        pixels = torch_encoder.preprocess([image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], size)
        assert_levels_match(backbone_levels(torch_encoder, pixels), backbone_levels(openvino_encoder, pixels))


@pytest.mark.parametrize("name", ["synthetic", "tire"])
def test_int8_levels_follow_float32(torch_encoder, int8_encoder, name):
    pixels = torch_encoder.preprocess([real_image(name)])
    reference, levels = backbone_levels(torch_encoder, pixels), backbone_levels(int8_encoder, pixels)
    for level, (want, got) in enumerate(zip(reference, levels)):
        assert got.shape == want.shape
        cosine = float(F.cosine_similarity(want, got, dim=1).mean())
        assert cosine > 0.98, f"level {level}: mean per-patch cosine to float32 is {cosine:.4f}"


def test_backend_keeps_what_the_encoder_returns(torch_encoder, float_encoder):
    assert isinstance(float_encoder.backbone, OnnxBackbone)
    assert float_encoder.device == torch.device("cpu")
    image = synthetic_image(448, 448)
    want, got = torch_encoder.encode_images([image]), float_encoder.encode_images([image])
    assert_levels_match(want.levels, got.levels)
    assert torch.allclose(want.embedding, got.embedding, atol=1e-5)
    assert float_encoder.level_dims == torch_encoder.level_dims


def test_export_records_what_it_was_made_from(export_dir, torch_encoder):
    meta = json.loads((export_dir / META_FILE).read_text())
    assert meta["timm_model"] == torch_encoder.model_name
    assert [level["channels"] for level in meta["levels"]] == torch_encoder.level_dims
    assert [level["stride"] for level in meta["levels"]] == [4, 8, 16, 32]
    assert meta["input"]["mean"] == meta["input"]["std"] == [0.5, 0.5, 0.5]
    assert meta["opset"] >= 17 and meta["versions"]["onnxruntime"]
    assert set(meta["files"]) == {MODEL_FILE, INT8_FILE}
    assert meta["files"][INT8_FILE]["calibration"]["images"] == 4


def damaged_copy(export_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    data = bytearray((copy / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights: loads fine, computes garbage
    (copy / MODEL_FILE).write_bytes(bytes(data))
    return copy


def test_damaged_export_is_refused_with_one_line(encoder_cfg, export_dir, tmp_path):
    with pytest.raises(ExportError) as refused:
        onnx_encoder(encoder_cfg, damaged_copy(export_dir, tmp_path))
    message = str(refused.value)
    assert "\n" not in message and "changed since export" in message


def test_foreign_export_is_refused(encoder_cfg, export_dir, tmp_path):
    copy = tmp_path / "foreign"
    shutil.copytree(export_dir, copy)
    meta = json.loads((copy / META_FILE).read_text())
    meta["weights_sha256"] = "0" * 64
    (copy / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="other weights"):
        onnx_encoder(encoder_cfg, copy)


def test_float_only_export_refuses_the_int8_backend(encoder_cfg, torch_encoder, tmp_path):
    export_encoder(torch_encoder, tmp_path)
    with pytest.raises(ExportError, match="no model-int8.onnx"):
        onnx_encoder(encoder_cfg, tmp_path, "onnx-int8")


def test_cache_export_is_made_once_and_redone_when_stale(encoder_cfg, monkeypatch, tmp_path):
    monkeypatch.setenv("ANOMALY_ASSISTANT_CACHE", str(tmp_path))
    create_encoder({**encoder_cfg, "backend": "onnx"})
    folder = tmp_path / "onnx" / encoder_cfg["model"]
    made = (folder / MODEL_FILE).stat().st_mtime_ns
    create_encoder({**encoder_cfg, "backend": "onnx"})
    assert (folder / MODEL_FILE).stat().st_mtime_ns == made, "a valid cached export was written again"
    meta = json.loads((folder / META_FILE).read_text())
    right_hash, meta["weights_sha256"] = meta["weights_sha256"], "f" * 64
    (folder / META_FILE).write_text(json.dumps(meta))
    encoder = create_encoder({**encoder_cfg, "backend": "onnx"})
    assert json.loads((folder / META_FILE).read_text())["weights_sha256"] == right_hash
    assert (folder / MODEL_FILE).stat().st_mtime_ns != made
    assert isinstance(encoder.backbone, OnnxBackbone)
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_unknown_or_unsupported_backend_is_refused(encoder_cfg):
    with pytest.raises(ValueError, match="unknown encoder backend 'tensorrt'"):
        create_encoder({**encoder_cfg, "backend": "tensorrt"})
    with pytest.raises(ValueError, match="only offered for the embedded encoder"):
        create_encoder({"kind": "open_clip", "model": "ViT-B-32", "backend": "onnx"})


def test_export_command_writes_a_usable_folder(encoder_cfg, tmp_path):
    out = tmp_path / "exported"
    result = run_cli("export", "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stderr
    assert (out / MODEL_FILE).is_file() and (out / META_FILE).is_file() and not (out / INT8_FILE).exists()
    assert isinstance(onnx_encoder(encoder_cfg, out).backbone, OnnxBackbone)


def test_export_command_bad_input_is_one_line(tmp_path, capsys):
    from assistant.cli import main

    empty = tmp_path / "no_images"
    empty.mkdir()
    for args, expected in [(["--calibration", str(empty)], "need --int8"),
                           (["--int8", "--calibration", str(empty)], "no images"),
                           (["--int8", "--calibration", str(tmp_path / "missing")], "not a folder"),
                           (["--preset", "no-such-preset"], "not found")]:
        assert main(["export", "--out", str(tmp_path / "out"), *args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "out").exists()
