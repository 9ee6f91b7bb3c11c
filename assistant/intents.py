"""What a user's message asks for (all-MiniLM-L6-v2, offline): whether it is an inspection question
at all, by its nearest example question, and which intent, by a linear classifier over the example
questions' embeddings (docs/conversation.md, "Question banks and measured routing")."""
from __future__ import annotations

import os
import re
from functools import cached_property

import numpy as np
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

    @cached_property
    def _linear(self) -> "LinearIntents":
        """Fitted on the examples alone. The nearest example follows a question's nouns ("Is it
        normal?" sat nearest "Why is it normal?"); a linear boundary weighs every example of an
        intent: on two never-fitted question lists it routes 92.9 and 88.1 % against 85.7 and 88.1 %
        (docs/conversation.md)."""
        labels, embeddings = self._examples
        return LinearIntents.fit(embeddings, labels, float(prompts.load("intents")["linear_c"]))

    def _embed(self, sentences: list[str]) -> torch.Tensor:
        return self.model.encode(sentences, convert_to_tensor=True, normalize_embeddings=True,
                                 show_progress_bar=False).float().cpu()

    def _likeliest(self, query: torch.Tensor, exclude: tuple[str, ...]) -> str:
        """The intent the linear classifier finds likeliest for the embedded `query`, other than `exclude`."""
        probabilities = self._linear.probabilities(query)
        allowed = [i for i, intent in enumerate(self._linear.classes) if intent not in exclude]
        return self._linear.classes[max(allowed, key=lambda i: probabilities[i])]

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
        best = int(similarity.argmax())
        score = float(similarity[best])
        if score >= float(data["min_similarity"]) and labels[best] != "off_topic":
            return self._likeliest(query, exclude=("off_topic",)), score
        if not speaks_of_inspection(text):
            return "off_topic", score
        inspection = max(float(similarity[i]) for i, label in enumerate(labels) if label not in CHAT_INTENTS)
        if inspection >= float(data["inspection_min_similarity"]):
            return self._likeliest(query, exclude=CHAT_INTENTS), inspection
        return "unsupported", score


class LinearIntents:
    """Multinomial logistic regression, L2-regularised as scikit-learn's (`strength` is its C).
    Written on torch, which the app has loaded already: importing scikit-learn for one 15 x 384 fit
    added 120 MiB to the app's resident memory."""

    def __init__(self, classes: list[str], weight: torch.Tensor, bias: torch.Tensor):
        self.classes, self.weight, self.bias = classes, weight, bias

    @classmethod
    def fit(cls, embeddings: torch.Tensor, labels: list[str], strength: float) -> "LinearIntents":
        classes = sorted(set(labels))
        target = torch.tensor([classes.index(label) for label in labels])
        x = embeddings.double()
        weight = torch.zeros(len(classes), x.shape[1], dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([weight, bias], max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                                      line_search_fn="strong_wolfe")

        def loss() -> torch.Tensor:
            optimiser.zero_grad()
            value = strength * torch.nn.functional.cross_entropy(x @ weight.T + bias, target, reduction="sum")
            value = value + 0.5 * (weight * weight).sum()
            value.backward()
            return value

        with torch.enable_grad():
            optimiser.step(loss)
        return cls(classes, weight.detach().float(), bias.detach().float())

    def probabilities(self, embedding: torch.Tensor) -> np.ndarray:
        return torch.softmax(embedding.float() @ self.weight.T + self.bias, dim=-1).numpy()


def speaks_of_inspection(text: str) -> bool:
    words = set(re.findall(r"[a-z]+", text.lower()))
    return bool(words & set(prompts.load("intents")["inspection_words"]))
