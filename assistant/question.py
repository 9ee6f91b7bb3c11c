"""What a message says beyond its intent: whether it is a yes/no question and which way round ("Is
it damaged?" wants yes for a defect, "OK to ship?" yes for a good part), and the scale and size
limit the user has given in it or earlier in the conversation. Word lists are data
(prompts/intents.json "polarity")."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from . import prompts
from .measure import Limit, latest, parse_limit, parse_scale

# A question that opens with one of these wants a yes or a no
AUXILIARIES = frozenset(
    "is isn't are aren't was wasn't were does doesn't do don't did can can't could should shall will won't would "
    "may might must has hasn't have haven't am".split())
WH_WORDS = frozenset("what what's whats where where's which why how how's who whose when".split())
# "the good sample" names the reference, not the verdict wanted: "Is there a defect compared with the good one?"
REFERENCE_PHRASE = re.compile(r"\b(the|my|our|your|known[- ]?)\s*good\s+(one|ones|reference|references|sample|samples|"
                              r"example|examples|image|images|photo|photos|picture|pictures|part|parts)\b")


@dataclass(frozen=True)
class Question:
    """The message and what it, or the conversation before it, tells the answer."""

    message: str = ""
    follow_up: bool = False
    mm_per_pixel: float | None = None
    scale_source: str = ""  # where the scale came from, said with any size in millimetres
    limit: Limit | None = None
    threshold_set_by_user: bool = False


def read_question(message: str, history: list[dict] | None, image_size: tuple[int, int],
                  mm_per_pixel: float | None = None, threshold_set_by_user: bool = False) -> Question:
    """A scale or limit in the message wins over one said earlier, and a said scale over the setting."""
    history = list(history or [])
    earlier = [turn["content"] for turn in reversed(history)
               if turn.get("role") == "user" and isinstance(turn.get("content"), str)]
    sources = prompts.load("answers")["scale_sources"]
    scale, source = parse_scale(message, image_size), sources["message"]
    if scale is None:
        scale, source = latest(lambda text: parse_scale(text, image_size), earlier), sources["conversation"]
    if scale is None and mm_per_pixel:
        scale, source = float(mm_per_pixel), sources["setting"]
    limit = parse_limit(message) or latest(parse_limit, earlier)
    follow_up = any(turn.get("role") == "assistant" for turn in history)
    return Question(message, follow_up, scale, source if scale else "", limit, threshold_set_by_user)


def polarity(message: str) -> str | None:
    """'bad' when a yes means a defect ("Is it damaged?", "Should I reject it?"), 'good' when a yes
    means a good part ("Is it OK?", "Can I ship it?"), None when the message is no yes/no question
    ("Where is it?") or offers both ("Pass or fail?"). The words of the question itself decide, those
    of the whole message when it has none ("We scrap anything over 2 mm. Does it?"). An empty
    message is the default question, "Is there any anomaly?"."""
    text = " ".join(message.lower().split())
    if not text:
        return "bad"
    asked = question_clause(text)
    if not is_yes_no_question(asked):
        return None
    side = _side(asked) or _side(text) or "bad"
    return None if side == "either" else side


def question_clause(text: str) -> str:
    """The last clause that ends with a question mark ("Reject above 2 mm: what should I do?" asks
    "what should I do?"), else the whole text."""
    asked = [clause.strip() for clause in re.findall(r"[^.!?:;]*\?", text) if clause.strip(" ?")]
    return asked[-1] if asked else text


def is_yes_no_question(text: str) -> bool:
    words = re.findall(r"[a-z']+", question_clause(text.lower()))
    if not words or words[0] in WH_WORDS:
        return False
    return words[0] in AUXILIARIES or text.rstrip().endswith("?")


def _side(text: str) -> str | None:
    text = REFERENCE_PHRASE.sub(" ", text)
    negated = _negated_bad_pattern()
    says_good = bool(_word_pattern("good").search(text) or negated.search(text))
    says_bad = bool(_word_pattern("bad").search(negated.sub(" ", text)))
    if says_good and says_bad and re.search(r"\bor\b(?! not\b)", text):
        return "either"
    return "good" if says_good else "bad" if says_bad else None


@lru_cache(maxsize=None)
def _word_pattern(side: str) -> re.Pattern:
    """Good words match whole ("ok" is not "okra"); bad words are stems ("damage" finds "damaged")."""
    words = prompts.load("intents")["polarity"][side]
    ending = r"\w*" if side == "bad" else r"\b"
    return re.compile(r"\b(" + "|".join(re.escape(word) for word in words) + r")" + ending)


@lru_cache(maxsize=None)
def _negated_bad_pattern() -> re.Pattern:
    """'free of defects', 'no damage', 'not broken': a bad word under a negation asks for a good part."""
    negations = prompts.load("intents")["polarity"]["negations"]
    bad = prompts.load("intents")["polarity"]["bad"]
    return re.compile(r"\b(" + "|".join(map(re.escape, negations)) + r")\s+(any\s+|obvious\s+|visible\s+)?("
                      + "|".join(map(re.escape, bad)) + r")\w*")
