"""How often the capture check (`assistant/capture.py`) speaks up: on clean test photos (a false
alarm) and on photos put through each capture change of `eval/perturb.py` (a change caught), per
set, number of references and tolerance. No encoder runs: it reads photos only.

    python -m eval.capture_check --data ../shared/datasets --split dev --part-proxy --tolerances 1.5,2,2.5
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from assistant.capture import background_detail, capture_change, reference_details
from assistant.checkpoint import save_json

from . import perturb
from .evaluate import draw_references, every_split

CHANGES = ("light", "blur", "jpeg", "noise")


def details_of(split) -> dict[str, list[float | None]]:
    """Background detail of every test photo of `split`, clean and after each capture change."""
    out: dict[str, list[float | None]] = {"clean": [], **{name: [] for name in CHANGES}}
    for sample in split.test:
        image = Image.open(sample.path).convert("RGB")
        out["clean"].append(background_detail(image))
        for name in CHANGES:
            changed, _, _ = perturb.apply([name], image, None, perturb.key_of(sample.path))
            out[name].append(background_detail(changed))
    return out


def flag_rates(split, details: dict, shots: int, seeds: int, tolerance: float) -> dict[str, float | None]:
    """Percent of test photos flagged per condition, over seeds; None where no reading was made."""
    flagged: dict[str, list[bool]] = {condition: [] for condition in details}
    for seed in range(seeds):
        references = reference_details([Image.open(p) for p in draw_references(split, shots, seed)])
        if references is None:
            return {condition: None for condition in details}
        for condition, values in details.items():
            flagged[condition] += [capture_change(v, references, tolerance) is not None for v in values if v is not None]
    return {condition: round(100 * float(np.mean(f)), 1) if f else None for condition, f in flagged.items()}


def run(sources: list[str], which: str, shots: list[int], seeds: int, tolerances: list[float],
        logical_proxy: bool, part_proxy: bool) -> dict:
    rows = []
    for split in every_split(sources, which, logical_proxy, part_proxy):
        details = details_of(split)
        for k in shots:
            for tolerance in tolerances:
                rates = flag_rates(split, details, k, seeds, tolerance)
                rows.append({"set": split.name, "shots": k, "tolerance": tolerance, "flagged": rates})
                print(f"{split.name:<26}{k:>3} refs  tolerance {tolerance:<4g} " + "  ".join(
                    f"{c} {'-' if r is None else f'{r:.0f}'}" for c, r in rates.items()), flush=True)
    return {"config": {"sources": sources, "split": which, "shots": shots, "seeds": seeds,
                       "perturb_version": perturb.VERSION}, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", help="dataset root (repeatable)")
    parser.add_argument("--split", choices=("all", "dev", "holdout"), default="dev")
    parser.add_argument("--shots", default="1,4")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tolerances", default="2")
    parser.add_argument("--logical-proxy", action="store_true")
    parser.add_argument("--part-proxy", action="store_true")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    report = run(args.data or ["../shared/datasets"], args.split, [int(k) for k in args.shots.split(",")], args.seeds,
                 [float(t) for t in args.tolerances.split(",")], args.logical_proxy, args.part_proxy)
    if args.output:
        save_json(report, args.output)


if __name__ == "__main__":
    main()
