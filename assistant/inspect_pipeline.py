"""The work `inspect` does per image, and the single-process pipeline that overlaps it.

Three steps: read (decode the file), answer (engine + answer, a batch of images at a time), render
(overlay PNG and thumbnail). One process runs reads and renders on a small thread pool while the
main thread answers: decoding the next batch and encoding the previous batch's PNGs (100-200 ms per
anomalous tire photo, mostly in Pillow and OpenCV with the GIL released) overlap the torch work.
A cluster worker (assistant/cluster.py) runs the same three steps on its share of the images, so
both give the same rows.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .cli_support import one_line, png_bytes
from .defect_kinds import kind_label
from .images import ImageError, load_image
from .report_html import thumbnail_data_uri

IO_THREADS = 2  # one decodes the next batch, one renders the last: more only queue behind two cores
CSV_COLUMNS = ["file", "anomalous", "score", "threshold", "regions", "capture", "answer", "error"]
OVERLAY_DIR = "overlays"


def format_regions(regions: list[dict]) -> str:
    """"top left [x0 y0 x1 y1] cut" per region: its box and, when defect examples were given, its
    kind. The place on a reference photo is left to the HTML report: a profile keeps no photos, and
    the CSV of a run with a profile is the CSV of the same run with its images."""
    return "; ".join(f"{r['position']} [{' '.join(str(v) for v in r['box'])}]" + (f" {kind_label(r)}" if "kind" in r else "")
                     for r in regions)


@dataclass
class Row:
    file: str
    anomalous: bool | None = None
    score: float | None = None
    threshold: float | None = None
    regions: list[dict] = field(default_factory=list)  # {"box": [...], "position": str}
    capture: str = ""  # "noisier x2.10": the photo's background detail against its references' (capture.py)
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
            "capture": self.capture,
            "answer": self.answer,
            "error": self.error,
        }


def overlay_name(relative: str) -> str:
    stem = relative.rsplit(".", 1)[0]
    return f"{OVERLAY_DIR}/{stem.replace('/', '__')}.png"


@dataclass
class InspectJob:
    """What every image of one run is judged with; a cluster sends it once to each worker."""

    class_name: str
    threshold: float | None
    max_new_tokens: int
    references: list[Image.Image]  # or, once `warm_references` loaded `profile`, its built set
    defects: object | None = None  # defect_kinds.DefectExamples, the user's labelled examples
    profile: str | None = None  # a profile's name or folder, loaded by each process that inspects


@dataclass
class Item:
    path: str  # where the process that reads it finds the file
    relative: str  # the name in the report: the path under the inspected folder


@dataclass
class Read:
    item: Item
    image: Image.Image | None
    error: str = ""


@dataclass
class Inspected:
    row: Row
    overlay_png: bytes | None = None  # written by whoever owns the output folder


def warm_references(assistant, job: InspectJob) -> None:
    """Build the job's reference set (bank and threshold) now, once per process: every image finds it
    in the engine's cache, and the time it takes is not counted as inspection. A profile is loaded
    here instead (its set is built already), with its defect examples unless the job has its own."""
    if job.profile is not None:
        from .profiles import load

        profile = load(job.profile, assistant.engine)
        job.references, job.defects = profile.references, job.defects or profile.defects
    elif job.references:
        class_name = (job.class_name or "object").strip() or "object"  # as `Assistant.chat` reads it
        assistant.engine.references(job.references, class_name)


def read_image(item: Item) -> Read:
    try:
        return Read(item, load_image(item.path, name=item.relative))
    except ImageError as exc:
        return Read(item, None, one_line(exc))


def answer_batch(assistant, job: InspectJob, reads: list[Read]) -> list[tuple[Row, object]]:
    """(row, ChatResult or None) per read, in order. The readable images are detected together;
    should that fail, each is asked alone, so the error lands on the row of the image that caused it."""
    from .engine import EngineError

    images = [read.image for read in reads if read.image is not None]
    if len(images) > 1:
        try:
            assistant.detect_many(images, job.references, job.class_name, job.threshold)
        except EngineError:
            raise  # e.g. nothing to compare against: the same for every image, so stop with one line
        except (ValueError, RuntimeError, MemoryError):
            pass
    return [_answer_one(assistant, job, read) for read in reads]


def _answer_one(assistant, job: InspectJob, read: Read) -> tuple[Row, object]:
    from .answer import threshold_note
    from .assistant import DEFAULT_QUESTION
    from .engine import EngineError

    row = Row(file=read.item.relative, error=read.error)
    if read.image is None:
        return row, None
    try:
        result = assistant.chat(read.image, DEFAULT_QUESTION, job.references, class_name=job.class_name,
                                threshold=job.threshold, max_new_tokens=job.max_new_tokens, defects=job.defects)
    except EngineError:
        raise
    except (ValueError, RuntimeError, MemoryError) as exc:
        row.error = f"{row.file}: {one_line(exc)}"
        return row, None
    detection = result.detection
    row.anomalous, row.score, row.threshold = detection.anomalous, float(detection.score), float(detection.threshold)
    row.regions = result.to_json()["regions"]  # with the kind of each region when defect examples are given
    row.threshold_note = threshold_note(detection)
    row.capture = f"{detection.capture.change} x{detection.capture.ratio:.2f}" if detection.capture else ""
    row.answer = result.answer
    return row, result


def render(row: Row, result) -> Inspected:
    """Thumbnail (the overlay for an anomalous image, else the image) and the overlay PNG's bytes."""
    if result is None:
        return Inspected(row)
    png = None
    if row.anomalous:
        shown = result.heatmap
        row.overlay = overlay_name(row.file)
        png = png_bytes(shown)
    else:
        shown = result.image
    row.thumbnail = thumbnail_data_uri(shown)
    return Inspected(row, png)


def inspect_items(assistant, job: InspectJob, items: list[Item]) -> list[Inspected]:
    """All three steps for a few images, one after the other (what a cluster worker runs per task)."""
    reads = [read_image(item) for item in items]
    return [render(row, result) for row, result in answer_batch(assistant, job, reads)]


def batches(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def pipeline(assistant, job: InspectJob, items: Iterable[Item], batch_size: int) -> Iterator[Inspected]:
    """Every item inspected, in order, with reading and rendering on threads beside the answers."""
    pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="inspect-io")
    try:
        pending_items = iter(items)
        reads: deque = deque()

        def read_ahead() -> None:  # two batches decoded ahead keep the answering thread fed
            while len(reads) < 2 * batch_size:
                item = next(pending_items, None)
                if item is None:
                    return
                reads.append(pool.submit(read_image, item))

        read_ahead()
        rendering: list = []
        while reads:
            batch = [reads.popleft().result() for _ in range(min(batch_size, len(reads)))]
            read_ahead()
            answered = answer_batch(assistant, job, batch)
            for done in rendering:  # the previous batch rendered while this one was answered
                yield done.result()
            rendering = [pool.submit(render, row, result) for row, result in answered]
        for done in rendering:
            yield done.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def items_under(folder: Path, files: list[Path]) -> list[Item]:
    return [Item(str(path.resolve()), path.relative_to(folder).as_posix()) for path in files]
