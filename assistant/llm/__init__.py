"""The assistant's language model: loading (embedded SmolLM2 or any HF causal LM), quantisation and LoRA."""

from .embedded import (
    CACHE_ENV,
    CONVERSION_MARKER,
    EMBEDDED_CACHE_SUBDIR,
    EMBEDDED_GGUF_NAME,
    default_cache_root,
    embedded_gguf_path,
    embedded_model_dir,
)
from .loading import EMBEDDED, LLMConfig, load_llm
from .lora import add_lora, is_kbit_quantized, load_lora, save_lora

__all__ = [
    "CACHE_ENV",
    "CONVERSION_MARKER",
    "EMBEDDED",
    "EMBEDDED_CACHE_SUBDIR",
    "EMBEDDED_GGUF_NAME",
    "LLMConfig",
    "add_lora",
    "default_cache_root",
    "embedded_gguf_path",
    "embedded_model_dir",
    "is_kbit_quantized",
    "load_llm",
    "load_lora",
    "save_lora",
]
