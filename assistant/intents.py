"""What a user's message asks for, by nearest example question (all-MiniLM-L6-v2, offline)."""
from __future__ import annotations

import os
from functools import cached_property

import torch

from . import prompts


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
        """(intent, similarity); 'off_topic' when nothing is close enough."""
        text = " ".join(message.split())[:512]
        if not text:
            return "judgement", 1.0
        labels, examples = self._examples
        similarity = (examples @ self._embed([text])[0])
        best = int(similarity.argmax())
        score = float(similarity[best])
        if score < float(prompts.load("intents")["min_similarity"]):
            return "off_topic", score
        return labels[best], score
