"""Helpers shared by the command line, `inspect` and the web app: model options, loading, one-line errors.

Neither the UI nor any command owns this module, so each of them imports it and none imports another.
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """A preset's models could not be loaded (missing weights, no GPU, ...): one line for the user."""


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="embedded", help="preset name in assistant/presets or a JSON file (default: embedded)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the preset's)")
    parser.add_argument("--no-llm", action="store_true", help="answer from templates only (no language model; faster)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:400]


def check_threshold(value: float | None) -> float | None:
    """None / 0 mean 'calibrated'; anything else must be a positive finite number."""
    if value is None or value == 0:
        return None
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"threshold must be a positive number (or 0 for the calibrated one), got {value}")
    return value


def preset_problem(preset: dict) -> str | None:
    """Why a preset cannot run on this machine (e.g. it needs a GPU), or None."""
    import torch

    device = str(preset.get("encoder", {}).get("device", "cpu"))
    quantized = preset.get("llm", {}).get("quantization") in ("4bit", "8bit")
    if (device.startswith("cuda") or quantized) and not torch.cuda.is_available():
        return f"preset {preset.get('name', '?')!r} needs a CUDA GPU and this machine has none; use 'embedded'"
    return None


def load_assistant(preset: str = "embedded", checkpoint: str | Path | None = None, use_llm: bool = True,
                   load_llm: bool = True):
    """Build the Assistant for a preset; any failure becomes one ModelLoadError line."""
    import warnings

    from .config import load_preset

    # transformers warns about generation options on every call; one line per answer drowns the progress bar
    warnings.filterwarnings("ignore", category=UserWarning, module=r"transformers\.generation")
    data = load_preset(preset)  # FileNotFoundError (exit 2) names the available presets
    problem = preset_problem(data)
    if problem:
        raise ModelLoadError(problem)
    if checkpoint is not None and not Path(checkpoint).is_dir():
        raise ModelLoadError(f"checkpoint folder {checkpoint} not found")
    try:
        from .assistant import Assistant

        assistant = Assistant(data, checkpoint_dir=checkpoint, use_llm=use_llm)
        if use_llm and load_llm:
            assistant.load()
    except (KeyboardInterrupt, ModelLoadError):
        raise
    except Exception as exc:  # noqa: BLE001 - missing weights, offline hub, CUDA errors: one line
        raise ModelLoadError(f"preset {data.get('name', preset)!r} could not be loaded: {one_line(exc)}") from exc
    return assistant


def load_references(paths) -> list:
    from .images import load_image

    return [load_image(path, name=f"reference {Path(path).name}") for path in paths or []]


def png_bytes(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def load_defects(folder: Path | None):
    """The user's defect examples, read and checked before any model loads (None without --defects)."""
    if folder is None:
        return None
    from .defect_kinds import load_examples

    return load_examples(folder)


def add_profile_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default=None, metavar="NAME",
                        help="a saved profile (anomaly-assistant profile create) in place of --reference images: its "
                             "bank, threshold, class and defect examples; a profile folder's path also works")


def check_profile(args) -> dict | None:
    """The profile's profile.json, checked against --preset before any model loads (None without --profile)."""
    if getattr(args, "profile", None) is None:
        return None
    from .config import load_preset
    from .profiles import check_compatible, read_info

    if getattr(args, "reference", None):
        raise ValueError("give --reference images or --profile, not both")
    info = read_info(args.profile)
    check_compatible(info, load_preset(args.preset))
    return info


def find_images(folder: Path) -> list[Path]:
    """Every image under `folder` (recursive, sorted by relative path), or a one-line error."""
    from .data.datasets import IMAGE_SUFFIXES, is_image_file

    if not folder.exists():
        raise ValueError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    files, skipped = [], []
    for path in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
        if is_image_file(path):
            files.append(path)
        elif path.is_file() and not path.name.startswith("."):
            skipped.append(path.relative_to(folder).as_posix())
    if not files:
        raise ValueError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, recursively)")
    if skipped:
        # Said, not silent: a folder's count that does not add up is the first thing a user checks.
        log.warning("skipped %d file%s that %s not an image by its suffix: %s%s", len(skipped), "s" * (len(skipped) > 1),
                    "are" if len(skipped) > 1 else "is", ", ".join(skipped[:5]), ", ..." if len(skipped) > 5 else "")
    return files


def class_name_of(args, profile_info: dict | None) -> str:
    """--class-name, else the profile's class, else "object"."""
    return (args.class_name or (profile_info or {}).get("class_name") or "object").strip() or "object"
