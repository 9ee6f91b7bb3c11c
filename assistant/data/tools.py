"""`anomaly-assistant data summary|convert`: look at a dataset before using it, bring it into the MVTec layout."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from assistant.data.convert import DEFAULT_TEST_FRACTION, LAYOUTS, convert
from assistant.data.datasets import LAYOUTS_HELP, discover
from assistant.data.mosaic import LAYOUTS as MOSAIC_LAYOUTS, build as build_mosaic, default_root as mosaic_root
from assistant.data.summary import chart_png, format_summaries, summarize

CONVERT_HELP = """\
Link (or with --copy, copy) the images of SRC into DST in the MVTec layout:
train/good/, test/good/, test/<defect>/, ground_truth/<defect>/<stem>_mask.png.
Sources are never moved or changed; a hard link is the same file as its source (use --copy
to keep them apart). Everything is checked before DST is written, and DST is checked with the
dataset loader at the end. With --force, what DST held before is deleted.

layouts:
  folder-per-class  SRC/<class>/*: the --good-name folder (default "good") holds normal images,
                    every other folder is one defect type (no masks). Normal images are split into
                    train/good and test/good: ranked by the SHA-256 of the file name, the first
                    round(n x --test-fraction) go to test (at least one in each).
  image-mask-list   SRC is a CSV of image,mask[,label] rows (paths relative to the CSV; optional
                    header row starting with "image"). An empty mask cell means good; a label of
                    good/normal/ok/0 means good, 1 means "anomalous", anything else names the defect
                    type. Normal images are split as above.
  aebad             an AeBAD-S tree (SRC or SRC/AeBAD_S): train/good/<shift>/, test/<defect|good>/<shift>/,
                    ground_truth/<defect>/<shift>/ with masks named like their images. Every domain
                    shift found (same, background, illumination, view) becomes one category DST/<shift>/
                    with all train/good images (names prefixed with their sub-folder) as its training set.
                    AeBAD-V (video frames without masks) is not mapped.
"""


MOSAIC_HELP = """\
Build large-image benchmarks from a set of small images, in the MVTec layout, into
DIR/<category>_<layout>/, so that `anomaly-assistant eval --data DIR` scores them like any set.

  mosaic  4 x 4 cells at native pixel size (a tire mosaic is 1536x2048), strip  1 x 16 cells in a row.
  train/good: mosaics of the source's normal training images (each image used once).
  test/good: mosaics of its normal test images; test/<defect>/: one anomalous test image in a
  random cell among normal test images, its mask placed at that cell in ground_truth/.
Cells are the median training image size (others are resized to it). Never write them inside the
repository: the images keep their source's licence.
"""


def add_data_command(sub) -> None:
    parser = sub.add_parser("data", help="dataset tools: summary of a dataset folder, conversion to the MVTec layout, large-image benchmarks",
                            description="Dataset tools for the images a profile or an evaluation is built from.")
    tools = parser.add_subparsers(dest="data_command", required=True)

    summary = tools.add_parser("summary", help="counts, sizes, modes, masks and balance of every category",
                               description=f"Summarise every category under ROOT; {LAYOUTS_HELP}.")
    summary.add_argument("root", help="dataset folder, folder of datasets, good/bad folder or 'conformal-clip-data'")
    summary.add_argument("--category", action="append", default=None, help="only this category (repeatable)")
    summary.add_argument("--chart", type=Path, default=None, metavar="PNG", help="write a bar chart of the counts here")
    summary.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the figures as JSON here")
    summary.set_defaults(handler=run_summary)

    conv = tools.add_parser("convert", help="convert a folder-per-class, image+mask list or AeBAD tree to the MVTec layout",
                            description=CONVERT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    conv.add_argument("src", help="source folder (or CSV file for image-mask-list)")
    conv.add_argument("--layout", required=True, choices=LAYOUTS, help="layout of SRC (see above)")
    conv.add_argument("--out", required=True, type=Path, metavar="DST", help="output folder (new or empty)")
    conv.add_argument("--copy", action="store_true", help="copy files instead of hard-linking them")
    conv.add_argument("--force", action="store_true", help="delete what a non-empty DST holds and write there")
    conv.add_argument("--good-name", default="good", help="folder-per-class: the folder of normal images (default: good)")
    conv.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                      help=f"share of normal images that go to test/good (default: {DEFAULT_TEST_FRACTION})")
    conv.set_defaults(handler=run_convert)

    mosaic = tools.add_parser("mosaic", help="large-image benchmarks: 4 x 4 mosaics or 1 x 16 strips of a set's images",
                              description=MOSAIC_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    mosaic.add_argument("--data", required=True, help="source dataset folder or folder of datasets (MVTec layout)")
    mosaic.add_argument("--category", action="append", default=None, help="only this category (repeatable)")
    mosaic.add_argument("--layout", choices=sorted(MOSAIC_LAYOUTS), default="mosaic", help="mosaic (4 x 4) or strip (1 x 16)")
    mosaic.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="parent folder of the sets written, DIR/<category>_<layout>/ (default: $ANOMALY_ASSISTANT_CACHE/"
                             "mosaics or ~/.cache/anomaly-assistant/mosaics)")
    mosaic.add_argument("--normal", type=int, default=None, help="normal test mosaics (default: as many as the source's normal test images)")
    mosaic.add_argument("--anomalous", type=int, default=None, help="anomalous test mosaics (default: one per anomalous test image)")
    mosaic.add_argument("--train", type=int, default=None, help="reference mosaics (default: as many as the training images fill)")
    mosaic.add_argument("--seed", type=int, default=0, help="draws cells and anomalous positions (default: 0)")
    mosaic.add_argument("--force", action="store_true", help="replace a set already written there")
    mosaic.set_defaults(handler=run_mosaic)


def run_summary(args) -> int:
    for option, path in (("--chart", args.chart), ("--json", args.json)):
        if path is not None and path.is_dir():
            raise ValueError(f"{option} {path}: is a folder; give a file path")
    summaries = [summarize(split) for split in discover(args.root, args.category)]
    print(format_summaries(summaries))
    if args.chart is not None or args.json is not None:
        from assistant.checkpoint import atomic_write_bytes

        if args.chart is not None:
            atomic_write_bytes(args.chart, chart_png(summaries))
            print(f"chart written to {args.chart}")
        if args.json is not None:
            data = {"categories": [s.to_json() for s in summaries]}
            atomic_write_bytes(args.json, json.dumps(data, indent=2).encode("utf-8"))
            print(f"figures written to {args.json}")
    return 0


def run_convert(args) -> int:
    result = convert(args.src, args.layout, args.out, copy=args.copy, force=args.force,
                     good_name=args.good_name, test_fraction=args.test_fraction)
    print(f"{result.destination}: {result.linked + result.copied} files ({result.linked} linked, {result.copied} copied)")
    for split in result.splits:
        counts = split.counts()
        defects = ", ".join(split.defect_types) or "none"
        print(f"  {split.name}: train good {counts['train_good']}, test good {counts['test_good']}, "
              f"test anomalous {counts['test_anomalous']} ({defects}), masks {'yes' if split.has_masks else 'no'}")
    print(f"next: anomaly-assistant data summary {result.destination}")
    return 0


def run_mosaic(args) -> int:
    splits = discover(args.data, args.category)
    root = args.out if args.out is not None else mosaic_root()
    for split in splits:
        built = build_mosaic(split, root / f"{split.name}_{args.layout}", args.layout, normal=args.normal,
                             anomalous=args.anomalous, train=args.train, seed=args.seed, force=args.force)
        width, height = built.grid.size
        print(f"{built.destination}: {built.counts['train_good']} reference, {built.counts['test_good']} normal and "
              f"{built.counts['test_anomalous']} anomalous {args.layout}s of {built.grid.rows} x {built.grid.cols} "
              f"{built.grid.cell[0]}x{built.grid.cell[1]} cells ({width}x{height})")
    print(f"next: anomaly-assistant eval --data {root} --category {splits[0].name}_{args.layout}")
    return 0
