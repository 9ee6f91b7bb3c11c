"""`anomaly-assistant export --out DIR [--int8 [--calibration FOLDER]]`: the embedded encoder's backbone as ONNX.

The folder it writes is what a preset's `"encoder": {"backend": "onnx" | "onnx-int8", "export_dir": DIR}`
runs (assistant/encoders/onnx_backend.py); without `export_dir` the backend exports into the user's cache.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("assistant.export")


def add_export_command(sub) -> None:
    parser = sub.add_parser("export", help="export the embedded encoder's backbone to ONNX (float32, optionally INT8)",
                            description="Write model.onnx, optionally model-int8.onnx, and export.json into OUT.")
    parser.add_argument("--preset", default="embedded", help="preset whose encoder is exported (default: embedded)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write the export into")
    parser.add_argument("--int8", action="store_true", help="also write a static INT8 model (QDQ, per-channel weights)")
    parser.add_argument("--calibration", type=Path, default=None, metavar="FOLDER",
                        help="with --int8: images to calibrate on, e.g. normal parts (default: the MIT textile set)")
    parser.add_argument("--calibration-images", type=int, default=None, metavar="N",
                        help="with --int8: at most N calibration images, spread over the folder (default: 32)")
    parser.set_defaults(handler=run_export)


def _check_arguments(args: argparse.Namespace) -> None:
    if (args.calibration is not None or args.calibration_images is not None) and not args.int8:
        raise ValueError("--calibration and --calibration-images need --int8")
    if args.calibration_images is not None and args.calibration_images < 1:
        raise ValueError(f"--calibration-images must be at least 1, got {args.calibration_images}")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out}: exists and is not a folder")


def run_export(args: argparse.Namespace) -> int:
    from .config import load_preset
    from .encoders.onnx_backend import (CALIBRATION_IMAGES, calibration_images_from, default_calibration_images,
                                        export_encoder)

    logging.getLogger("assistant").setLevel(logging.INFO)
    _check_arguments(args)
    encoder_cfg = load_preset(args.preset).get("encoder", {})
    if encoder_cfg.get("kind", "embedded") != "embedded":
        raise ValueError(f"preset {args.preset!r} uses the {encoder_cfg.get('kind')!r} encoder; export covers the embedded one")
    count = args.calibration_images or CALIBRATION_IMAGES
    calibration, source = None, ""
    if args.int8:  # images are read (and checked) before the model is built
        if args.calibration is not None:
            calibration, source = calibration_images_from(args.calibration, count), str(args.calibration.resolve())
        else:
            calibration, source = default_calibration_images(count), "conformal-clip-data textile (default)"

    from .encoders import create_encoder

    encoder = create_encoder({**encoder_cfg, "backend": "torch"})
    log.info("exporting %s%s to %s", encoder.model_name, f" with INT8 ({len(calibration)} calibration images)" if calibration else "",
             args.out)
    meta = export_encoder(encoder, args.out, calibration, source)
    for name in sorted(meta["files"]):
        path = args.out / name
        print(f"{path}  {path.stat().st_size / 2**20:.1f} MiB")
    print(args.out / "export.json")
    backend = "onnx-int8" if args.int8 else "onnx"
    print(f'use it with a preset override: "encoder": {{"backend": "{backend}", "export_dir": "{args.out}"}}')
    return 0
