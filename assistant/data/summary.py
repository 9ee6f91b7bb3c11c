"""What a dataset folder holds: counts per split and defect type, image sizes and modes, masks, balance.

Sizes and modes come from the image headers (PIL opens lazily and decodes no pixels), so a summary of
thousands of images takes seconds; mask coverage has to decode the masks. A file whose header cannot be
read is counted as unreadable and named, not fatal: a summary is how a user finds such files.
"""
from __future__ import annotations

import io
import statistics
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from assistant.data.datasets import Split, _child_dir, _subdirs
from assistant.images import ImageError, load_mask

MVTEC_FOLDERS = frozenset({"train", "test", "ground_truth"})
EXIF_ORIENTATION = 0x0112
ROTATED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # 90 degree turns: the upright image swaps width and height


@dataclass
class Group:
    """The images of one split and defect type, e.g. test / cut."""

    split: str
    defect: str
    images: int

    @property
    def anomalous(self) -> bool:
        return self.defect != "good"


@dataclass
class Summary:
    """One category's figures; `to_json` gives the same as plain data."""

    name: str
    root: Path
    groups: list[Group]
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    modes: Counter = field(default_factory=Counter)
    unreadable: list[str] = field(default_factory=list)  # "path: reason"
    anomalous_with_mask: int = 0
    empty_masks: int = 0
    mask_areas: list[float] = field(default_factory=list)  # share of the image each mask marks
    unreadable_masks: list[str] = field(default_factory=list)
    unused_folders: list[str] = field(default_factory=list)

    def count(self, split: str | None = None, anomalous: bool | None = None) -> int:
        return sum(g.images for g in self.groups
                   if (split is None or g.split == split) and (anomalous is None or g.anomalous == anomalous))

    @property
    def defect_types(self) -> list[str]:
        return [g.defect for g in self.groups if g.anomalous]

    def size_stats(self) -> dict[str, list[int]] | None:
        """min / median / max of width and of height, each side on its own."""
        if not self.widths:
            return None
        return {name: [int(fn(self.widths)), int(fn(self.heights))]
                for name, fn in (("min", min), ("median", statistics.median_low), ("max", max))}

    def to_json(self) -> dict:
        anomalous = self.count(anomalous=True)
        return {
            "name": self.name,
            "root": str(self.root),
            "counts": [{"split": g.split, "defect": g.defect, "images": g.images} for g in self.groups],
            "train_good": self.count("train"),
            "test_good": self.count("test", anomalous=False),
            "test_anomalous": anomalous,
            "defect_types": self.defect_types,
            "sizes": self.size_stats(),
            "modes": dict(sorted(self.modes.items())),
            "unreadable": self.unreadable,
            "masks": {
                "anomalous_images": anomalous,
                "with_mask": self.anomalous_with_mask,
                "share_with_mask": self.anomalous_with_mask / anomalous if anomalous else None,
                "mean_area": statistics.fmean(self.mask_areas) if self.mask_areas else None,
                "empty": self.empty_masks,
                "unreadable": self.unreadable_masks,
            },
            "balance": {"good": self.count(anomalous=False), "anomalous": anomalous,
                        "test_good": self.count("test", anomalous=False)},
            "unused_folders": self.unused_folders,
        }


def summarize(split: Split) -> Summary:
    """Read every image header and decode every mask of one category."""
    groups = [Group("train", "good", len(split.train_good))]
    by_defect = Counter(s.defect for s in split.test)
    groups += [Group("test", d, by_defect[d]) for d in sorted(by_defect, key=lambda d: (d != "good", d))]
    summary = Summary(split.name, split.root, groups, unused_folders=_unused_folders(split.root))
    for path in split.train_good:
        _read_header(path, summary)
    for sample in split.test:
        size = _read_header(sample.path, summary)
        if sample.label == 1 and sample.mask_path is not None:
            summary.anomalous_with_mask += 1
            if size is not None:
                _read_mask(sample.mask_path, size, summary)
    return summary


def _read_header(path: Path, summary: Summary) -> tuple[int, int] | None:
    """(width, height) of the upright image from its header only; None (and noted) when unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if _orientation(image) in ROTATED_ORIENTATIONS:
                    width, height = height, width
                mode = image.mode
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        summary.unreadable.append(f"{path}: {_reason(exc)}")
        return None
    summary.widths.append(width)
    summary.heights.append(height)
    summary.modes[mode] += 1
    return width, height


def _orientation(image: Image.Image) -> int | None:
    try:
        return image.getexif().get(EXIF_ORIENTATION)
    except Exception:  # a broken EXIF block leaves the picture as stored, as assistant.images does
        return None


def _read_mask(path: Path, size: tuple[int, int], summary: Summary) -> None:
    try:
        marked = float(load_mask(path, size).mean())
    except (ImageError, OSError, ValueError) as exc:
        summary.unreadable_masks.append(f"{path}: {_reason(exc)}")
        return
    summary.mask_areas.append(marked)
    summary.empty_masks += marked == 0.0


def _reason(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def _unused_folders(root: Path) -> list[str]:
    """Folders of an MVTec-layout category that the loaders skip (e.g. validation/), so the user knows."""
    if not root.is_dir() or _child_dir(root, "test") is None:
        return []
    return [sub.name for sub in _subdirs(root) if sub.name.lower() not in MVTEC_FOLDERS]


# ---------------------------------------------------------------------------------------- text

def format_summaries(summaries: list[Summary]) -> str:
    """The terminal report: an overview line per category (several categories), then each in detail."""
    parts = [_overview(summaries)] if len(summaries) > 1 else []
    parts += [_details(s) for s in summaries]
    return "\n\n".join(parts)


def _overview(summaries: list[Summary]) -> str:
    header = ("category", "train good", "test good", "test anomalous", "defect types", "masks")
    rows = [(s.name, str(s.count("train")), str(s.count("test", anomalous=False)), str(s.count(anomalous=True)),
             str(len(s.defect_types)), _mask_share(s)) for s in summaries]
    return _table(header, rows)


def _details(s: Summary) -> str:
    rows = [(g.split, g.defect, str(g.images)) for g in s.groups]
    rows.append(("total", "", str(s.count())))
    lines = [f"{s.name}  ({s.root})", _indent(_table(("split", "defect", "images"), rows))]
    lines.append(f"  sizes    {_sizes(s)}")
    lines.append(f"  modes    {', '.join(f'{m} {n}' for m, n in sorted(s.modes.items())) or 'none readable'}")
    lines.append(f"  masks    {_masks(s)}")
    lines.append(f"  balance  {_balance(s)}")
    if s.unreadable:
        lines.append(f"  unreadable images: {len(s.unreadable)} (first: {s.unreadable[0]})")
    if s.unreadable_masks:
        lines.append(f"  unreadable masks: {len(s.unreadable_masks)} (first: {s.unreadable_masks[0]})")
    if s.unused_folders:
        lines.append(f"  not used {', '.join(f + '/' for f in s.unused_folders)} (not part of the MVTec layout)")
    return "\n".join(lines)


def _sizes(s: Summary) -> str:
    stats = s.size_stats()
    if stats is None:
        return "none readable"
    text = ", ".join(f"{name} {w}x{h}" for name, (w, h) in stats.items())
    return text + " (width x height, each side on its own)"


def _mask_share(s: Summary) -> str:
    anomalous = s.count(anomalous=True)
    return f"{s.anomalous_with_mask}/{anomalous}" if anomalous else "-"


def _masks(s: Summary) -> str:
    anomalous = s.count(anomalous=True)
    if not anomalous:
        return "no anomalous images"
    text = f"{s.anomalous_with_mask} of {anomalous} anomalous images ({100 * s.anomalous_with_mask / anomalous:.1f} %)"
    if s.mask_areas:
        text += f", mean masked area {100 * statistics.fmean(s.mask_areas):.2f} % of the image"
    if s.empty_masks:
        text += f", {s.empty_masks} mark{'s' if s.empty_masks == 1 else ''} nothing"
    return text


def _balance(s: Summary) -> str:
    good, anomalous, test_good = s.count(anomalous=False), s.count(anomalous=True), s.count("test", anomalous=False)
    return f"good : anomalous = {good} : {anomalous}{_ratio(good, anomalous)}; test {test_good} : {anomalous}{_ratio(test_good, anomalous)}"


def _ratio(good: int, anomalous: int) -> str:
    return f" ({good / anomalous:.2f} : 1)" if anomalous and good else ""


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = [all(row[i].isdigit() or not row[i] for row in rows) for i in range(len(header))]

    def line(row):
        cells = [cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(row, widths, numeric)]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


# ---------------------------------------------------------------------------------------- chart

GOOD_COLOUR = "#4c9a5f"
ANOMALOUS_COLOUR = "#c8553d"


def chart_png(summaries: list[Summary]) -> bytes:
    """A PNG with one horizontal bar chart per category: images per split / defect type."""
    # The Agg canvas on a bare Figure: no pyplot, so no display and no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bars = [len(s.groups) for s in summaries]
    figure = Figure(figsize=(7, 1.0 + 0.32 * sum(bars) + 0.7 * len(summaries)), layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself to the figure
    axes = figure.subplots(len(summaries), 1, squeeze=False, height_ratios=[b + 1 for b in bars])[:, 0]
    for ax, s in zip(axes, summaries):
        labels = [f"{g.split} / {g.defect}" for g in s.groups]
        counts = [g.images for g in s.groups]
        colours = [ANOMALOUS_COLOUR if g.anomalous else GOOD_COLOUR for g in s.groups]
        positions = range(len(labels))
        ax.barh(positions, counts, color=colours)
        ax.set_yticks(list(positions), labels)
        ax.invert_yaxis()
        ax.set_title(f"{s.name}: {s.count()} images", loc="left", fontsize=10)
        ax.set_xlabel("images")
        for y, count in zip(positions, counts):
            ax.annotate(str(count), (count, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        ax.margins(x=0.12)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
