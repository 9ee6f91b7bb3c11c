"""Sub-commands that live beside their feature (ask, inspect, app, train, data) register here.

Each entry of REGISTRY is a function `register(subparsers)` that adds one sub-command whose parser
sets `handler=fn` (fn(args) -> exit code). Handlers check user input (images, paths, numbers)
before loading any model, so a mistake costs a second, not a model load.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

from .cli_support import (add_model_args, add_profile_arg, check_profile, check_threshold, class_name_of, load_assistant,
                          load_defects, load_references, png_bytes)

log = logging.getLogger("assistant.cli")


# -- ask ----------------------------------------------------------------------------------------------
def register_ask(sub) -> None:
    parser = sub.add_parser("ask", help="ask one question about one image",
                            description="Answer a question about IMAGE, optionally compared with known-good references.")
    parser.add_argument("image", help="query image")
    parser.add_argument("--reference", "-r", action="append", default=[], metavar="REF",
                        help="known-good reference image of the same part (repeatable)")
    parser.add_argument("--question", "-q", default=None, help="question (default: 'Is there any anomaly in the image?')")
    parser.add_argument("--class-name", default=None, help="what the object is, e.g. tire (default: the profile's, else object)")
    parser.add_argument("--threshold", type=float, default=None, help="decision threshold (default: calibrated on the references)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (answer, anomalous, score, threshold, regions)")
    parser.add_argument("--heatmap", type=Path, default=None, metavar="PATH", help="write the heatmap overlay PNG here")
    parser.add_argument("--max-new-tokens", type=int, default=60, help="LLM answer length limit (default: 60)")
    add_profile_arg(parser)
    add_defects_arg(parser)
    add_model_args(parser)
    parser.set_defaults(handler=run_ask)


def add_defects_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--defects", type=Path, default=None, metavar="DIR",
                        help="labelled defect examples, a folder per kind (DIR/<kind>/*.png, optional <stem>_mask.png "
                             "or masks/), or a .zip of that folder: each anomalous region is matched to the nearest kind")


def run_ask(args) -> int:
    from .images import load_image

    logging.getLogger("assistant").setLevel(logging.INFO)  # our progress lines on stderr; stdout stays clean
    threshold = check_threshold(args.threshold)
    if args.heatmap is not None and args.heatmap.is_dir():
        raise ValueError(f"--heatmap {args.heatmap}: is a folder; give a file path such as overlay.png")
    if not 1 <= args.max_new_tokens <= 1024:
        raise ValueError(f"--max-new-tokens must be between 1 and 1024, got {args.max_new_tokens}")
    query = load_image(args.image)
    references = load_references(args.reference)
    defects = load_defects(args.defects)
    profile_info = check_profile(args)

    from .checkpoint import atomic_write_bytes  # imports torch: only once the input is known to be good

    started = time.time()
    # Libraries sometimes print; keep stdout for the answer (and parseable with --json).
    with contextlib.redirect_stdout(sys.stderr):
        assistant = load_assistant(args.preset, args.checkpoint, use_llm=not args.no_llm)
        log.info("models loaded in %.1f s", time.time() - started)
        if profile_info is not None:
            from .profiles import load

            profile = load(args.profile, assistant.engine)
            references, defects = profile.references, defects or profile.defects
        result = assistant.chat(query, args.question, references, class_name=class_name_of(args, profile_info),
                                threshold=threshold, max_new_tokens=args.max_new_tokens, defects=defects)
        if args.heatmap is not None and result.heatmap is not None:
            atomic_write_bytes(args.heatmap, png_bytes(result.heatmap))
            log.info("heatmap written to %s", args.heatmap)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(result.answer)
        if result.detection is not None:
            d = result.detection
            log.info("verdict: %s (score %.4f, threshold %.4f)", "anomalous" if d.anomalous else "normal",
                     d.score, d.threshold)
    return 0


# -- inspect ------------------------------------------------------------------------------------------
INSPECT_BATCH = 4


def register_inspect(sub) -> None:
    parser = sub.add_parser("inspect", help="score every image in a folder; write report.csv and report.html",
                            description="Inspect every image under FOLDER (recursive) and write a CSV and an HTML report.")
    parser.add_argument("folder", help="folder of images (searched recursively)")
    parser.add_argument("--reference", "-r", action="append", default=[], metavar="REF",
                        help="known-good reference image (repeatable); without one the trained text map is needed")
    parser.add_argument("--class-name", default=None, help="what the objects are, e.g. tire (default: the profile's, else object)")
    parser.add_argument("--threshold", type=float, default=None, help="decision threshold (default: calibrated)")
    parser.add_argument("--out", required=True, type=Path, help="output folder for report.csv, report.html and overlays")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="LLM answer length limit (default: 40)")
    parser.add_argument("--batch", type=int, default=INSPECT_BATCH, metavar="N",
                        help=f"images per engine call; views of one input size share a forward pass (default: {INSPECT_BATCH})")
    parser.add_argument("--cluster", choices=["dask"], default=None,
                        help="run on a Dask cluster: each worker loads the models once and reads its share of the images "
                             "(needs the 'cluster' extra; docs/deployment.md)")
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="with --cluster: the scheduler, e.g. tcp://10.0.0.5:8786 (default: start a local cluster)")
    parser.add_argument("--workers", type=int, default=2,
                        help="with --cluster and no --address: local worker processes, one thread each (default: 2)")
    add_profile_arg(parser)
    add_defects_arg(parser)
    add_model_args(parser)
    parser.set_defaults(handler=_run_inspect)


def _run_inspect(args) -> int:
    from .inspect_cmd import run_inspect

    return run_inspect(args)


# -- app ----------------------------------------------------------------------------------------------
def register_app(sub) -> None:
    parser = sub.add_parser("app", help="start the web app (Gradio)", description="Start the web app.")
    add_app_args(parser)
    parser.set_defaults(handler=_run_app)


def add_app_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link (off by default)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests processed at the same time (default: 2)")
    parser.add_argument("--profile", default=None, metavar="NAME", help="the profile chosen when the page opens")
    add_model_args(parser)


def _run_app(args) -> int:
    from .app_ui import serve

    return serve(args)


REGISTRY: list = [register_ask, register_inspect, register_app]


# -- train --------------------------------------------------------------------------------------------
def register_train(sub) -> None:
    parser = sub.add_parser("train", help="train adapters, bridge and LoRA on synthesised anomalies",
                            description="Same options as `python -m training.train` (see training/README.md).")
    from training.options import add_arguments

    add_arguments(parser)
    parser.set_defaults(handler=_run_train)


def _run_train(args) -> int:
    from training.train import run

    run(args)
    return 0


REGISTRY.append(register_train)


# -- data ---------------------------------------------------------------------------------------------
def register_data(sub) -> None:
    from .data.tools import add_data_command

    add_data_command(sub)


REGISTRY.append(register_data)


# -- export -------------------------------------------------------------------------------------------
def register_export(sub) -> None:
    from .export_cmd import add_export_command

    add_export_command(sub)


REGISTRY.append(register_export)


# -- profile ------------------------------------------------------------------------------------------
def register_profile(sub) -> None:
    from .profile_cmd import add_profile_command

    add_profile_command(sub)


REGISTRY.append(register_profile)


# -- eval-kinds ---------------------------------------------------------------------------------------
def register_eval_kinds(sub) -> None:
    parser = sub.add_parser("eval-kinds", help="defect-kind accuracy from K labelled examples per kind",
                            description="K examples per kind from the anomalous test images (their masks give the "
                                        "regions), the other images as queries; closed-set balanced accuracy and "
                                        "open-set rejection, mean ± std over seeds (eval/defect_kinds.py).")
    parser.add_argument("--data", required=True, help="MVTec-layout dataset folder (masks needed), or a folder of them")
    parser.add_argument("--category", action="append", default=None, help="category subfolder to evaluate (repeatable)")
    parser.add_argument("--defect-shots", type=int, nargs="+", default=[3], metavar="K",
                        help="examples per kind (several values share one encoding of the images; default: 3)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--subset", choices=["all", "dev", "holdout"], nargs="+", default=["all"],
                        help="images by path hash: dev (constants were chosen there), holdout, or all (default); "
                             "several share one encoding")
    parser.add_argument("--regions", choices=["mask", "engine", "both"], default="both",
                        help="query regions: ground-truth masks, the engine's own region (one reference), or both")
    parser.add_argument("--class-name", default=None, help="object name used in prompts (default: the category name)")
    parser.add_argument("--output", type=Path, default=None, help="results JSON path (default: print the JSON)")
    add_model_args(parser)
    parser.set_defaults(handler=_run_eval_kinds)


def _run_eval_kinds(args) -> int:
    from eval.defect_kinds import run_eval_kinds

    return run_eval_kinds(args)


REGISTRY.append(register_eval_kinds)
