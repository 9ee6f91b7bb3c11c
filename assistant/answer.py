"""Grounded answers: facts from the engine's Detection, sentences from prompts/answers.json, and a
check that whatever the LLM writes agrees with those facts."""
from __future__ import annotations

import re
from functools import lru_cache

from . import prompts
from .result import Detection

NEGATION = re.compile(r"\b(no|not|without|isn't|is not|nothing|never)\b(\s+\w+){0,2}\s+(anomal|defect|damage|flaw|abnormal)")
JUDGEMENT_INTENTS = ("judgement", "where", "describe", "confidence", "count", "advice")
YES_PATTERN = re.compile(r"\b(yes|anomal(y|ies|ous)(?! score)|defect(s|ive)?|damaged?|flaw(ed|s)?|abnormal)\b", re.I)
NO_PATTERN = re.compile(r"\b(no anomal\w*|not? (any )?(anomal\w*|defect\w*|damage\w*)|normal|flawless|looks fine|no)\b", re.I)
# "The anomaly is a normal part": a sentence about an anomaly's nature or place claims there is one
AFFIRMED_ANOMALY = re.compile(r"\b(the|this|that|an?)\s+(anomal\w*|defect\w*|flaw\w*|damage)\s+(is|are|was|looks|appears|seems|covers|lies|sits)\b")
HEDGE = re.compile(r"\b(such as|may|might|could|possibly|perhaps|probably|likely|like|appears?|seems?|looks?)\b")
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?!\w|\.\d)")  # "0.958." and "4." at a sentence end count too


def class_info(class_name: str) -> dict:
    classes = prompts.load("classes")
    key = class_name.strip().lower().replace(" ", "_")
    return classes.get(key) or {**classes["object"], "name": class_name.strip() or "object"}


def facts(detection: Detection) -> dict:
    """Everything a template may mention, as strings."""
    info = class_info(detection.class_name)
    templates = prompts.load("answers")
    positions = _unique(region.position for region in detection.regions)
    return {
        "class_name": info["name"],
        "position": positions[0] if positions else "center",
        "positions": _join(positions),
        "count": str(len(detection.regions)),
        "score": f"{detection.score:.3f}",
        "threshold": f"{detection.threshold:.3f}",
        "confidence": _confidence_word(detection.confidence, templates["confidence_words"]),
        "defect": info["defect"],
        "normal": info["normal"],
        "area": f"{area_percent(detection):.1f}%",
        "mode": templates["mode"][detection.mode].format(n_refs=detection.n_references),
    }


def area_percent(detection: Detection) -> float:
    """Share of the image the regions cover, in percent, never stated as 0."""
    return 100 * max(sum(region.area_fraction for region in detection.regions), 0.001)


def facts_sentence(detection: Detection) -> str:
    """One line of facts for the LLM's system prompt."""
    f = facts(detection)
    if detection.anomalous and is_whole_surface(detection):
        where = prompts.load("answers")["where"]["whole"].format(**f)
        return f"ANOMALOUS. {where} Score {f['score']} above threshold {f['threshold']}."
    if detection.anomalous:
        return (f"ANOMALOUS. Anomalous areas: {f['count']}, at the {f['positions']}. Score {f['score']} "
                f"above threshold {f['threshold']}. Typical defects: {f['defect']}.")
    return f"NORMAL. No anomalous area. Score {f['score']} below threshold {f['threshold']}. A normal part is {f['normal']}."


def grounded_answer(intent: str, detection: Detection | None, follow_up: bool = False) -> str:
    """The deterministic answer for an intent. The verdict sentence opens the first answer about an
    image; follow-ups ('where exactly?') go straight to what was asked instead of repeating it."""
    templates = prompts.load("answers")
    if intent in ("greeting", "thanks", "help", "off_topic"):
        return templates[intent]
    if detection is None:
        return templates["no_image"]
    f = facts(detection)
    verdict = "yes" if detection.anomalous else "no"
    parts = []
    if intent == "judgement" or (intent in ("describe", "where") and not follow_up):
        parts.append(templates["judgement"][verdict])
    if intent in ("judgement", "where"):
        parts.append(_where(templates, detection))
    if intent == "describe":
        parts.append(templates["describe"][verdict])
        if detection.anomalous:
            parts.append(_where(templates, detection))
    if intent in ("confidence", "count", "advice"):
        parts.append(templates[intent][verdict])
    return " ".join(part.format(**f) for part in parts)


def closing_note(intent: str, detection: Detection | None, follow_up: bool = False) -> str:
    """The sentence that closes a verdict, confidence or advice answer whose threshold the engine
    could only estimate, after anything the LLM added; else ''."""
    if intent in ("confidence", "advice") or (intent == "judgement" and not follow_up):
        return threshold_note(detection)
    return ""


def threshold_note(detection: Detection | None) -> str:
    """Why the verdict's threshold is only an estimate and what would measure it; '' when measured."""
    if detection is None or not detection.threshold_estimated:
        return ""
    return prompts.load("answers")["zero_shot_threshold" if detection.mode == "zero-shot" else "estimated_threshold"]


def kind_note(intent: str, detection: Detection | None, message: str) -> str:
    """After a yes to "Is there a crack?": the engine finds where a part differs, not which kind of
    defect it is, so the yes must not read as a confirmed crack; else ''."""
    if intent != "judgement" or detection is None or not detection.anomalous:
        return ""
    if not defect_type_pattern().search(message.lower()):
        return ""
    return prompts.load("answers")["kind_unknown"].format(**facts(detection))


def _where(templates: dict, detection: Detection) -> str:
    if not detection.anomalous:
        return templates["where"]["none"]
    if is_whole_surface(detection):
        return templates["where"]["whole"]
    return templates["where"]["one" if len({r.position for r in detection.regions}) <= 1 else "many"]


def is_whole_surface(detection: Detection) -> bool:
    """Flagged by texture statistics alone: one region, the whole image (see engine.anomalous_regions)."""
    return [r.position for r in detection.regions] == [prompts.whole_position()]


def lead_sentence(intent: str, detection: Detection | None, follow_up: bool = False) -> str:
    """What the LLM's reply is forced to begin with, so its continuation starts from the right verdict."""
    if detection is None or intent not in JUDGEMENT_INTENTS:
        return ""
    return grounded_answer(intent, detection, follow_up).split(". ")[0].rstrip(".") + "."


def agrees(text: str, detection: Detection) -> bool:
    """False when generated text contradicts the verdict, names a wrong position, states a number or
    a kind of defect the engine did not find, or degenerates."""
    if is_degenerate(text) or not states_true_numbers(text, detection) or names_defect_type_as_fact(text):
        return False
    says_no = bool(NO_PATTERN.search(text)) and not detection.anomalous
    lowered = text.lower()
    if detection.anomalous and NEGATION.search(lowered):
        return False
    if not detection.anomalous and (AFFIRMED_ANOMALY.search(lowered) or (YES_PATTERN.search(lowered) and not says_no)):
        return False
    mentioned = mentioned_positions(text)
    allowed = {region.position for region in detection.regions}
    return not mentioned or (detection.anomalous and mentioned <= _with_parts(allowed))


def states_true_numbers(text: str, detection: Detection) -> bool:
    """Every number in the text is the score, the threshold, the area, the count of areas or of
    references, to the digits it gives: a small LM copies the facts' shape with numbers of its own
    ("the threshold of 0.958" for 1.300, "found to be 4.", "above threshold 10%")."""
    true = (detection.score, detection.threshold, area_percent(detection), len(detection.regions), detection.n_references)
    for number in NUMBER.findall(text):
        digits = len(number.split(".")[1]) if "." in number else 0
        if not any(f"{value:.{digits}f}" == number for value in true):
            return False
    return True


def names_defect_type_as_fact(text: str) -> bool:
    """True when the text says which kind of defect it is ("The anomaly is a cut") without hedging:
    the engine finds where a part differs, not what kind of defect it is, so a kind is only a guess."""
    lowered = text.lower()
    return bool(defect_type_pattern().search(lowered)) and not HEDGE.search(lowered)


@lru_cache(maxsize=1)
def defect_type_pattern() -> re.Pattern:
    classes = prompts.load("classes")
    names = {name for info in classes.values() if isinstance(info, dict) for name in info.get("defect_types", [])}
    alternatives = "|".join(sorted((re.escape(name) for name in names), key=len, reverse=True))
    return re.compile(rf"\b({alternatives})(s|es|ed)?\b")


def mentioned_positions(text: str) -> set[str]:
    words = [word for row in prompts.position_grid() for word in row]
    lowered = text.lower()
    found = {word for word in words if re.search(rf"\b{word}\b", lowered)}
    return {word for word in found if not any(word != other and word in other for other in found)}


def _with_parts(positions: set[str]) -> set[str]:
    """'top left' also allows 'top' and 'left' on their own."""
    return positions | {part for position in positions for part in position.split()}


def is_degenerate(text: str) -> bool:
    words = re.findall(r"[a-zA-Z']+", text.lower())
    if len(words) < 3:
        return True
    if sum(ch.isascii() for ch in text) < 0.9 * len(text):
        return True
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return len(trigrams) > 3 and len(set(trigrams)) < 0.7 * len(trigrams)


def _confidence_word(value: float, table: list) -> str:
    for floor, word in table:
        if value >= floor:
            return word
    return table[-1][1]


def _unique(items) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return items[0] if items else ""
    return ", ".join(items[:-1]) + " and " + items[-1]
