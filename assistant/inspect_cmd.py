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
from dataclasses import dataclass, field
from pathlib import Path

from .answer import threshold_note
from .cli_support import check_threshold, load_assistant, load_defects, load_references, one_line, png_bytes
from .defect_kinds import kind_label
from .data.datasets import IMAGE_SUFFIXES, is_image_file
from .images import ImageError, load_image
from .report_html import render_report, thumbnail_data_uri

log = logging.getLogger("assistant.inspect")

CSV_COLUMNS = ["file", "anomalous", "score", "threshold", "regions", "answer", "error"]
OVERLAY_DIR = "overlays"


@dataclass
class Row:
    file: str
    anomalous: bool | None = None
    score: float | None = None
    threshold: float | None = None
    regions: list[dict] = field(default_factory=list)  # {"box": [...], "position": str}
    answer: str = ""
    error: str = ""
    threshold_note: str = ""  # why the threshold is only an estimate: see answer.threshold_note
    overlay: str = ""  # relative path of the overlay PNG (anomalous images only)
    thumbnail: str = ""  # data: URI

    def csv_row(self) -> dict:
        return {
            "file": self.file,
            "anomalous": "" if self.anomalous is None else str(self.anomalous).lower(),
            "score": "" if self.score is None else f"{self.score:.6f}",
            "threshold": "" if self.threshold is None else f"{self.threshold:.6f}",
            "regions": format_regions(self.regions),
            "answer": self.answer,
            "error": self.error,
        }


def format_regions(regions: list[dict]) -> str:
    return "; ".join(f"{r['position']} [{' '.join(str(v) for v in r['box'])}]" + (f" {kind_label(r)}" if "kind" in r else "")
                     for r in regions)


def find_images(folder: Path) -> list[Path]:
    if not folder.exists():
        raise ValueError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    files = sorted((p for p in folder.rglob("*") if is_image_file(p)), key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise ValueError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, recursively)")
    return files


def _overlay_name(relative: str) -> str:
    stem = relative.rsplit(".", 1)[0]
    return f"{OVERLAY_DIR}/{stem.replace('/', '__')}.png"


def run_inspect(args) -> int:
    from tqdm import tqdm

    logging.getLogger("assistant").setLevel(logging.INFO)
    folder = Path(args.folder)
    out = Path(args.out)
    threshold = check_threshold(args.threshold)
    files = find_images(folder)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    references = load_references(args.reference)
    defects = load_defects(args.defects)
    out.mkdir(parents=True, exist_ok=True)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")

    started = time.time()
    with contextlib.redirect_stdout(sys.stderr):
        assistant = load_assistant(args.preset, args.checkpoint, use_llm=not args.no_llm)
    log.info("models loaded in %.1f s; inspecting %d images under %s", time.time() - started, len(files), folder)

    rows: list[Row] = []
    interrupted = False
    try:
        with contextlib.redirect_stdout(sys.stderr), \
                tqdm(total=len(files), desc="inspecting", unit="img", file=sys.stderr, dynamic_ncols=True) as bar:
            for path in files:  # the bar closes (ends its line) even when an error stops the run
                rows.append(_inspect_one(assistant, path, folder, out, references, args, threshold, defects))
                bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: writing the report for the %d of %d images done", len(rows), len(files))

    summary = {
        "folder": str(folder), "class_name": args.class_name, "references": [str(r) for r in args.reference],
        "total": len(files), "done": len(rows), "interrupted": interrupted,
        "seconds": round(time.time() - started, 1), "llm": not args.no_llm,
        "preset": assistant.preset.get("name", args.preset),
        "threshold_note": estimated_threshold_note(rows),
    }
    write_reports(out, rows, summary)
    n_bad = sum(1 for r in rows if r.anomalous)
    n_err = sum(1 for r in rows if r.error)
    print(f"inspected {len(rows)} of {len(files)} images: {n_bad} anomalous, {len(rows) - n_bad - n_err} normal, "
          f"{n_err} unreadable")
    if summary["threshold_note"]:
        print(f"note:   {summary['threshold_note']}")
    print(f"report: {out / 'report.html'}")
    print(f"csv:    {out / 'report.csv'}")
    return 130 if interrupted else 0


def estimated_threshold_note(rows: list[Row]) -> str:
    """Said once for the whole run: every answer judged against the same references (or none) ends
    with the same advice, and the counts printed beside it are the reason to read it."""
    return next((row.threshold_note for row in rows if row.threshold_note), "")


def _inspect_one(assistant, path: Path, folder: Path, out: Path, references, args, threshold, defects=None) -> Row:
    from .assistant import DEFAULT_QUESTION
    from .checkpoint import atomic_write_bytes
    from .engine import EngineError

    relative = path.relative_to(folder).as_posix()
    row = Row(file=relative)
    try:
        image = load_image(path, name=relative)
    except ImageError as exc:
        row.error = one_line(exc)
        return row
    try:
        result = assistant.chat(image, DEFAULT_QUESTION, references, class_name=args.class_name,
                                threshold=threshold, max_new_tokens=args.max_new_tokens, defects=defects)
    except EngineError:
        raise  # e.g. no reference, no self map and no trained text map: the same for every image, so stop with one line
    except (ValueError, RuntimeError, MemoryError) as exc:
        row.error = f"{relative}: {one_line(exc)}"
        return row
    detection = result.detection
    row.anomalous, row.score, row.threshold = detection.anomalous, float(detection.score), float(detection.threshold)
    row.regions = result.to_json()["regions"]  # with the kind of each region when defect examples are given
    row.threshold_note = threshold_note(detection)
    row.answer = result.answer
    shown = result.heatmap if detection.anomalous else image
    if detection.anomalous:
        row.overlay = _overlay_name(relative)
        atomic_write_bytes(out / row.overlay, png_bytes(result.heatmap))
    row.thumbnail = thumbnail_data_uri(shown)
    return row


def write_reports(out: Path, rows: list[Row], summary: dict) -> None:
    from .checkpoint import atomic_write_bytes

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row.csv_row())
    atomic_write_bytes(out / "report.csv", buffer.getvalue().encode("utf-8"))
    atomic_write_bytes(out / "report.html", render_report(rows, summary).encode("utf-8"))
