"""Training targets from a synthetic sample: Detection-like facts from the exact mask, and a chat
example whose answer is the same grounded template sentence the assistant gives at inference.

The facts come from the *mask* (ground truth), never from the model being trained, so the LLM learns
to read the facts line of the system prompt and the visual tokens, and to word answers like
`assistant.answer.grounded_answer` does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from assistant import prompts
from assistant.answer import JUDGEMENT_INTENTS, facts, facts_sentence, grounded_answer
from assistant.maps.anomaly_map import find_regions
from assistant.result import Detection

CHAT_EXAMPLES_PATH = prompts.PROMPTS_DIR / "chat_examples.json"
QUESTION_INTENTS = JUDGEMENT_INTENTS  # judgement, where, describe, confidence, count, advice
ZERO_SHOT_THRESHOLD = 0.5


@dataclass
class ChatExample:
    system: str
    history: list[dict]
    message: str
    answer: str
    intent: str
    kind: str = "grounded"  # "grounded" (about the image) or "chat" (general conversation)


@dataclass
class Targets:
    detection: Detection
    conversation: ChatExample
    extra: dict = field(default_factory=dict)


def mask_detection(mask: np.ndarray, class_name: str, rng: np.random.Generator,
                   threshold: float = ZERO_SHOT_THRESHOLD) -> Detection:
    """Detection facts of a sample whose anomalous pixels are exactly `mask` (HxW bool).

    Regions are the mask's connected components (find_regions on the mask as float), with the same
    3x3 position words as at inference. The score is drawn on the right side of the threshold.
    """
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    anomalous = bool(mask.any())
    as_float = mask.astype(np.float32)
    regions = find_regions(as_float, 0.5) if anomalous else []
    if anomalous and not regions:  # a speck below find_regions' minimum area: still one region
        regions = find_regions(as_float, 0.5, min_area_fraction=0.0)[:1]
    if anomalous:
        score = float(rng.uniform(threshold * 1.05, min(1.0, threshold * 2.0)))
    else:
        score = float(rng.uniform(threshold * 0.2, threshold * 0.95))
    return Detection(anomalous=anomalous, score=score, threshold=float(threshold), anomaly_map=as_float,
                     regions=regions, image_size=(width, height), mode="zero-shot", class_name=class_name)


def system_prompt(detection: Detection) -> str:
    """Exactly the system prompt the assistant builds at inference for this detection."""
    return prompts.load_text("system").format(class_name=facts(detection)["class_name"],
                                              facts=facts_sentence(detection))


@lru_cache(maxsize=None)
def _intent_questions() -> dict[str, tuple[str, ...]]:
    data = prompts.load("intents")["intents"]
    extra_path = prompts.PROMPTS_DIR / "train_questions.json"
    extra = json.loads(extra_path.read_text(encoding="utf-8")).get("intents", {}) if extra_path.is_file() else {}
    return {intent: tuple(data.get(intent, [])) + tuple(extra.get(intent, [])) for intent in QUESTION_INTENTS}


@lru_cache(maxsize=None)
def chat_examples(path: str | None = None) -> tuple[dict, ...]:
    data = json.loads(Path(path or CHAT_EXAMPLES_PATH).read_text(encoding="utf-8"))
    examples = tuple(data["examples"])
    if not examples:
        raise ValueError("prompts/chat_examples.json has no examples")
    return examples


def _style(question: str, rng: np.random.Generator) -> str:
    """Small surface variation so the model does not key on exact punctuation or case."""
    roll = rng.random()
    if roll < 0.15:
        return question.lower()
    if roll < 0.25:
        return question.rstrip("?.!")
    if roll < 0.3:
        return "Please tell me: " + question[0].lower() + question[1:]
    return question


def conversation(detection: Detection, rng: np.random.Generator, chat_fraction: float = 0.12,
                 follow_up_fraction: float = 0.25) -> ChatExample:
    """One training conversation about `detection` (or, with `chat_fraction`, a general chat turn)."""
    system = system_prompt(detection)
    if rng.random() < chat_fraction:
        examples = chat_examples()
        example = examples[int(rng.integers(len(examples)))]
        return ChatExample(system, list(example.get("history", [])), example["user"], example["assistant"], "chat", "chat")
    questions = _intent_questions()
    history: list[dict] = []
    if rng.random() < follow_up_fraction:  # an earlier question about the same image, answered
        first = QUESTION_INTENTS[int(rng.integers(len(QUESTION_INTENTS)))]
        first_q = questions[first][int(rng.integers(len(questions[first])))]
        history = [{"role": "user", "content": first_q},
                   {"role": "assistant", "content": grounded_answer(first, detection)}]
    intent = QUESTION_INTENTS[int(rng.integers(len(QUESTION_INTENTS)))]
    message = _style(questions[intent][int(rng.integers(len(questions[intent])))], rng)
    return ChatExample(system, history, message, grounded_answer(intent, detection), intent)


def make_targets(mask: np.ndarray, class_name: str, rng: np.random.Generator, chat_fraction: float = 0.12) -> Targets:
    detection = mask_detection(mask, class_name, rng)
    return Targets(detection, conversation(detection, rng, chat_fraction))
