"""LoRA adapters on the LLM through peft: add a fresh one, save it atomically, load a saved one (4-/8-bit models
are prepared for k-bit training first)."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .loading import LLMConfig

if TYPE_CHECKING:  # pragma: no cover
    from peft import PeftModel
    from transformers import PreTrainedModel


def is_kbit_quantized(model: Any) -> bool:
    """True for bitsandbytes 4-bit / 8-bit models (also when wrapped in a PeftModel)."""
    base = model
    if hasattr(model, "get_base_model"):
        base = model.get_base_model()
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False))


def _prepare_kbit(model: Any) -> Any:
    """peft's k-bit preparation (freeze base, upcast norms, input grads, non-reentrant activation checkpointing)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
    )


def _existing_targets(model: torch.nn.Module, targets: tuple[str, ...]) -> list[str]:
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    return [t for t in targets if t in present]


@contextmanager
def _peft_reading_deprecated_attributes():
    """peft reads `is_gradient_checkpointing`, which transformers 5 deprecates with a FutureWarning on
    every adapter it attaches: a line on each user's console about code that is not theirs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


def add_lora(model: "PreTrainedModel", cfg: LLMConfig, for_training: bool = True) -> "PeftModel":
    """Wrap ``model`` with a fresh LoRA adapter (task CAUSAL_LM) shaped by ``cfg``.

    Only the ``cfg.lora_targets`` that exist in the model are used (ValueError if none). With ``for_training`` the
    adapter weights require grad (and 4-/8-bit models go through ``peft.prepare_model_for_kbit_training`` first);
    without it the adapter is created frozen (inference mode). The base weights are always frozen.
    """
    from peft import LoraConfig, get_peft_model

    targets = _existing_targets(model, tuple(cfg.lora_targets))
    if not targets:
        linear_names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                               if n and isinstance(m, torch.nn.Linear)})
        raise ValueError(
            f"None of the LoRA targets {list(cfg.lora_targets)} exist in {type(model).__name__}; "
            f"linear layers it has: {linear_names}"
        )
    if for_training and is_kbit_quantized(model):
        model = _prepare_kbit(model)
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=int(cfg.lora_rank),
        lora_alpha=int(cfg.lora_alpha),
        lora_dropout=float(cfg.lora_dropout),
        target_modules=targets,
        inference_mode=not for_training,
    )
    with _peft_reading_deprecated_attributes():
        return get_peft_model(model, lora)


def save_lora(model: "PeftModel", folder: str | os.PathLike) -> Path:
    """Save the adapter (``adapter_config.json`` + ``adapter_model.safetensors``) into ``folder``.

    Written into a temporary sibling folder first, then renamed into place; an existing ``folder`` is replaced.
    """
    if not hasattr(model, "peft_config"):
        raise TypeError(f"save_lora needs a peft model (from add_lora/load_lora), got {type(model).__name__}")
    folder = Path(folder).expanduser()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if not (tmp / "adapter_config.json").is_file() or not any(tmp.glob("*.safetensors")):
            raise RuntimeError(f"peft save_pretrained did not write an adapter into {tmp}")
        if folder.exists() or folder.is_symlink():
            trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, trash / "old")
            os.replace(tmp, folder)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_lora(model: "PreTrainedModel", folder: str | os.PathLike, trainable: bool = False) -> "PeftModel":
    """Attach the adapter saved in ``folder`` to the base ``model``.

    ``trainable=False`` gives a frozen adapter with the model in eval mode; ``trainable=True`` lets training resume
    (4-/8-bit models are prepared with ``prepare_model_for_kbit_training``).
    """
    from peft import PeftModel

    folder = Path(folder).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"No LoRA adapter (adapter_config.json) in {folder}")
    if trainable and is_kbit_quantized(model):
        model = _prepare_kbit(model)
    with _peft_reading_deprecated_attributes():
        peft_model = PeftModel.from_pretrained(model, folder, is_trainable=trainable)
    if not trainable:
        peft_model.eval()
    return peft_model
