"""`anomaly-assistant` command line: eval, bench, ask, inspect, app, train.

Every user-facing problem becomes one line on stderr and exit code 2; no tracebacks.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EXIT_BAD_INPUT = 2


from .cli_support import add_model_args, one_line  # noqa: E402 - after the environment is set


class UserError(Exception):
    """Raised by commands for problems the user can fix; printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomaly-assistant", description="Industrial anomaly assistant")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="k-shot evaluation on MVTec-layout data")
    ev.add_argument("--data", required=True, help="dataset folder (MVTec layout), a folder of such folders, a good/bad folder, or 'conformal-clip-data'")
    ev.add_argument("--category", action="append", default=None, help="category subfolder to evaluate (repeatable)")
    ev.add_argument("--shots", type=int, default=1, help="normal references per seed; 0 = zero-shot (each image against itself, fused with the trained text map)")
    ev.add_argument("--seeds", type=int, default=5)
    ev.add_argument("--output", type=Path, default=None, help="results.json path")
    ev.add_argument("--csv", type=Path, default=None, help="per-image scores CSV path")
    ev.add_argument("--class-name", default=None, help="object name used in prompts (default: the category name)")
    ev.add_argument("--split-defects", action="store_true", help="also report each defect type against the good images")
    ev.add_argument("--image-size", type=int, default=None, help="override the encoder input size")
    ev.add_argument("--split", choices=("all", "dev", "holdout"), default="all",
                    help="test images to score: the fixed dev half (choose settings on it), the holdout half, or all (docs/protocol.md)")
    ev.add_argument("--perturb", default=None, metavar="NAME[,NAME]",
                    help="capture changes applied to test images only: rotate, shift, scale, light, blur, jpeg, noise")
    ev.add_argument("--logical-proxy", action="store_true",
                    help="evaluate each set's logical-anomaly proxy (missing, extra, turned, recoloured pieces made from its normal test images)")
    ev.add_argument("--part-proxy", action="store_true",
                    help="evaluate each surface set's part proxy (every photo placed as a part on a plain background at any angle)")
    ev.add_argument("--profile", default=None, metavar="NAME",
                    help="judge the test images against a saved profile (its references and threshold) instead of drawing --shots per seed")
    add_model_args(ev)

    matrix = sub.add_parser("matrix", help="the whole benchmark matrix: sets x shots x capture conditions -> JSON + Markdown")
    matrix.add_argument("--data", action="append", default=None,
                        help="dataset root (repeatable; default: ../shared/datasets and conformal-clip-data)")
    matrix.add_argument("--shots", default="1,4,64", help="comma-separated numbers of references (default 1,4,64)")
    matrix.add_argument("--seeds", type=int, default=5, help="seeds below 16 shots (default 5)")
    matrix.add_argument("--many-shot-seeds", type=int, default=2, help="seeds from 16 shots up (default 2)")
    matrix.add_argument("--conditions", default="clean,pose,capture",
                        help="clean; pose = rotate,shift; capture = light,blur,jpeg,noise (default: all three)")
    matrix.add_argument("--split", choices=("all", "dev", "holdout"), default="holdout")
    matrix.add_argument("--no-logical-proxy", action="store_true", help="skip the logical-anomaly proxies")
    matrix.add_argument("--no-part-proxy", action="store_true", help="skip the part proxies of surface sets")
    matrix.add_argument("--output", type=Path, default=Path("docs/eval/matrix.json"),
                        help="JSON path; the Markdown table goes beside it (.md); both are rewritten after every row")
    matrix.add_argument("--resume", action="store_true",
                        help="keep the rows --output holds from an earlier run measured the same way (seeds, split, preset): "
                             "an interrupted run continues, a run with more sets or shots measures only those")
    add_model_args(matrix)

    bench = sub.add_parser("bench", help="latency per stage for 1, 4, 64 references and each encoder backend, beside anomalib's PatchCore")
    bench.add_argument("--data", default=None, help="folder of images to benchmark on; an MVTec-layout folder gives queries "
                                                   "from test/ and references from train/good/ (default: synthetic textures)")
    bench.add_argument("--image-size", type=int, default=None)
    bench.add_argument("--shots", default="1,4,64", help="comma-separated numbers of references (default 1,4,64)")
    bench.add_argument("--backends", default="torch,onnx,onnx-int8,openvino", help="encoder backends to time (default: all four)")
    bench.add_argument("--repeats", type=int, default=3, help="timed passes over the query images (default 3)")
    bench.add_argument("--queries", type=int, default=8, help="query images (default 8)")
    bench.add_argument("--no-anomalib", action="store_true", help="skip anomalib's PatchCore (skipped anyway when not installed)")
    bench.add_argument("--json", type=Path, default=None, metavar="OUT",
                       help='write the figures as JSON ("detect_ms": decode to regions, first --shots; "anomalib_patchcore_ms")')
    bench.add_argument("--answer", metavar="IMAGE", default=None, help="instead: time full answers (map + LLM) for IMAGE")
    bench.add_argument("--reference", default=None, help="with --answer: a normal reference image")
    add_model_args(bench)

    for command in _extra_commands():
        command(sub)
    return parser


def _extra_commands():
    """Commands living in other modules register their own parsers (kept out of this file)."""
    from . import commands

    return commands.REGISTRY


def _run_eval(args) -> int:
    from eval.evaluate import format_table, run_evaluation

    from .cli_support import check_profile

    check_profile(args)
    overrides = {"encoder": {"image_size": args.image_size}} if args.image_size else None
    report = run_evaluation(args.data, args.category, args.shots, args.seeds, args.output, args.preset, args.checkpoint,
                            args.csv, args.class_name, split_defects=args.split_defects, overrides=overrides,
                            which=args.split, perturbations=args.perturb, logical_proxy=args.logical_proxy,
                            profile=args.profile, part_proxy=args.part_proxy)
    print(format_table(report))
    if args.output:
        print(f"results written to {args.output}")
    return 0


def _run_bench(args) -> int:
    from eval.benchmark import answer_latency, run_benchmark

    if args.answer:
        answer_latency(args.preset, args.checkpoint, args.answer, args.reference)
        return 0
    from assistant.encoders.base import BACKENDS

    shots = _shot_list(args.shots)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if not backends or unknown:
        raise UserError(f"--backends takes {', '.join(BACKENDS)}; got {args.backends!r}")
    if args.repeats < 1 or args.queries < 1:
        raise UserError(f"--repeats and --queries must be at least 1, got {args.repeats} and {args.queries}")
    if args.data and not Path(args.data).is_dir():
        raise UserError(f"--data {args.data}: folder not found")
    overrides = {"encoder": {"image_size": args.image_size}} if args.image_size else None
    run_benchmark(args.preset, args.checkpoint, args.data, overrides, args.repeats, shots, backends,
                  anomalib=not args.no_anomalib, json_path=args.json, queries=args.queries,
                  command="anomaly-assistant " + " ".join(sys.argv[1:]))
    return 0


def _shot_list(text: str) -> list[int]:
    try:
        shots = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise UserError(f"--shots must be comma-separated whole numbers, got {text!r}") from None
    if not shots or min(shots) < 1:
        raise UserError("--shots needs at least one number of references, each 1 or more")
    return shots


def _run_matrix(args) -> int:
    from eval.matrix import run_matrix
    from eval.protocol import DEFAULT_SOURCES

    shots = _shot_list(args.shots)
    sources = args.data or list(DEFAULT_SOURCES)
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    report = run_matrix(sources, shots, args.seeds, args.many_shot_seeds, conditions, args.split, args.output,
                        args.preset, args.checkpoint, logical_proxy=not args.no_logical_proxy, resume=args.resume,
                        part_proxy=not args.no_part_proxy)
    print(f"{len(report['rows'])} rows written to {args.output} and {args.output.with_suffix('.md')}")
    return 0


HANDLERS = {"eval": _run_eval, "bench": _run_bench, "matrix": _run_matrix}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "transformers", "sentence_transformers", "urllib3", "root"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    handler = HANDLERS.get(args.command) or args.handler
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, OSError) as exc:  # ImageError, DatasetError, EngineError are ValueErrors
        if os.environ.get("ANOMALY_ASSISTANT_DEBUG"):
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - the CLI's contract is one line, never a traceback
        if os.environ.get("ANOMALY_ASSISTANT_DEBUG"):
            raise
        print(f"internal error: {one_line(exc)} (set ANOMALY_ASSISTANT_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
