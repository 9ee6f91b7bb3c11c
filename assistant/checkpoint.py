"""Safetensors checkpoints, always written atomically (temp file in the same folder, then rename)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ADAPTERS_FILE = "adapters.safetensors"
BRIDGE_FILE = "bridge.safetensors"
LORA_DIR = "lora"
META_FILE = "meta.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(clean, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_module(module: torch.nn.Module, path: Path, metadata: dict | None = None) -> None:
    save_tensors(dict(module.state_dict()), path, metadata)


def load_module(module: torch.nn.Module, path: Path) -> None:
    """Strict load: a checkpoint that does not fit the module is an error, not a silent partial load."""
    state = load_file(str(path))
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("input_norm.")]
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")


def save_json(data: dict, path: Path) -> None:
    atomic_write_bytes(Path(path), json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))
