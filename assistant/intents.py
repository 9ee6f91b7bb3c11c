"""What a user's message asks for, by nearest example question (all-MiniLM-L6-v2, offline)."""
from __future__ import annotations

import os
import re
from functools import cached_property

import torch

from . import prompts
from .answer import CHAT_INTENTS


class IntentClassifier:
    def __init__(self, model=None):
        self._model = model  # a SentenceTransformer; the embedded encoder's is reused when given

    @cached_property
    def model(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            from .encoders.embedded import minilm_path

            self._model = SentenceTransformer(str(minilm_path()), device="cpu")
        return self._model

    @cached_property
    def _examples(self) -> tuple[list[str], torch.Tensor]:
        data = prompts.load("intents")["intents"]
        labels = [intent for intent, examples in data.items() for _ in examples]
        sentences = [example for examples in data.values() for example in examples]
        return labels, self._embed(sentences)

    def _embed(self, sentences: list[str]) -> torch.Tensor:
        return self.model.encode(sentences, convert_to_tensor=True, normalize_embeddings=True,
                                 show_progress_bar=False).float().cpu()

    def classify(self, message: str) -> tuple[str, float]:
        """(intent, similarity). A message near no example, or nearest an off-topic one, is off-topic
        unless it speaks of inspection ("What is the serial number of this part?"): then it goes to the
        nearest inspection intent when that is close enough, else to 'unsupported', whose reply names
        what the assistant can tell instead of refusing."""
        text = " ".join(message.split())[:512]
        if not text:
            return "judgement", 1.0
        data = prompts.load("intents")
        labels, examples = self._examples
        similarity = (examples @ self._embed([text])[0])
        best = int(similarity.argmax())
        score = float(similarity[best])
        if score >= float(data["min_similarity"]) and labels[best] != "off_topic":
            return labels[best], score
        if not speaks_of_inspection(text):
            return "off_topic", score
        inspection = [i for i, label in enumerate(labels) if label not in CHAT_INTENTS]
        nearest = max(inspection, key=lambda i: float(similarity[i]))
        if float(similarity[nearest]) >= float(data["inspection_min_similarity"]):
            return labels[nearest], float(similarity[nearest])
        return "unsupported", score


def speaks_of_inspection(text: str) -> bool:
    words = set(re.findall(r"[a-z]+", text.lower()))
    return bool(words & set(prompts.load("intents")["inspection_words"]))
