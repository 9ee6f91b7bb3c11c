"""Laying out a conversation for the LLM: the model's own chat template, with the visual tokens
(image token(s) + anomaly prompt tokens) spliced in where the latest user turn mentions the image.

The same function builds training sequences (with labels on the answer only) and inference
inputs, so what the model learns and what it sees at run time cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IMAGE_PLACEHOLDER = "<image>"
IGNORE_INDEX = -100


@dataclass
class ChatInputs:
    inputs_embeds: torch.Tensor  # 1 x T x hidden
    attention_mask: torch.Tensor  # 1 x T
    labels: torch.Tensor | None  # 1 x T, IGNORE_INDEX except on answer tokens


def context_length(model) -> int:
    config = model.config
    return int(getattr(config, "max_position_embeddings", None) or 2048)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def truncate_history(tokenizer, system: str, history: list[dict], message: str, budget: int) -> list[dict]:
    """Drop the oldest user/assistant pairs until the rendered prompt fits `budget` tokens."""
    kept = list(history)
    while True:
        messages = [{"role": "system", "content": system}, *kept, {"role": "user", "content": message}]
        length = len(tokenizer(render(tokenizer, messages, True), add_special_tokens=False)["input_ids"])
        if length <= budget or not kept:
            return kept
        kept = kept[2:] if len(kept) >= 2 else []


def build_inputs(model, tokenizer, system: str, history: list[dict], message: str, visual_tokens: torch.Tensor,
                 answer: str | None = None, lead: str = "", max_new_tokens: int = 60) -> ChatInputs:
    """Embeddings for [system, history..., user(<image> + message)] + lead (+ answer when training).

    `visual_tokens` is 1 x V x hidden. The user's message is clipped to what fits the context.
    """
    n_visual = visual_tokens.shape[1]
    budget = context_length(model) - n_visual - max_new_tokens - 8
    message = clip_message(tokenizer, message, budget // 2)
    history = truncate_history(tokenizer, system, history, f"{IMAGE_PLACEHOLDER}\n{message}", budget)
    messages = [{"role": "system", "content": system}, *history,
                {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{message}"}]
    prompt = render(tokenizer, messages, add_generation_prompt=True)
    before, after = prompt.rsplit(IMAGE_PLACEHOLDER, 1)
    ids_before = _ids(tokenizer, before)
    ids_after = _ids(tokenizer, after + lead)
    ids_answer = _ids(tokenizer, answer + end_of_turn(tokenizer)) if answer is not None else []
    embed = model.get_input_embeddings()
    device = embed.weight.device
    text_before = embed(torch.tensor([ids_before], device=device))
    text_after = embed(torch.tensor([ids_after + ids_answer], device=device))
    visual = visual_tokens.to(device=device, dtype=text_before.dtype)
    inputs_embeds = torch.cat([text_before, visual, text_after], dim=1)
    attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=device)
    labels = None
    if answer is not None:
        prefix = len(ids_before) + n_visual + len(ids_after)
        labels = torch.full(inputs_embeds.shape[:2], IGNORE_INDEX, dtype=torch.long, device=device)
        labels[0, prefix:] = torch.tensor(ids_answer, device=device)
    return ChatInputs(inputs_embeds, attention_mask, labels)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def clip_message(tokenizer, message: str, max_tokens: int) -> str:
    ids = _ids(tokenizer, message)
    if len(ids) <= max_tokens:
        return message
    return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True) + " ..."


def end_of_turn(tokenizer) -> str:
    """The text the template puts after an assistant message (e.g. '<|im_end|>')."""
    probe = render(tokenizer, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "XYZ"}], False)
    tail = probe.split("XYZ", 1)[1]
    return tail.rstrip("\n") or (tokenizer.eos_token or "")


def stop_token_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    marker = end_of_turn(tokenizer).strip()
    if marker:
        token = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(token, int) and token != tokenizer.unk_token_id:
            ids.add(token)
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(model, tokenizer, inputs: ChatInputs, max_new_tokens: int = 60) -> str:
    """Greedy decoding with repetition limits; stops at the template's end of turn."""
    output = model.generate(
        inputs_embeds=inputs.inputs_embeds,
        attention_mask=inputs.attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        repetition_penalty=1.15,
        no_repeat_ngram_size=3,
        eos_token_id=stop_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(output[0], skip_special_tokens=True).strip()
