"""The whole benchmark matrix in one command: sets x shots x capture conditions, JSON + Markdown.

Each set is encoded once per condition and scored for every number of shots, so the matrix costs
about (conditions x encoding) + (shots x seeds x scoring) per set: hours on a 2-core CPU. The JSON
and the table are rewritten after every row (`"complete": false` until the last), and `resume`
keeps the rows an interrupted run of the same settings wrote, so a stopped run loses one row at most.
"""
from __future__ import annotations

from pathlib import Path

import torch

import json

from assistant.checkpoint import atomic_write_bytes, save_json
from assistant.config import load_preset
from assistant.engine import AnomalyEngine

from .evaluate import PIXEL_EVAL_SIDE, encode_tests, every_split, in_frame, machine_description, score_tests
from . import perturb
from .protocol import base_category, family_of

# Capture conditions: what a test image goes through before it is scored (eval/perturb.py).
CONDITIONS = {"clean": [], "pose": ["rotate", "shift"], "capture": ["light", "blur", "jpeg", "noise"]}
DEFAULT_SHOTS = (1, 4, 64)
MANY_SHOTS = 16  # at this many references and more, `many_shot_seeds` seeds (a bank build costs a minute)


def run_matrix(sources: list[str], shots: list[int], seeds: int, many_shot_seeds: int, conditions: list[str],
               which: str, output: Path, preset: str = "embedded", checkpoint_dir: str | None = None,
               logical_proxy: bool = True, progress: bool = False, overrides: dict | None = None,
               resume: bool = False, part_proxy: bool = True) -> dict:
    """Evaluate every set found in `sources` (and, with `logical_proxy`, its logical proxy; with
    `part_proxy`, the part proxy of each surface set) and write `output` (JSON) beside
    `output.with_suffix('.md')` (the table), after every row; with `resume`, the rows `output`
    already holds from a run measured the same way are kept, not measured again."""
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown condition {', '.join(unknown)}; choose from {', '.join(CONDITIONS)}")
    config = load_preset(preset, overrides)
    engine = AnomalyEngine(config, checkpoint_dir)
    splits = every_split(sources, which, logical_proxy, part_proxy)
    report = {"config": {"sources": sources, "shots": shots, "seeds": seeds, "many_shot_seeds": many_shot_seeds,
                         "conditions": {c: CONDITIONS[c] for c in conditions}, "split": which,
                         "preset": config.get("name", preset), "text_map_trained": engine.text_map.trained,
                         "perturb_version": perturb.VERSION,
                         "torch_threads": torch.get_num_threads(), "machine": machine_description(),
                         "pixel_eval_side": PIXEL_EVAL_SIDE},
              "complete": False, "rows": []}
    done = earlier_rows(output, report["config"]) if resume else {}
    for split in splits:
        name = base_category(split.name).replace("_", " ")
        for condition in conditions:
            wanted = [k for k in shots if k <= len(split.train_good)]
            if all((split.name, condition, k) in done for k in wanted):
                report["rows"] += [done[(split.name, condition, k)] for k in wanted]
                continue
            kept_split, tests, left_out = in_frame(split, encode_tests(engine, split, name, 8, progress, CONDITIONS[condition]))
            for k in wanted:
                row = done.get((split.name, condition, k)) or measure_row(engine, kept_split, tests, condition, k, name,
                                                                          many_shot_seeds if k >= MANY_SHOTS else seeds, progress)
                row["defects_out_of_frame"] = left_out
                report["rows"].append(row)
                write(report, output)
    report["complete"] = True
    write(report, output)
    return report


def measure_row(engine: AnomalyEngine, split, tests, condition: str, shots: int, name: str, seeds: int,
                progress: bool) -> dict:
    result = score_tests(engine, split, tests, shots, list(range(seeds)), name, progress)[split.name]
    print(f"{split.name:<24}{condition:<9}{shots:>4} shots  " + "  ".join(
        f"{key} {_cell(result[key])}" for key in ("image_auroc", "pixel_auroc", "judgement_accuracy")), flush=True)
    return {"set": split.name, "family": family_of(split.name), "condition": condition, "shots": shots,
            "seeds": seeds, **result}


# What a row's figures depend on beyond its set, condition and number of shots: a resumed row must
# match on all of them. Which sets and shots a run covers (sources, proxies, shots) may differ, so a
# run can be extended by a set or a number of shots without measuring the rest again.
MEASURED_BY = ("seeds", "many_shot_seeds", "split", "preset", "text_map_trained", "pixel_eval_side", "perturb_version")


def earlier_rows(output: Path, config: dict) -> dict[tuple[str, str, int], dict]:
    """Rows of an earlier run written to `output` and measured as this run measures, by (set,
    condition, shots); none when the file is missing, unreadable or measured otherwise."""
    try:
        earlier = json.loads(Path(output).read_text(encoding="utf-8"))
        before = earlier["config"]
        rows = earlier["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    now = json.loads(json.dumps(config))
    if any(before.get(key) != now.get(key) for key in MEASURED_BY):
        return {}
    same_condition = {name for name, changes in now["conditions"].items() if before.get("conditions", {}).get(name) == changes}
    return {(row["set"], row["condition"], row["shots"]): row for row in rows if row.get("condition") in same_condition}


def write(report: dict, output: Path) -> None:
    save_json(report, output)
    atomic_write_bytes(Path(output).with_suffix(".md"), markdown(report).encode("utf-8"))


def _cell(value: dict) -> str:
    return "n/a" if value["mean"] is None else f"{value['mean']:.1f} ± {value['std']:.1f}"


def markdown(report: dict) -> str:
    """One table: a row per set, condition and number of shots."""
    config = report["config"]
    unfinished = [] if report.get("complete", True) else ["", "(Unfinished run: the rows measured so far.)"]
    lines = [f"Split `{config['split']}`, preset `{config['preset']}`; {config['seeds']} seeds below "
             f"{MANY_SHOTS} shots, {config['many_shot_seeds']} from {MANY_SHOTS}; figures in percent, mean ± std over seeds.",
             "n: images scored; \"+ k out\": anomalous images left out because the capture change cut their defect out of the frame.",
             "", "| set | family | condition | shots | image AUROC | pixel AUROC | AUPRO | verdict (balanced acc.) | n |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        cells = [_cell(row[key]) for key in ("image_auroc", "pixel_auroc", "aupro", "judgement_accuracy")]
        out = row.get("defects_out_of_frame") or 0
        lines.append(f"| {row['set']} | {row['family'] or '-'} | {row['condition']} | {row['shots']} | "
                     + " | ".join(cells) + f" | {row['n_test']}{f' + {out} out' if out else ''} |")
    return "\n".join(lines + unfinished) + "\n"
