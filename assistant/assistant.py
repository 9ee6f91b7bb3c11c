"""The assistant: one object that answers questions about an image, grounded in the engine's result.

Data flow: image -> engine (features, maps, decision) -> bridge (image + anomaly prompt tokens)
-> LLM (chat template, LoRA) -> checked answer. The verdict and positions always come from the
engine; the LLM adds description, and its words are dropped when they disagree with the facts.
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from . import answer as grounding
from . import checkpoint, prompts
from .config import load_preset
from .engine import AnomalyEngine
from .reference_set import is_built
from .images import load_image
from .intents import IntentClassifier
from .question import Question, read_question
from .result import Detection
from .visualize import overlay

log = logging.getLogger(__name__)

DEFAULT_QUESTION = "Is there any anomaly in the image?"
MAX_MESSAGE_CHARS = 2000


@dataclass
class ChatResult:
    answer: str
    detection: Detection | None
    history: list[dict] = field(default_factory=list)
    intent: str = "judgement"
    llm_text: str = ""  # the model's own words kept in the answer ('' when the fallback was used)
    image: Image.Image | None = None
    kinds: list = field(default_factory=list)  # defect_kinds.KindMatch per region, with the user's defect examples
    areas: list = field(default_factory=list)  # evidence.ReferenceArea (or None) per region, with reference photos
    references: list = field(default_factory=list)  # the reference photos the areas are in

    @property
    def anomalous(self) -> bool | None:
        return None if self.detection is None else self.detection.anomalous

    @property
    def heatmap(self) -> Image.Image | None:
        return None if self.detection is None or self.image is None else overlay(self.image, self.detection)

    def to_json(self) -> dict:
        data = {"answer": self.answer}
        data.update(self.detection.to_json() if self.detection else {"anomalous": None, "score": None,
                                                                        "threshold": None, "regions": [],
                                                                        "capture": None})
        for region, match in zip(data["regions"], self.kinds):
            region.update(match.to_json())
        for region, area in zip(data["regions"], self.areas):
            region["reference_area"] = area.to_json() if area is not None else None
        return data


class Assistant:
    def __init__(self, preset: str | dict = "embedded", checkpoint_dir: str | Path | None = None, use_llm: bool = True,
                 llm_overrides: dict | None = None):
        self.preset = load_preset(preset) if isinstance(preset, str) else preset
        self.engine = AnomalyEngine(self.preset, checkpoint_dir)
        text_model = getattr(self.engine.encoder, "text_model", None)
        self.intents = IntentClassifier(text_model)
        self.use_llm = use_llm
        self.llm_settings = {**self.preset.get("llm", {}), **(llm_overrides or {})}
        self.model = self.tokenizer = self.bridge = None
        self._detections: dict[str, Detection] = {}
        self._kinds: dict[tuple, list] = {}
        self._areas: dict[str, list] = {}
        # One conversation step at a time: the caches and the model are shared by every session
        # the app serves, and two cores gain nothing from running two steps at once.
        self._lock = threading.RLock()
        self._profiles: dict[str, tuple] = {}  # name -> (profile.json mtime, Profile)

    # -- loading ------------------------------------------------------------------------------
    def load(self) -> "Assistant":
        """Load the LLM, the bridge and any LoRA adapter now (the app calls this once at start-up)."""
        if self.use_llm and self.model is None:
            from .llm.bridge import Bridge
            from .llm import LLMConfig, load_llm, load_lora

            cfg = LLMConfig.from_dict(self.llm_settings)
            model, tokenizer = load_llm(cfg)
            folder = self.engine.checkpoint_dir
            if folder and (folder / checkpoint.LORA_DIR).is_dir():
                model = load_lora(model, folder / checkpoint.LORA_DIR)
                log.info("LoRA adapter loaded from %s", folder / checkpoint.LORA_DIR)
            bridge_cfg = self.preset.get("bridge", {})
            hidden = model.get_input_embeddings().weight.shape[1]
            torch.manual_seed(0)
            bridge = Bridge(self.engine.encoder.embed_dim, hidden, **bridge_cfg)
            if folder and (folder / checkpoint.BRIDGE_FILE).is_file():
                checkpoint.load_module(bridge, folder / checkpoint.BRIDGE_FILE)
                bridge.trained = True
            self.model, self.tokenizer, self.bridge = model.eval(), tokenizer, bridge.eval()
        return self

    # -- profiles -------------------------------------------------------------------------------
    def create_profile(self, name: str, good: list[Path], class_name: str = "object", defects_dir: Path | None = None,
                       replace: bool = False) -> dict:
        """Build and save a profile with this assistant's engine (assistant/profiles.py), one request at a time."""
        from . import profiles

        with self._lock:
            return profiles.create(self.engine, name, good, class_name, defects_dir, replace)

    def profile(self, name: str):
        """A saved profile loaded for this assistant's engine; loaded again only when its file changed."""
        from . import profiles

        marker = profiles.profile_dir(name) / profiles.PROFILE_FILE
        stamp = marker.stat().st_mtime_ns if marker.is_file() else None  # None: load says it is missing
        with self._lock:
            cached = self._profiles.get(name)
            if cached is None or cached[0] != stamp:
                self._profiles[name] = (stamp, profiles.load(name, self.engine))
            return self._profiles[name][1]

    # -- the conversation ---------------------------------------------------------------------
    def chat(self, image=None, message: str | None = None, references: list | None = None,
             history: list[dict] | None = None, class_name: str | None = None, threshold: float | None = None,
             max_new_tokens: int = 60, mm_per_pixel: float | None = None, defects=None) -> ChatResult:
        """Answer `message` about `image` (path, bytes, array or PIL), optionally against normal `references`.
        `mm_per_pixel` gives sizes in millimetres; a scale said in the conversation takes precedence.
        `defects` (defect_kinds.DefectExamples, the user's labelled examples) names the kind each
        anomalous region looks most like."""
        with self._lock:
            return self._chat(image, message, references, history, class_name, threshold, max_new_tokens, mm_per_pixel,
                              defects)

    def _chat(self, image, message, references, history, class_name, threshold, max_new_tokens,
              mm_per_pixel=None, defects=None) -> ChatResult:
        message = _clean_message(message)
        history = list(history or [])
        scale = check_scale(mm_per_pixel)
        picture = load_image(image) if image is not None else None
        refs = references if is_built(references) else [load_image(ref, name=f"reference {i + 1}")
                                                         for i, ref in enumerate(references or [])]
        class_name = (class_name or "object").strip() or "object"
        intent, _ = self.intents.classify(message)
        # One key for every cache of this image: hashing 64 reference photos costs ~30 ms each time.
        key = _key(picture, refs, class_name, threshold) if picture is not None else None
        detection = self.detect(picture, refs, class_name, threshold, key) if picture is not None else None
        question = read_question(message, history, picture.size if picture is not None else (0, 0),
                                 scale, threshold_set_by_user=threshold is not None)
        follow_up = question.follow_up
        reply = grounding.grounded_answer(intent, detection, follow_up, question)
        llm_text = ""
        if self.use_llm and detection is not None and intent in grounding.JUDGEMENT_INTENTS:
            llm_text = first_agreeing_sentences(
                self.llm_text(picture, detection, history, question, intent, max_new_tokens), detection)
            if llm_text and not repeats(llm_text, [reply, *(t["content"] for t in history if t.get("role") == "assistant")]):
                reply = f"{reply} {llm_text}"
        kinds = self.kinds(defects, picture, detection, refs, class_name, key) if defects is not None and detection else []
        areas = self.reference_areas(picture, detection, refs, class_name, key) if detection else []
        for note in (grounding.kind_note(intent, detection, message, kinds),
                     grounding.evidence_note(intent, detection, areas),
                     grounding.closing_note(intent, detection, follow_up)):
            if note:
                reply = f"{reply} {note}"
        new_history = history + [{"role": "user", "content": message}, {"role": "assistant", "content": reply}]
        return ChatResult(reply, detection, new_history, intent, llm_text, picture, kinds, areas,
                          refs if areas else [])

    def reference_areas(self, image: Image.Image, detection: Detection, references, class_name: str,
                        key: str | None = None) -> list:
        """Where each region's place is on the reference photos (evidence.reference_areas), cached per
        detection; [] for a normal part, without photos (zero-shot, a profile keeps features only) and
        for tiled images."""
        from . import tiling
        from .evidence import reference_areas

        if (not detection.anomalous or not references or is_built(references) or tiling.applies(self.engine, image)
                or detection.regions[0].area_fraction >= 1.0):
            return []
        key = key or _key(image, references, class_name, detection.threshold)
        if key not in self._areas:
            if len(self._areas) >= 32:
                self._areas.pop(next(iter(self._areas)))
            self._areas[key] = reference_areas(self.engine, image, detection, references,
                                               self.engine.references(references, class_name))
        return self._areas[key]

    def kinds(self, defects, image: Image.Image, detection: Detection, references: list[Image.Image],
              class_name: str, key: str | None = None) -> list:
        """The kind each region of an anomalous detection looks like, cached per detection and example
        set: describing a region encodes a crop of it, which follow-up questions need not repeat."""
        key = (key or _key(image, references, class_name, detection.threshold), id(defects))
        if key not in self._kinds:
            if len(self._kinds) >= 32:
                self._kinds.pop(next(iter(self._kinds)))
            self._kinds[key] = defects.classify(self.engine, image, detection, references, class_name)
        return self._kinds[key]

    def detect(self, image: Image.Image, references: list[Image.Image], class_name: str,
               threshold: float | None, key: str | None = None) -> Detection:
        """Engine result, cached so follow-up questions about the same image cost no recomputation
        (`key`: this image's `_key`, when the caller has it)."""
        key = key or _key(image, references, class_name, threshold)
        if key not in self._detections:
            if len(self._detections) >= 32:
                self._detections.pop(next(iter(self._detections)))
            self._detections[key] = self.engine.detect(image, references or None, class_name, threshold)
        return self._detections[key]

    def detect_many(self, images: list[Image.Image], references: list[Image.Image], class_name: str,
                    threshold: float | None) -> list[Detection]:
        """`detect` for several images at once (`batch.detect_batch`: views of one input size share a
        forward pass), cached the same way, so the answers asked about them next reuse them."""
        from .batch import detect_batch

        class_name = (class_name or "object").strip() or "object"  # as `chat` reads it, so its cache lookup finds these
        references = references if is_built(references) else list(references or [])
        with self._lock:
            detections = detect_batch(self.engine, images, references or None, class_name, threshold)
            for image, detection in zip(images, detections):
                key = _key(image, references, class_name, threshold)
                if key not in self._detections and len(self._detections) >= 32:
                    self._detections.pop(next(iter(self._detections)))
                self._detections[key] = detection
        return detections

    def llm_text(self, image, detection: Detection, history, question: Question, intent: str,
                 max_new_tokens: int) -> str:
        """What the language model writes after the grounded lead sentence, unchecked (the answer keeps
        only its agreeing sentences; eval/llm_agreement.py measures how many do)."""
        from .llm.chat import build_inputs, generate

        self.load()
        message = question.message
        system = prompts.load_text("system").format(class_name=grounding.facts(detection)["class_name"],
                                                    facts=grounding.facts_sentence(detection))
        lead = grounding.lead_sentence(intent, detection, question.follow_up, question)
        with torch.no_grad():
            embedding = self.engine.encoder.encode_images([image]).embedding
            small_map = torch.from_numpy(detection.anomaly_map)[None]
            visual = self.bridge(embedding, small_map)
            inputs = build_inputs(self.model, self.tokenizer, system, _text_history(history), message, visual,
                                  lead=lead + " ", max_new_tokens=max_new_tokens)
            return generate(self.model, self.tokenizer, inputs, max_new_tokens)


def first_agreeing_sentences(text: str, detection: Detection, limit: int = 2) -> str:
    """The model's first sentences, up to the first one that disagrees with the facts or is unfinished."""
    kept = []
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        if not sentence.endswith((".", "!", "?")) or not grounding.agrees(sentence, detection):
            break
        kept.append(sentence)
        if len(kept) == limit:
            break
    return " ".join(kept)


def check_scale(mm_per_pixel) -> float | None:
    """None or 0 means no scale; anything else must be a positive number of millimetres per pixel."""
    if mm_per_pixel in (None, ""):
        return None
    try:
        value = float(mm_per_pixel)
    except (TypeError, ValueError):
        raise ValueError(f"mm per pixel must be a number, got {mm_per_pixel!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"mm per pixel must be a positive number (0 for none), got {mm_per_pixel!r}")
    return value or None


def repeats(text: str, earlier: list[str]) -> bool:
    """True when the model's sentence mostly repeats words already said in this conversation."""
    words = set(re.findall(r"[a-z']+", text.lower()))
    said = set(re.findall(r"[a-z']+", " ".join(earlier).lower()))
    return not words or len(words - said) < 0.3 * len(words)


def _clean_message(message: str | None) -> str:
    text = " ".join((message or "").split())
    if not text:
        return DEFAULT_QUESTION
    return text[:MAX_MESSAGE_CHARS]


def _text_history(history: list[dict]) -> list[dict]:
    return [{"role": turn["role"], "content": str(turn["content"])} for turn in history
            if turn.get("role") in ("user", "assistant") and isinstance(turn.get("content"), str)]


def _key(image: Image.Image, references, class_name: str, threshold) -> str:
    """Cache key of one detection: the image, the references (images, or a built set's own key), class and threshold."""
    digest = hashlib.sha1()
    built = is_built(references)
    for picture in [image, *([] if built else references)]:
        digest.update(f"{picture.size}".encode())
        digest.update(picture.tobytes())
    if built:
        digest.update(references.fingerprint.encode())
    digest.update(f"|{class_name}|{threshold}".encode())
    return digest.hexdigest()
