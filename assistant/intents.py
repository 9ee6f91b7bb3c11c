"""What a user's message asks for (all-MiniLM-L6-v2, offline): whether it is an inspection question
at all, by its nearest example question, and which intent, by a linear classifier over the example
questions' embeddings (docs/conversation.md, "Question banks and measured routing")."""
from __future__ import annotations

import os
import re
from functools import cached_property

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

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

    @cached_property
    def _linear(self) -> LogisticRegression:
        """Fitted on the examples alone. The nearest example follows a question's nouns ("Is it
        normal?" sat nearest "Why is it normal?"); a linear boundary weighs every example of an
        intent, which routes 92.9 % of the never-fitted question list against 85.7 %."""
        labels, embeddings = self._examples
        strength = float(prompts.load("intents")["linear_c"])
        return LogisticRegression(C=strength, max_iter=5000).fit(embeddings.numpy(), labels)

    def _embed(self, sentences: list[str]) -> torch.Tensor:
        return self.model.encode(sentences, convert_to_tensor=True, normalize_embeddings=True,
                                 show_progress_bar=False).float().cpu()

    def _likeliest(self, probabilities: np.ndarray, exclude: tuple[str, ...]) -> str:
        allowed = [i for i, intent in enumerate(self._linear.classes_) if intent not in exclude]
        return str(self._linear.classes_[max(allowed, key=lambda i: probabilities[i])])

    def classify(self, message: str) -> tuple[str, float]:
        """(intent, similarity of the nearest example). A message near no example, or nearest an
        off-topic one, is off-topic unless it speaks of inspection ("What is the serial number of
        this part?"): then it goes to the likeliest inspection intent when an inspection example is
        close enough, else to 'unsupported', whose reply names what the assistant can tell instead
        of refusing."""
        text = " ".join(message.split())[:512]
        if not text:
            return "judgement", 1.0
        data = prompts.load("intents")
        labels, examples = self._examples
        query = self._embed([text])[0]
        similarity = examples @ query
        probabilities = self._linear.predict_proba(query.numpy()[None])[0]
        best = int(similarity.argmax())
        score = float(similarity[best])
        if score >= float(data["min_similarity"]) and labels[best] != "off_topic":
            return self._likeliest(probabilities, exclude=("off_topic",)), score
        if not speaks_of_inspection(text):
            return "off_topic", score
        inspection = max(float(similarity[i]) for i, label in enumerate(labels) if label not in CHAT_INTENTS)
        if inspection >= float(data["inspection_min_similarity"]):
            return self._likeliest(probabilities, exclude=CHAT_INTENTS), inspection
        return "unsupported", score


def speaks_of_inspection(text: str) -> bool:
    words = set(re.findall(r"[a-z]+", text.lower()))
    return bool(words & set(prompts.load("intents")["inspection_words"]))
