"""The whole benchmark matrix in one command: sets x shots x capture conditions, JSON + Markdown.

Each set is encoded once per condition and scored for every number of shots, so the matrix costs
about (conditions x encoding) + (shots x seeds x scoring) per set.
"""
from __future__ import annotations

from pathlib import Path

import torch

from assistant.checkpoint import atomic_write_bytes, save_json
from assistant.config import load_preset
from assistant.engine import AnomalyEngine

from .evaluate import PIXEL_EVAL_SIDE, encode_tests, evaluation_splits, score_tests
from .protocol import base_category, family_of

# Capture conditions: what a test image goes through before it is scored (eval/perturb.py).
CONDITIONS = {"clean": [], "pose": ["rotate", "shift"], "capture": ["light", "blur", "jpeg", "noise"]}
DEFAULT_SHOTS = (1, 4, 64)
MANY_SHOTS = 16  # at this many references and more, `many_shot_seeds` seeds (a bank build costs a minute)


def run_matrix(sources: list[str], shots: list[int], seeds: int, many_shot_seeds: int, conditions: list[str],
               which: str, output: Path, preset: str = "embedded", checkpoint_dir: str | None = None,
               logical_proxy: bool = True, progress: bool = False, overrides: dict | None = None) -> dict:
    """Evaluate every set found in `sources` (and, with `logical_proxy`, its logical proxy) and write
    `output` (JSON) beside `output.with_suffix('.md')` (the table)."""
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown condition {', '.join(unknown)}; choose from {', '.join(CONDITIONS)}")
    config = load_preset(preset, overrides)
    engine = AnomalyEngine(config, checkpoint_dir)
    splits = [split for source in sources for split in evaluation_splits(source, None, which)]
    if logical_proxy:
        splits += [split for source in sources for split in evaluation_splits(source, None, which, logical_proxy=True)]
    rows = []
    for split in splits:
        name = base_category(split.name).replace("_", " ")
        for condition in conditions:
            tests = encode_tests(engine, split, name, 8, progress, CONDITIONS[condition])
            for k in shots:
                seed_list = list(range(many_shot_seeds if k >= MANY_SHOTS else seeds))
                if k > len(split.train_good):
                    continue
                result = score_tests(engine, split, tests, k, seed_list, name, progress)[split.name]
                rows.append({"set": split.name, "family": family_of(split.name), "condition": condition, "shots": k,
                             "seeds": len(seed_list), **result})
                print(f"{split.name:<24}{condition:<9}{k:>4} shots  " + "  ".join(
                    f"{key} {_cell(result[key])}" for key in ("image_auroc", "pixel_auroc", "judgement_accuracy")), flush=True)
    report = {"config": {"sources": sources, "shots": shots, "seeds": seeds, "many_shot_seeds": many_shot_seeds,
                         "conditions": {c: CONDITIONS[c] for c in conditions}, "split": which,
                         "preset": config.get("name", preset), "text_map_trained": engine.text_map.trained,
                         "torch_threads": torch.get_num_threads(), "pixel_eval_side": PIXEL_EVAL_SIDE},
              "rows": rows}
    save_json(report, output)
    atomic_write_bytes(Path(output).with_suffix(".md"), markdown(report).encode("utf-8"))
    return report


def _cell(value: dict) -> str:
    return "n/a" if value["mean"] is None else f"{value['mean']:.1f} ± {value['std']:.1f}"


def markdown(report: dict) -> str:
    """One table: a row per set, condition and number of shots."""
    config = report["config"]
    lines = [f"Split `{config['split']}`, preset `{config['preset']}`; {config['seeds']} seeds below "
             f"{MANY_SHOTS} shots, {config['many_shot_seeds']} from {MANY_SHOTS}; figures in percent, mean ± std over seeds.",
             "", "| set | family | condition | shots | image AUROC | pixel AUROC | AUPRO | verdict (balanced acc.) | n |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        cells = [_cell(row[key]) for key in ("image_auroc", "pixel_auroc", "aupro", "judgement_accuracy")]
        lines.append(f"| {row['set']} | {row['family'] or '-'} | {row['condition']} | {row['shots']} | "
                     + " | ".join(cells) + f" | {row['n_test']} |")
    return "\n".join(lines) + "\n"
