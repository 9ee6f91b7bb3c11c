"""How label-free threshold rules place the verdict: each set's test images scored against K
references per seed, with the held-out normal scores those references produced, and the balanced
accuracy of the verdict under each rule.

A rule turns the held-out normal scores (in units of their highest, so the shipped rule "margin x
the highest" is `max` at 1.0) into a threshold; the scores and the rules are compared offline, so
one run measures every rule on the same images.

    .venv/bin/python -m eval.threshold_rules --split dev --shots 1,4,16,64 --seeds 3 \\
        --output docs/eval/threshold_rules_dev.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from assistant.checkpoint import save_json
from assistant.data import discover
from assistant.data.datasets import open_image
from assistant.engine import AnomalyEngine

from . import metrics
from .evaluate import draw_references, encode_tests, machine_description
from .protocol import DEFAULT_SOURCES, base_category, select

# (name, threshold from the held-out normal scores s, which are in units of their max)
RULES = {
    **{f"max x {m:g}": (lambda s, m=m: m * s.max()) for m in (0.8, 0.9, 0.95, 1.0, 1.1, 1.2, 1.3, 1.5)},
    **{f"mean + {k:g} std": (lambda s, k=k: s.mean() + k * s.std()) for k in (1, 2, 3)},
    **{f"quantile {q:g}": (lambda s, q=q: float(np.quantile(s, q))) for q in (0.7, 0.75, 0.8, 0.85, 0.9, 0.95)},
}


def scored_runs(engine: AnomalyEngine, data: list[str], categories: list[str] | None, which: str,
                shots: list[int], seeds: int) -> list[dict]:
    """For each set, number of references and seed: labels, test scores, held-out normal scores and
    the shipped threshold, all in the references' units."""
    runs = []
    for split in (select(s, which) for root in data for s in discover(root, categories)):
        name = base_category(split.name).replace("_", " ")
        tests = encode_tests(engine, split, name, 8, sys.stderr.isatty())
        labels = np.array([sample.label for sample in split.test])
        for k in shots:
            for seed in range(1 if k >= 64 else seeds):
                references = engine.references([open_image(p) for p in draw_references(split, k, seed)], name, seed)
                # Rounded here, not on writing, so the table and a re-read of the stored runs agree.
                scores = np.round([float(engine.assess(t.encoded, references, name, t.text_map)[1][0]) for t in tests], 5)
                runs.append({"set": split.name, "shots": k, "seed": seed, "labels": labels, "scores": scores,
                             "normal_scores": np.round(np.asarray(references.normal_scores, np.float64), 5),
                             "threshold": references.threshold, "estimated": references.threshold_estimated})
                print(f"{split.name} {k} refs seed {seed}: shipped verdict "
                      f"{100 * metrics.balanced_accuracy(labels, scores > references.threshold):.1f} %", flush=True)
    return runs


def rule_table(runs: list[dict]) -> dict:
    """Balanced accuracy, true-positive and true-negative rate of every rule, per set and shots
    (mean over seeds, in percent), beside the shipped threshold's."""
    table: dict = {}
    for run in runs:
        labels, scores = run["labels"], run["scores"]
        thresholds = {"shipped": run["threshold"], **{name: rule(run["normal_scores"]) for name, rule in RULES.items()}}
        cell = table.setdefault(run["set"], {}).setdefault(str(run["shots"]), {})
        for name, threshold in thresholds.items():
            flagged = scores > threshold
            entry = cell.setdefault(name, {"verdict": [], "tpr": [], "tnr": []})
            entry["verdict"].append(metrics.balanced_accuracy(labels, flagged))
            entry["tpr"].append(float(flagged[labels == 1].mean()))
            entry["tnr"].append(float((~flagged[labels == 0]).mean()))
    for cells in table.values():
        for rules in cells.values():
            for name, entry in rules.items():
                rules[name] = {key: round(100 * float(np.mean(values)), 1) for key, values in entry.items()}
    return table


def _plain(run: dict) -> dict:
    """A run as JSON, arrays as lists (rules can be re-read without rescoring)."""
    return {key: value.tolist() if isinstance(value, np.ndarray) else value for key, value in run.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", help="a dataset folder or 'conformal-clip-data' (repeatable)")
    parser.add_argument("--category", action="append", default=None)
    parser.add_argument("--split", default="dev", choices=("all", "dev", "holdout"))
    parser.add_argument("--shots", default="1,4,16,64")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    engine = AnomalyEngine("embedded")
    shots = [int(k) for k in args.shots.split(",")]
    data = args.data or list(DEFAULT_SOURCES)
    runs = scored_runs(engine, data, args.category, args.split, shots, args.seeds)
    save_json({"config": {"data": data, "split": args.split, "shots": shots, "seeds": args.seeds,
                          "preset": "embedded", "machine": machine_description()},
               "rules": rule_table(runs), "runs": [_plain(run) for run in runs]}, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
