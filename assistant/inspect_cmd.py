"""`anomaly-assistant inspect FOLDER --out DIR`: batch inspection with CSV and HTML reports.

Every image under FOLDER (recursive, sorted) is scored; unreadable files are recorded with their
error and the run goes on. Outputs are written atomically (temporary file + rename), so an
interrupted run leaves either the previous report or a complete new one, never half a file. On
Ctrl-C the images done so far are still reported (marked as interrupted).
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import sys
import time
from pathlib import Path

from .cli_support import check_profile, check_threshold, class_name_of, find_images, load_assistant, load_defects, load_references, one_line
from .inspect_pipeline import CSV_COLUMNS, Row
from .profiles import profile_dir
from .report_html import render_report

log = logging.getLogger("assistant.inspect")

def run_inspect(args) -> int:
    from tqdm import tqdm

    from .inspect_pipeline import InspectJob, items_under

    logging.getLogger("assistant").setLevel(logging.INFO)
    folder = Path(args.folder)
    out = Path(args.out)
    threshold = check_threshold(args.threshold)
    check_run_options(args)
    files = find_images(folder)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    references = load_references(args.reference)
    defects = load_defects(args.defects)
    profile_info = check_profile(args)
    class_name = class_name_of(args, profile_info)
    out.mkdir(parents=True, exist_ok=True)
    # workers find the profile by its folder: their $ANOMALY_ASSISTANT_HOME may differ from this one
    job = InspectJob(class_name, threshold, args.max_new_tokens, references, defects,
                     str(profile_dir(args.profile).resolve()) if profile_info else None)

    started = time.time()
    rows: list[Row] = []
    interrupted = False
    with contextlib.ExitStack() as stack:
        with contextlib.redirect_stdout(sys.stderr):
            inspector = stack.enter_context(_inspector(args, job))
        log.info("models loaded and references built in %.1f s (%s); inspecting %d images under %s", time.time() - started,
                 inspector.where, len(files), folder)
        inspecting = time.time()
        try:
            with contextlib.redirect_stdout(sys.stderr), \
                    tqdm(total=len(files), desc="inspecting", unit="img", file=sys.stderr, dynamic_ncols=True) as bar:
                for inspected in inspector.inspect(items_under(folder, files), args.batch):
                    rows.append(_written(inspected, out))  # the bar closes (ends its line) even when an error stops the run
                    bar.update(1)
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: writing the report for the %d of %d images done", len(rows), len(files))
        inspect_seconds = time.time() - inspecting

    summary = {
        "folder": str(folder), "class_name": class_name, "references": [str(r) for r in args.reference],
        "profile": args.profile,
        "total": len(files), "done": len(rows), "interrupted": interrupted,
        "seconds": round(time.time() - started, 1), "llm": not args.no_llm,
        "preset": inspector.preset_name,
        "threshold_note": estimated_threshold_note(rows),
        "images_per_second": round(len(rows) / max(inspect_seconds, 1e-9), 2), "workers": inspector.workers,
    }
    write_reports(out, rows, summary)
    n_bad = sum(1 for r in rows if r.anomalous)
    n_err = sum(1 for r in rows if r.error)
    print(f"inspected {len(rows)} of {len(files)} images: {n_bad} anomalous, {len(rows) - n_bad - n_err} normal, "
          f"{n_err} unreadable")
    print(f"speed:  {summary['images_per_second']} images/s ({inspect_seconds:.1f} s after loading the models, {inspector.where})")
    if summary["threshold_note"]:
        print(f"note:   {summary['threshold_note']}")
    print(f"report: {out / 'report.html'}")
    print(f"csv:    {out / 'report.csv'}")
    return 130 if interrupted else 0


def check_run_options(args) -> None:
    """Numbers and combinations checked before anything loads (exit 2 with one line)."""
    from .batch import MAX_BATCH

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not 1 <= args.batch <= MAX_BATCH:
        raise ValueError(f"--batch must be between 1 and {MAX_BATCH}, got {args.batch}")
    if args.address and not args.cluster:
        raise ValueError("--address needs --cluster dask")
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")


class LocalInspector:
    """This process: models loaded here, images through `inspect_pipeline.pipeline`."""

    workers = 1
    where = "this process"

    def __init__(self, assistant, job):
        from .inspect_pipeline import warm_references

        self.assistant = assistant
        self.job = job
        self.preset_name = assistant.preset.get("name", "")
        warm_references(assistant, job)

    def inspect(self, items, batch_size: int):
        from .inspect_pipeline import pipeline

        return pipeline(self.assistant, self.job, items, batch_size)


@contextlib.contextmanager
def _inspector(args, job):
    """The models, loaded here or on each worker of a Dask cluster, for the length of the run."""
    if not args.cluster:
        yield LocalInspector(load_assistant(args.preset, args.checkpoint, use_llm=not args.no_llm), job)
        return
    from .cli_support import ModelLoadError, preset_problem
    from .config import load_preset

    preset = load_preset(args.preset)
    problem = preset_problem(preset)
    if problem:
        raise ModelLoadError(problem)
    try:
        from .cluster import WorkerModels, cluster_inspector
    except ImportError as exc:
        raise ValueError(f"--cluster dask needs Dask: pip install 'anomaly-assistant[cluster]' ({one_line(exc)})") from None
    checkpoint = str(Path(args.checkpoint).resolve()) if args.checkpoint else None
    models = WorkerModels(preset, checkpoint, use_llm=not args.no_llm, threads=args.threads)
    with cluster_inspector(args.address, args.workers, models, job) as inspector:
        yield inspector


def _written(inspected, out: Path) -> Row:
    from .checkpoint import atomic_write_bytes

    if inspected.overlay_png is not None:
        atomic_write_bytes(out / inspected.row.overlay, inspected.overlay_png)
    return inspected.row


def estimated_threshold_note(rows: list[Row]) -> str:
    """Said once for the whole run: every answer judged against the same references (or none) ends
    with the same advice, and the counts printed beside it are the reason to read it."""
    return next((row.threshold_note for row in rows if row.threshold_note), "")


def write_reports(out: Path, rows: list[Row], summary: dict) -> None:
    from .checkpoint import atomic_write_bytes

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row.csv_row())
    atomic_write_bytes(out / "report.csv", buffer.getvalue().encode("utf-8"))
    atomic_write_bytes(out / "report.html", render_report(rows, summary).encode("utf-8"))
