"""How often the embedded language model's sentences survive the agreement check (answer.agrees).

For bank questions of the intents the model adds to (answer.JUDGEMENT_INTENTS), about real MIT
textile images (conformal-clip-data: two local defects and one normal image, two normal references), the
model writes after the grounded lead sentence as in the app. Counted: its complete sentences, those
`agrees` accepts, answers where at least one sentence is kept (the first ones up to the first that
disagrees), and answers where the kept words also say something new and so are shown.

    .venv/bin/python -m eval.llm_agreement [--per-intent 2] [--output llm_agreement.json]

Loading costs ~10 s; each answer a few seconds on one CPU thread.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

QUESTION_BANK = Path(__file__).resolve().parents[1] / "tests" / "data" / "inspector_questions.json"


def bank_questions(intents: tuple[str, ...], per_intent: int) -> list[tuple[str, str]]:
    """(intent, question): the first `per_intent` bank questions labelled with each intent alone."""
    entries = json.loads(QUESTION_BANK.read_text(encoding="utf-8"))["questions"]
    chosen = []
    for intent in intents:
        chosen += [(intent, e["question"]) for e in entries if e["intents"] == [intent]][:per_intent]
    return chosen


def textile_cases() -> tuple[list[Path], list[Path]]:
    """Two local defects and a normal image the engine passes against the two references."""
    import conformal_clip_data as ccd

    nominal = sorted(Path(ccd.nominal_dir()).glob("*.jpg"))
    local = sorted(Path(ccd.local_dir()).glob("*.jpg"))
    return [local[1], local[5], nominal[11]], [nominal[-1], nominal[-2]]


def measure(per_intent: int = 2, max_new_tokens: int = 60) -> dict:
    from assistant import answer as grounding
    from assistant.assistant import Assistant, first_agreeing_sentences, repeats
    from assistant.images import load_image
    from assistant.question import read_question

    started = time.time()
    assistant = Assistant("embedded").load()
    loaded_s = time.time() - started
    images, references = textile_cases()
    refs = [load_image(path) for path in references]
    counts = Counter()
    by_intent: dict[str, Counter] = {}
    examples = []
    for path in images:
        picture = load_image(path)
        detection = assistant.detect(picture, refs, "textile", None)
        for intent, question in bank_questions(grounding.JUDGEMENT_INTENTS, per_intent):
            asked = read_question(question, [], picture.size)
            reply = grounding.grounded_answer(intent, detection, False, asked)
            raw = assistant.llm_text(picture, detection, [], asked, intent, max_new_tokens)
            sentences = [s for s in re.split(r"(?<=[.!?])\s+", raw.strip()) if s.endswith((".", "!", "?"))]
            agreeing = [s for s in sentences if grounding.agrees(s, detection)]
            kept = first_agreeing_sentences(raw, detection)
            shown = bool(kept) and not repeats(kept, [reply])
            tally = by_intent.setdefault(intent, Counter())
            for counter in (counts, tally):
                counter.update(answers=1, sentences=len(sentences), agreeing=len(agreeing),
                               kept=bool(kept), shown=shown)
            examples.append({"image": path.name, "anomalous": detection.anomalous, "intent": intent,
                             "question": question, "model": raw, "kept": kept, "shown": shown})
    return {"answers": counts["answers"], "sentences": counts["sentences"],
            "agreeing_sentences_percent": _percent(counts["agreeing"], counts["sentences"]),
            "answers_with_kept_words_percent": _percent(counts["kept"], counts["answers"]),
            "answers_showing_model_words_percent": _percent(counts["shown"], counts["answers"]),
            "by_intent": {intent: {"answers": c["answers"], "agreeing_sentences_percent": _percent(c["agreeing"], c["sentences"]),
                                   "shown_percent": _percent(c["shown"], c["answers"])} for intent, c in by_intent.items()},
            "load_s": round(loaded_s, 1), "total_s": round(time.time() - started, 1), "examples": examples}


def _percent(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 1) if whole else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-intent", type=int, default=2, help="bank questions per intent (default 2)")
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--output", type=Path, help="write the full result (with every answer) as JSON here")
    args = parser.parse_args(argv)
    if args.per_intent < 1:
        print("error: --per-intent must be at least 1", file=sys.stderr)
        return 2
    result = measure(args.per_intent, args.max_new_tokens)
    if args.output:
        args.output.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
