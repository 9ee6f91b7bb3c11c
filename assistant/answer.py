"""Grounded answers: facts from the engine's Detection, sentences from prompts/answers.json, and a
check that whatever the LLM writes agrees with those facts."""
from __future__ import annotations

import re
from functools import lru_cache

from . import prompts
from .measure import format_length, format_number, largest_region, region_size
from .question import Question, is_yes_no_question, polarity
from .result import Detection

NEGATION = re.compile(r"\b(no|not|without|isn't|is not|nothing|never)\b(\s+\w+){0,2}\s+(anomal|defect|damage|flaw|abnormal)")
JUDGEMENT_INTENTS = ("judgement", "where", "describe", "confidence", "count", "advice")  # the LLM adds to these
CHAT_INTENTS = ("greeting", "thanks", "help", "off_topic")
# A first question about an image in these intents gets the verdict before what it asked
OPENED_WITH_VERDICT = ("where", "describe", "size", "compare", "cause", "explain")
MAX_REGIONS_LISTED = 3
HEATMAP_WORDS = re.compile(r"\b(heat ?maps?|colou?rs?|overlay|red|blue|yellow|boxe?s?|boxed|map)\b")
YES_PATTERN = re.compile(r"\b(yes|anomal(y|ies|ous)(?! score)|defect(s|ive)?|damaged?|flaw(ed|s)?|abnormal)\b", re.I)
NO_PATTERN = re.compile(r"\b(no anomal\w*|not? (any )?(anomal\w*|defect\w*|damage\w*)|normal|flawless|looks fine|no)\b", re.I)
# "The anomaly is a normal part": a sentence about an anomaly's nature or place claims there is one
AFFIRMED_ANOMALY = re.compile(r"\b(the|this|that|an?)\s+(anomal\w*|defect\w*|flaw\w*|damage)\s+(is|are|was|looks|appears|seems|covers|lies|sits)\b")
HEDGE = re.compile(r"\b(such as|may|might|could|possibly|perhaps|probably|likely|like|appears?|seems?|looks?)\b")
# "I am not sure if it is normal or abnormal" beside the stated confidence: the engine's score says how sure
UNSURE = re.compile(r"\b(not (sure|certain)|unsure|uncertain|(do not|don't|cannot|can't) (know|say|tell))\b")
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
        "n_refs": str(detection.n_references),
        "width": str(detection.image_size[0]),
        "height": str(detection.image_size[1]),
        "compared_with": templates["compared_with"][detection.mode],
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


def grounded_answer(intent: str, detection: Detection | None, follow_up: bool = False,
                    question: Question | None = None) -> str:
    """The deterministic answer for an intent. The verdict sentence opens the first answer about an
    image; follow-ups ('where exactly?') go straight to what was asked instead of repeating it.
    `question` carries the message (which way round a yes/no question is), the scale and size limit
    the user gave, and whether the user set the threshold."""
    templates = prompts.load("answers")
    if intent in CHAT_INTENTS:
        return templates[intent]
    if detection is None:
        return templates["unsupported_no_image" if intent == "unsupported" else "no_image"]
    question = question or Question(follow_up=follow_up)
    follow_up = follow_up or question.follow_up
    f = facts(detection)
    parts = []
    if intent in OPENED_WITH_VERDICT and not follow_up:
        parts.append(templates["statement"][_verdict(detection)].format(**f))
    parts += ANSWERS.get(intent, _judgement)(detection, question, templates, f)
    return " ".join(parts)


def _verdict(detection: Detection) -> str:
    return "yes" if detection.anomalous else "no"


def verdict_sentence(detection: Detection, message: str) -> str:
    """The verdict worded for the question: 'Yes, there is an anomaly' to "Is it damaged?", 'No, there
    is an anomaly' to "Is it OK?", 'There is an anomaly' to "Good or bad?"."""
    templates, f = prompts.load("answers"), facts(detection)
    side = polarity(message)
    if side is None:
        return templates["statement"][_verdict(detection)].format(**f)
    return _reply(side == "bad" and detection.anomalous or side == "good" and not detection.anomalous,
                  detection.anomalous, templates, f)


def _reply(says_yes: bool, anomalous: bool, templates: dict, f: dict) -> str:
    """A yes or a no that states the verdict in the same breath, so neither can be read alone."""
    group = "judgement" if says_yes == anomalous else "acceptance"
    return templates[group]["yes" if anomalous else "no"].format(**f)


def _judgement(detection, question, templates, f) -> list[str]:
    return [verdict_sentence(detection, question.message), _where(templates, detection).format(**f)]


def _where_answer(detection, question, templates, f) -> list[str]:
    parts = [_where(templates, detection).format(**f)]
    if detection.anomalous and not is_whole_surface(detection):
        boxes = [templates["box"].format(position=r.position, x0=r.box[0], x1=r.box[2], y0=r.box[1], y1=r.box[3])
                 for r in detection.regions[:MAX_REGIONS_LISTED]]
        parts.append(templates["boxes"].format(**{**f, "boxes": _join(boxes)}))
    return parts


def _describe(detection, question, templates, f) -> list[str]:
    parts = [templates["describe"][_verdict(detection)].format(**f)]
    if detection.anomalous:
        parts.append(_where(templates, detection).format(**f))
    return parts


def _size(detection, question, templates, f) -> list[str]:
    size = templates["size"]
    if not detection.anomalous:
        return [size["none"].format(**f)]
    if is_whole_surface(detection):
        return [size["whole"].format(**f)]
    regions = [_region_size_text(region, question.mm_per_pixel, size)
               for region in detection.regions[:MAX_REGIONS_LISTED]]
    parts = [_capitalised(size["regions"].format(regions="; ".join(regions)))]
    if question.mm_per_pixel:
        parts.append(size["scale"].format(scale=format_number(question.mm_per_pixel), source=question.scale_source))
    else:
        parts.append(size["no_scale"])
    if question.limit:
        parts.append(_limit_sentence(detection, question, templates, f)[0])
    parts.append(size["approx"])
    return parts


def _region_size_text(region, mm_per_pixel, size: dict) -> str:
    measured = region_size(region, mm_per_pixel)
    mm = ""
    if mm_per_pixel:
        mm = size["mm"].format(w_mm=format_number(measured.width_px * mm_per_pixel),
                               h_mm=format_number(measured.height_px * mm_per_pixel))
    return size["region"].format(position=region.position, w=measured.width_px, h=measured.height_px, mm=mm,
                                 share=_share(region.area_fraction))


def _limit_sentence(detection, question, templates, f) -> tuple[str, bool | None]:
    """How the largest area compares with the user's limit, and whether it is within it (None: cannot tell)."""
    limit = templates["limit"]
    if is_whole_surface(detection):
        return limit["whole"].format(**f), None
    region = largest_region(detection)
    length = region_size(region, question.mm_per_pixel).length(question.limit.unit)
    if length is None:
        return limit["no_scale"].format(limit=question.limit.text()), None
    within = length <= question.limit.value
    sentence = limit["within" if within else "over"].format(position=region.position, limit=question.limit.text(),
                                                            length=format_length(length, question.limit.unit))
    return sentence, within


def _advice(detection, question, templates, f) -> list[str]:
    advice = templates["advice"]
    parts, within = [], None
    if detection.anomalous and question.limit:
        sentence, within = _limit_sentence(detection, question, templates, f)
        parts.append(sentence)
    reject = detection.anomalous and within is not True
    side = polarity(question.message) if is_yes_no_question(question.message) else None
    if side is not None:
        parts.insert(0, _reply(reject if side == "bad" else not reject, detection.anomalous, templates, f))
    if not detection.anomalous:
        parts.append(advice["no"])
    elif within is None:
        parts.append(advice["yes"].format(**f))
        if not question.limit and not is_whole_surface(detection):
            parts.append(templates["limit"]["ask"])
    else:
        parts.append(advice["within" if within else "over"].format(**f))
    return parts


def _compare(detection, question, templates, f) -> list[str]:
    """In words: where the image differs from the references and by how much. The picture of the
    matching reference areas (visual evidence) is shown beside these words, not instead of them."""
    compare = templates["compare"]
    if detection.mode == "zero-shot":
        return [compare["zero-shot"].format(**f), _where(templates, detection).format(**f)]
    if not detection.anomalous:
        return [compare["no"].format(**f)]
    return [compare["whole" if is_whole_surface(detection) else "yes"].format(**f)]


def _cause(detection, question, templates, f) -> list[str]:
    cause = templates["cause"]
    if not detection.anomalous:
        return [cause["no"].format(**f), cause["retake_no"]]
    if is_whole_surface(detection):
        parts = [cause["whole"].format(**f)]
    else:
        parts = [cause["yes"].format(**f), cause["local"]]
    return parts + [cause["retake"][detection.mode]]


def _confidence(detection, question, templates, f) -> list[str]:
    parts = [templates["confidence"][_verdict(detection)].format(**f)]
    source = templates["threshold_source"]
    if question.threshold_set_by_user:
        parts.append(source["user"].format(**f))
    elif detection.mode == "few-shot" and not detection.threshold_estimated:
        parts.append(source["measured"].format(**f))
    return parts  # an estimated threshold is explained by the closing note


def _explain(detection, question, templates, f) -> list[str]:
    """Why the verdict, how the engine compares, and what the heatmap shows; a question about the
    heatmap gets the heatmap first."""
    explain = templates["explain"]
    key = "no" if not detection.anomalous else "whole" if is_whole_surface(detection) else "yes"
    heatmap = explain["heatmap_none" if not detection.anomalous else "heatmap_whole" if key == "whole" else "heatmap"].format(**f)
    reason = [explain[key].format(**f), explain["method"][detection.mode]]
    return [heatmap, *reason] if HEATMAP_WORDS.search(question.message.lower()) else [*reason, heatmap]


def _count(detection, question, templates, f) -> list[str]:
    return [templates["count"][_verdict(detection)].format(**f)]


def _unsupported(detection, question, templates, f) -> list[str]:
    key = "no" if not detection.anomalous else "whole" if is_whole_surface(detection) else "yes"
    summary = templates["unsupported_summary"][key].format(**f)
    return [templates["unsupported"].format(summary=summary)]


ANSWERS = {"judgement": _judgement, "where": _where_answer, "describe": _describe, "size": _size,
           "compare": _compare, "cause": _cause, "confidence": _confidence, "explain": _explain,
           "count": _count, "advice": _advice, "unsupported": _unsupported}


def _share(fraction: float) -> str:
    percent = 100 * fraction
    return f"{percent:.1f}%" if percent >= 0.1 else "under 0.1%"


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


WEAK_MATCH = 0.5  # design, not tuned: turned tires matched at 0.42 were off by half the region's size


def evidence_note(intent: str, detection: Detection | None, areas: list | None) -> str:
    """After a comparison with the references: where the strongest region's place is on a reference
    (`areas`: one evidence.ReferenceArea or None per region), so the words point at the picture."""
    if intent != "compare" or detection is None or not detection.anomalous or not areas or areas[0] is None:
        return ""
    area = areas[0]
    templates = prompts.load("answers")["compare"]
    fields = {"reference": area.reference + 1, "position": area.position, "box": ", ".join(str(v) for v in area.box),
              "similarity": f"{area.similarity:.2f}"}
    return templates["evidence" if area.similarity >= WEAK_MATCH else "evidence_weak"].format(**fields)


def closing_note(intent: str, detection: Detection | None, follow_up: bool = False) -> str:
    """What closes a verdict, confidence, advice or "why" answer, after anything the LLM added: that
    the photo was taken differently from the references, and that the threshold is only an
    estimate, where either holds; the capture change also answers "could it be the lighting?"."""
    if intent in ("confidence", "advice", "explain") or (intent == "judgement" and not follow_up):
        return " ".join(note for note in (capture_note(detection), threshold_note(detection)) if note)
    return capture_note(detection) if intent == "cause" else ""


def capture_note(detection: Detection | None) -> str:
    """The photo's capture change against its references (assistant/capture.py), or ''."""
    if detection is None or detection.capture is None:
        return ""
    change = detection.capture
    return prompts.load("answers")["capture"][change.change].format(
        class_name=facts(detection)["class_name"], ratio=f"{change.ratio:.1f}", percent=f"{100 * change.ratio:.0f} %")


def threshold_note(detection: Detection | None) -> str:
    """Why the verdict's threshold is only an estimate and what would measure it; '' when measured."""
    if detection is None or not detection.threshold_estimated:
        return ""
    return prompts.load("answers")["zero_shot_threshold" if detection.mode == "zero-shot" else "estimated_threshold"]


def kind_note(intent: str, detection: Detection | None, message: str, kinds: list | None = None) -> str:
    """After a yes to "Is there a crack?": the engine finds where a part differs, not which kind of
    defect it is, so the yes must not read as a confirmed crack; else ''. With the user's labelled
    defect examples (`kinds`: one defect_kinds.KindMatch per region) the note says which of the
    user's kinds each region looks most like instead, after a description too."""
    if detection is None or not detection.anomalous:
        return ""
    if kinds and (intent == "describe" or (intent == "judgement" and defect_type_pattern().search(message.lower()))):
        return kind_sentences(detection, kinds)
    if intent != "judgement" or not defect_type_pattern().search(message.lower()):
        return ""
    return prompts.load("answers")["kind_unknown"].format(**facts(detection))


def kind_sentences(detection: Detection, kinds: list) -> str:
    """"It looks most like a *cut* (closest to 3 of your 4 cut examples)." per region (the first
    MAX_REGIONS_LISTED), each region named by its position when there are several, then the hint
    that a kind matched from the engine's own region is right far less often than one from a mask
    (docs/method.md, "Defect kinds from labelled examples")."""
    templates = prompts.load("answers")["defect_kind"]
    sentences = []
    several = len(kinds) > 1
    for region, match in list(zip(detection.regions, kinds))[:MAX_REGIONS_LISTED]:
        if match.kind is None:
            sentence = templates["none"].format(kinds=_join(sorted(match.kinds_given)), nearest=match.nearest_kind)
        else:
            sentence = templates["one" if match.n_examples > 1 else "single"].format(
                kind=match.kind, closest=match.closest, n=match.n_examples)
        sentences.append(templates["at"].format(position=region.position, sentence=sentence[:1].lower() + sentence[1:])
                         if several else sentence)
    return " ".join([*sentences, templates["hint"]]) if sentences else ""


def _where(templates: dict, detection: Detection) -> str:
    if not detection.anomalous:
        return templates["where"]["none"]
    if is_whole_surface(detection):
        return templates["where"]["whole"]
    return templates["where"]["one" if len({r.position for r in detection.regions}) <= 1 else "many"]


def is_whole_surface(detection: Detection) -> bool:
    """Flagged by texture statistics alone: one region, the whole image (see engine.anomalous_regions)."""
    return [r.position for r in detection.regions] == [prompts.whole_position()]


def lead_sentence(intent: str, detection: Detection | None, follow_up: bool = False,
                  question: Question | None = None) -> str:
    """What the LLM's reply is forced to begin with, so its continuation starts from the right verdict."""
    if detection is None or intent not in JUDGEMENT_INTENTS:
        return ""
    return grounded_answer(intent, detection, follow_up, question).split(". ")[0].rstrip(".") + "."


def agrees(text: str, detection: Detection) -> bool:
    """False when generated text contradicts the verdict, names a wrong position, states a number or
    a kind of defect the engine did not find, doubts the verdict, or degenerates."""
    if is_degenerate(text) or not states_true_numbers(text, detection) or names_defect_type_as_fact(text):
        return False
    if UNSURE.search(text.lower()):
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
