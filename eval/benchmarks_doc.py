"""docs/benchmarks.md from the evaluation runs in docs/eval/*.json, so the published figures are the runs' own.

    .venv/bin/python -m eval.benchmarks_doc            # rewrite docs/benchmarks.md
    .venv/bin/python -m eval.benchmarks_doc --check    # exit 1 when docs/benchmarks.md is not what the runs give

Reads two kinds of file: what `anomaly-assistant eval --output` writes ({"config", "results"}) and what
`anomaly-assistant matrix` writes ({"config", "rows"}, docs/eval/matrix.json, optional). `CURRENT` names
the eval runs of the shipped engine and preset, one table each; every other eval run is listed with
its headline figures and what it varied (`VARIANTS`). A run's command and machine are read from its
config ("command", "machine") when it records them, otherwise the command is rebuilt from the config.
Only the standard library is used: no model is loaded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .protocol import base_category

REPO = Path(__file__).resolve().parent.parent
EVAL_DIR = REPO / "docs" / "eval"
OUTPUT = REPO / "docs" / "benchmarks.md"
PRESET = REPO / "assistant" / "presets" / "embedded.json"
MATRIX_FILE = "matrix.json"
COMMAND = ".venv/bin/python -m eval.benchmarks_doc"

COLUMNS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"),
           ("image_f1_max", "F1-max"), ("judgement_accuracy", "verdict"))
MATRIX_COLUMNS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"),
                  ("judgement_accuracy", "verdict"))
PRESET_SECTIONS = ("encoder", "memory_bank", "anomaly_map", "threshold")
DEFAULT_CHECKPOINT = "checkpoints/embedded"

ZERO_SHOT_NOTE = "`anomaly_map.score_border` and the texture terms only apply to scores against references."
HELD_OUT_TEXTILE_NOTE = (
    "`/tmp/textile_val` is `conformal-clip-data` in the MVTec layout, made of symlinks: train/good = nominal "
    "images 200-999, test/good = nominal 100-199, test/global = global 100-199, test/local = local 100-199. "
    "None of its test images is in the `textile` test set; no constant was chosen on them "
    "(its normal test images are among those the shipped checkpoint was trained on).")

# The runs of the shipped engine and preset: (file in docs/eval, set, setting, note or "").
MANY_SHOT_NOTE = ("The holdout half of the test images, one seed; no constant was chosen on it. Recorded with "
                  "`self_radius` 0, which the shipped `self_max_references` 8 gives at 64 references (docs/method.md, "
                  "\"Many references\"). anomalib's PatchCore on the same weights, all test images: tire 71.4 / 98.5, "
                  "magnetic tile 87.4 / 78.6.")

CURRENT = (
    ("tire_0shot_multiscale_text.json", "tire", "no reference (zero-shot)", ZERO_SHOT_NOTE),
    ("tire_1shot_score_border.json", "tire", "1 reference", ""),
    ("magnetic_tile_0shot_multiscale_text.json", "magnetic tile", "no reference (zero-shot)", ZERO_SHOT_NOTE),
    ("magnetic_tile_1shot_score_border.json", "magnetic tile", "1 reference", ""),
    ("magnetic_tile_1shot_bank_only_score_border.json", "magnetic tile",
     "1 reference, memory bank alone (no text map)", "The same engine without its trained text map: what the text map adds."),
    ("magnetic_tile_4shot_score_border.json", "magnetic tile", "4 references", ""),
    ("textile_0shot_multiscale_text.json", "textile", "no reference (zero-shot)", ZERO_SHOT_NOTE),
    ("textile_1shot_score_border.json", "textile", "1 reference", ""),
    ("textile_validation_1shot_score_border.json", "textile, held-out split", "1 reference", HELD_OUT_TEXTILE_NOTE),
    ("tire_1shot_holdout_turned.json", "tire turned and moved (`--perturb rotate,shift`), holdout half", "1 reference",
     "The holdout half with each test image turned by a random angle and shifted (docs/protocol.md, capture changes)."),
    ("tire_logical_1shot_holdout.json", "tire logical-anomaly proxy, holdout half", "1 reference",
     "Missing, extra, turned and recoloured pieces made from normal test tires (docs/protocol.md); a proxy, not tuned to alone."),
    ("magnetic_tile_part_1shot_holdout.json", "magnetic tile part proxy, holdout half", "1 reference",
     "Each magnetic tile photo, references included, placed as a part on a plain background at its own angle "
     "(docs/protocol.md, part proxy): a second object set; a proxy, not tuned to alone."),
    ("tire_64shot_holdout.json", "tire, holdout half", "64 references", MANY_SHOT_NOTE),
    ("magnetic_tile_64shot_holdout.json", "magnetic tile, holdout half", "64 references", MANY_SHOT_NOTE),
    ("textile_64shot_holdout.json", "textile, holdout half", "64 references", MANY_SHOT_NOTE),
)

# What each other run in docs/eval varied, as its difference from the shipped engine. "448 px text map":
# the text map read only the 448 px encoding (shipped: the mean of 448 px and ~256 px). "No score
# border": map peaks read up to the view's edges (shipped: 3 cells in). "Unscaled texture map": the
# texture map's excess not multiplied by the text map's factor.
VARIANTS = {
    "magnetic_tile_0shot_self_map_only": "self map alone (no text map)",
    "magnetic_tile_0shot_text_map_only_trained": "trained text map alone, 448 px text map",
    "magnetic_tile_0shot_text_map_only_trained_multiscale": "trained text map alone (`zero_shot_self_radius` 0)",
    "magnetic_tile_0shot_text_map_only_untrained": "random adapters, text map alone, 448 px text map",
    "magnetic_tile_0shot_text_map_only_untrained_multiscale": "random adapters, text map alone",
    "magnetic_tile_0shot_trained": "448 px text map",
    "magnetic_tile_0shot_untrained": "self map with random adapters, 448 px text map",
    "magnetic_tile_1shot_bank_only": "memory bank alone; no texture map, no score border",
    "magnetic_tile_1shot_bank_only_texture_map": "memory bank alone; no score border",
    "magnetic_tile_1shot_bank_only_texture_map_split": "memory bank alone; no score border; per defect",
    "magnetic_tile_1shot_fused": "448 px text map, no texture map, no score border",
    "magnetic_tile_1shot_fused_bf16": "bfloat16 similarities; no one-reference texture term, no texture map, "
                                      "448 px text map, no score border",
    "magnetic_tile_4shot_holdout_cap": "texture-statistics term capped at 0.5 (`texture.cap`); holdout half",
    "magnetic_tile_4shot_holdout_capture_cap": "texture-statistics term capped at 0.5 (`texture.cap`); holdout half "
                                               "with light, blur, JPEG and noise",
    "magnetic_tile_4shot_holdout_turned_cap": "texture-statistics term capped at 0.5 (`texture.cap`); holdout half "
                                              "turned and moved",
    "magnetic_tile_1shot_multiscale_text": "unscaled texture map, no score border",
    "magnetic_tile_1shot_texture_map": "448 px text map, unscaled texture map, no score border",
    "magnetic_tile_1shot_texture_scaled": "no score border",
    "magnetic_tile_4shot_fused": "448 px text map, no texture map, no score border",
    "magnetic_tile_4shot_texture_map": "448 px text map, unscaled texture map, no score border",
    "magnetic_tile_4shot_texture_scaled": "no score border",
    "magnetic_tile_64shot_dev_no_self": "four views of every reference (no view budget); dev half",
    "tire_1shot_dev_pool3": "3 x 3 pooled bank patches; dev half",
    "textile_0shot_self_map_only": "self map alone (no text map)",
    "textile_0shot_text_map_only_trained": "trained text map alone, 448 px text map",
    "textile_0shot_trained": "448 px text map",
    "textile_0shot_untrained": "self map with random adapters, 448 px text map",
    "textile_1shot_fused": "448 px text map, no texture map, no score border",
    "textile_1shot_fused_bf16": "bfloat16 similarities; no one-reference texture term, no texture map, 448 px text map, "
                                "no score border",
    "textile_1shot_multiscale_text": "no score border",
    "textile_1shot_no_texture_term": "no one-reference texture term, no texture map, 448 px text map, no score border",
    "textile_1shot_dev_turned": "the shipped engine; dev half turned by right angles and moved (`--perturb rotate,shift`)",
    "textile_1shot_dev_turned_stats_as_taken": "texture statistics of the photos as taken (`texture.turns` empty); "
                                               "dev half turned by right angles and moved",
    "textile_2shot_fused": "448 px text map, no texture map, no score border",
    "textile_4shot_dev_turned": "the shipped engine; dev half turned by right angles and moved (`--perturb rotate,shift`)",
    "textile_4shot_fused": "448 px text map, no texture map, no score border",
    "textile_validation_1shot_fused": "held-out textile split; 448 px text map, no texture map, no score border",
    "textile_validation_1shot_no_texture_term": "held-out textile split; no one-reference texture term, "
                                                "no texture map, 448 px text map, no score border",
    "tire_0shot_self_map_only": "self map alone (no text map)",
    "tire_0shot_text_map_only_trained": "trained text map alone, 448 px text map",
    "tire_0shot_text_map_only_trained_multiscale": "trained text map alone (`zero_shot_self_radius` 0)",
    "tire_0shot_text_map_only_untrained": "random adapters, text map alone, 448 px text map",
    "tire_0shot_text_map_only_untrained_multiscale": "random adapters, text map alone",
    "tire_0shot_trained": "448 px text map",
    "tire_0shot_untrained": "self map with random adapters, 448 px text map",
    "tire_16shot_fused": "448 px text map",
    "tire_16shot_random_cover": "448 px text map; final bank covered at random (`memory_bank.cover` random)",
    "tire_1shot_bank_only": "memory bank alone (no text map)",
    "tire_1shot_fused": "448 px text map, float32 similarities",
    "tire_1shot_fused_bf16": "448 px text map, bfloat16 similarities",
    "tire_1shot_multiscale_text": "no score border (tire's scores are the same with it)",
    "tire_4shot_fused": "448 px text map",
}




def _many_reference_runs() -> dict[str, str]:
    """The study behind `view_budget`, `self_max_references` and the INT8 check (docs/method.md, "Many
    references" and "Latency"): the same variants on each set, number of references and half."""
    shipped_no_self = "the shipped engine (`self_radius` 0 as `self_max_references` gives it)"
    four_views = "four views of every reference (no view budget)"
    with_self = "self-similarity at {} references (no `self_max_references`)"
    runs = {"1shot_dev": "the shipped engine; dev half", "4shot_dev": "the shipped engine; dev half",
            "1shot_dev_int8": "INT8 ONNX encoder (`encoder.backend` onnx-int8); dev half",
            "4shot_dev_no_self": "no self-similarity (`self_radius` 0); dev half",
            "64shot_dev_four_views": f"{four_views}; {with_self.format(64)}; dev half",
            "64shot_holdout_four_views_self": f"{four_views}; {with_self.format(64)}; holdout half",
            "64shot_dev_pool3": "3 x 3 pooled bank patches, four views of every reference; "
                                f"{with_self.format(64)}; dev half"}
    for shots in (16, 64):
        for half in ("dev", "holdout"):
            runs[f"{shots}shot_{half}"] = f"{shipped_no_self}; {half} half"
            runs[f"{shots}shot_{half}_self"] = f"{with_self.format(shots)}; {half} half"
    return {f"{name}_{run}": text for name in ("tire", "magnetic_tile", "textile") for run, text in runs.items()}


VARIANTS.update(_many_reference_runs())


# -- reading ----------------------------------------------------------------------------------------
def load_runs(eval_dir: Path = EVAL_DIR) -> dict[str, dict]:
    """Every JSON file in `eval_dir` by file name; files that are not JSON objects are skipped."""
    runs = {}
    for path in sorted(eval_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            runs[path.name] = data
    return runs


def is_eval_run(data: dict) -> bool:
    return isinstance(data.get("config"), dict) and isinstance(data.get("results"), dict)


def is_matrix(data: dict) -> bool:
    return isinstance(data.get("config"), dict) and isinstance(data.get("rows"), list)


def cell(value) -> str:
    """A metric as the tables show it: mean ± std in percent, one decimal, or n/a."""
    if not isinstance(value, dict) or value.get("mean") is None:
        return "n/a"
    return f"{value['mean']:.1f} ± {(value.get('std') or 0.0):.1f}"


def categories(results: dict) -> list[str]:
    """The sets of a run, in its order (result keys without a ':defect' part)."""
    return [key for key in results if ":" not in key]


def defect_rows(results: dict, category: str) -> list[tuple[str, dict]]:
    """("all", whole set) then (defect, that defect's images against the good ones)."""
    rows = [("all", results[category])]
    rows += [(key.split(":", 1)[1], value) for key, value in results.items() if key.startswith(category + ":")]
    return rows


def _flat(section, prefix: str) -> dict:
    out = {}
    for key, value in (section or {}).items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def preset_differences(config: dict, preset: dict) -> list[str]:
    """Where a run's recorded preset differs from `preset`, for the sections the run recorded."""
    out = []
    for section in PRESET_SECTIONS:
        if not isinstance(config.get(section), dict):
            continue  # not recorded by the run
        ran, now = _flat(config[section], f"{section}."), _flat(preset.get(section), f"{section}.")
        for key in sorted(set(ran) | set(now)):
            if ran.get(key) != now.get(key):
                out.append(f"`{key}` {_value(ran.get(key))} (preset: {_value(now.get(key))})")
    return out


def _value(value) -> str:
    return "unset" if value is None else json.dumps(value)


# -- commands -------------------------------------------------------------------------------------
def eval_command(name: str, data: dict) -> str:
    """The command recorded in the run, or the one its config implies."""
    config = data["config"]
    if config.get("command"):
        return str(config["command"])
    parts = ["anomaly-assistant eval", f"--data {config.get('data', '?')}"]
    cats = config.get("categories") or []
    if str(config.get("data")) != "conformal-clip-data":
        # A proxy run records the derived set ("tire_logical", "magnetic_tile_part"); its command names the source set.
        proxy = config.get("logical_proxy") or config.get("part_proxy")
        parts += [f"--category {base_category(c) if proxy else c}" for c in dict.fromkeys(cats)]
    seeds = config.get("seeds")
    parts += [f"--shots {config.get('shots', '?')}", f"--seeds {len(seeds) if isinstance(seeds, list) else seeds}"]
    if any(":" in key for key in data["results"]):
        parts.append("--split-defects")
    if config.get("split") not in (None, "all"):
        parts.append(f"--split {config['split']}")
    if config.get("perturbations"):
        parts.append(f"--perturb {','.join(config['perturbations'])}")
    if config.get("logical_proxy"):
        parts.append("--logical-proxy")
    if config.get("part_proxy"):
        parts.append("--part-proxy")
    if config.get("preset") not in (None, "embedded"):
        parts.append(f"--preset {config['preset']}")
    checkpoint = config.get("checkpoint")
    if checkpoint is not None and not str(checkpoint).endswith(DEFAULT_CHECKPOINT):
        parts.append(f"--checkpoint {checkpoint}")
    parts.append(f"--output docs/eval/{name}")
    return " ".join(parts)


def matrix_command(name: str, config: dict) -> str:
    if config.get("command"):
        return str(config["command"])
    parts = ["anomaly-assistant matrix"]
    sources = [str(s) for s in config.get("sources") or []]
    default = len(sources) == 2 and sources[0].endswith("shared/datasets") and sources[1] == "conformal-clip-data"
    if sources and not default:
        parts += [f"--data {s}" for s in sources]
    if config.get("shots"):
        parts.append(f"--shots {','.join(str(k) for k in config['shots'])}")
    for key, flag in (("seeds", "--seeds"), ("many_shot_seeds", "--many-shot-seeds")):
        if config.get(key) is not None:
            parts.append(f"{flag} {config[key]}")
    if config.get("conditions"):
        # The JSON keeps the conditions as a mapping with sorted keys: list them in the command's order.
        order = ["clean", "pose", "capture"]
        named = sorted(config["conditions"], key=lambda c: order.index(c) if c in order else len(order))
        parts.append(f"--conditions {','.join(named)}")
    parts.append(f"--split {config.get('split', 'holdout')}")
    if config.get("preset") not in (None, "embedded"):
        parts.append(f"--preset {config['preset']}")
    parts.append(f"--output docs/eval/{name}")
    return " ".join(parts)


def machine(config: dict) -> str:
    threads = config.get("torch_threads")
    where = config.get("machine") or "not recorded"
    return f"{where}; torch threads: {threads}" if threads is not None else where


def seeds_text(config: dict) -> str:
    seeds = config.get("seeds")
    if isinstance(seeds, list):
        return f"{len(seeds)} ({', '.join(str(s) for s in seeds)})" if len(seeds) <= 5 else str(len(seeds))
    return str(seeds)


# -- writing --------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _columns(entries: list[dict], columns=COLUMNS) -> list[tuple[str, str]]:
    """The metric columns any entry reports (a run made before a metric existed lacks its key)."""
    return [(key, title) for key, title in columns if any(key in entry for entry in entries)]


def run_section(name: str, data: dict, title: str, note: str, preset: dict) -> list[str]:
    config, results = data["config"], data["results"]
    lines = []
    for category in categories(results):
        rows = defect_rows(results, category)
        columns = _columns([entry for _, entry in rows])
        lines += [f"### {title}", "",
                  f"- command: `{eval_command(name, data)}`",
                  f"- run: `docs/eval/{name}`, set `{category}`, seeds {seeds_text(config)}, "
                  f"test images `{config.get('split') or 'all'}`, text map "
                  f"{'trained' if config.get('text_map_trained') else 'none'}",
                  f"- machine: {machine(config)}"]
        differences = preset_differences(config, preset)
        if differences:
            lines.append("- recorded preset differs from `assistant/presets/embedded.json`: " + "; ".join(differences))
        if note:
            lines.append(f"- {note}")
        lines += [""] + _table(["images", "n", *[t for _, t in columns]],
                               [[label, str(entry.get("n_test", "?")), *[cell(entry.get(k)) for k, _ in columns]]
                                for label, entry in rows]) + [""]
    return lines


def summary(runs: dict[str, dict]) -> list[str]:
    rows = []
    for name, set_name, setting, _ in CURRENT:
        data = runs.get(name)
        if not data or not is_eval_run(data):
            continue
        for category in categories(data["results"]):
            entry = data["results"][category]
            seeds = data["config"].get("seeds")
            rows.append([set_name, setting, *[cell(entry.get(k)) for k, _ in COLUMNS[:4]],
                         str(len(seeds) if isinstance(seeds, list) else seeds), str(entry.get("n_test", "?"))])
    return _table(["set", "references", "image AUROC", "pixel AUROC", "AUPRO", "F1-max", "seeds", "n"], rows)


def matrix_section(name: str, data: dict) -> list[str]:
    config = data["config"]
    lines = ["## Benchmark matrix", "",
             f"- command: `{matrix_command(name, config)}`",
             f"- run: `docs/eval/{name}`, test images `{config.get('split', '?')}`, preset `{config.get('preset', '?')}`, "
             f"text map {'trained' if config.get('text_map_trained') else 'none'}, "
             f"{config.get('seeds', '?')} seeds below 16 references and {config.get('many_shot_seeds', '?')} from 16",
             f"- machine: {machine(config)}"]
    if data.get("complete") is False:
        lines.append("- unfinished run: the rows below are those measured before it stopped (`--resume` continues it)")
    lines.append("")
    by_set: dict[str, list[dict]] = {}
    for row in data["rows"]:
        by_set.setdefault(str(row.get("set")), []).append(row)
    for set_name, rows in by_set.items():
        columns = _columns(rows, MATRIX_COLUMNS)
        family = rows[0].get("family") or "-"
        lines += [f"### {set_name} (family: {family})", ""]
        lines += _table(["condition", "references", "seeds", "n", *[t for _, t in columns]],
                        [[str(r.get("condition")), str(r.get("shots")), str(r.get("seeds")), tested(r),
                          *[cell(r.get(k)) for k, _ in columns]] for r in rows]) + [""]
    if any(r.get("defects_out_of_frame") for r in data["rows"]):
        lines += ["n: images scored; \"+ k out\": anomalous images left out because the capture change cut their "
                  "defect out of the frame (less than half of it left; docs/protocol.md, capture changes).", ""]
    return lines


def tested(row: dict) -> str:
    """A matrix row's image count, and how many anomalous images its condition left out."""
    out = row.get("defects_out_of_frame") or 0
    return f"{row.get('n_test', '?')} + {out} out" if out else str(row.get("n_test", "?"))


PROFILE_FILE = "profile_benchmark.json"
MOSAIC_SUFFIX = "_mosaic_compare.json"


def profile_section(data: dict) -> list[str]:
    """`eval/profile_benchmark.py`: a profile of many good images, and a 4096 x 3000 image."""
    rows = [["good images in the profile", str(data.get("good_images"))],
            ["profile create", f"{data.get('profile_create_s')} s"],
            ["profile load (beyond model loading)", f"{data.get('profile_load_s')} s"],
            ["profile size on disk", f"{data.get('profile_bytes', 0) / 1e6:.1f} MB"],
            ["detect with the profile, median", f"{data.get('detect_with_profile_ms')} ms"],
            ["largest score difference, profile vs its images", f"{data.get('max_score_diff')}"]]
    if data.get("large_size"):
        width, height = data["large_size"]
        rows += [[f"{width} x {height} image: one-image profile create ({data.get('large_tiles')} tiles)",
                  f"{data.get('large_profile_create_s')} s"],
                 [f"{width} x {height} image: detect with that profile, median of 2", f"{data.get('large_detect_s')} s"]]
    return (["## Profiles and large images", "",
             f"- command: `{data.get('command', 'python -m eval.profile_benchmark')}`",
             f"- data: `{data.get('data')}`; machine: {machine(data)}", ""]
            + _table(["figure", "value"], rows) + [""])


def mosaic_section(name: str, data: dict) -> list[str]:
    """`eval/mosaic_compare.py`: mosaics scored in tiles against the same cells scored one at a time."""
    lines = [f"### {name[:-len(MOSAIC_SUFFIX)]} mosaics: tiled vs one cell at a time", "",
             f"- command: `{data.get('command', 'python -m eval.mosaic_compare')}`; run: `docs/eval/{name}`",
             f"- machine: {machine(data)}", ""]
    rows = []
    for result in data.get("results", []):
        image, pixel = result.get("image_auroc", {}), result.get("pixel_auroc", {})
        verdict, peak = result.get("verdict_accuracy", {}), result.get("peak_in_anomalous_cell", {})
        for way, image_key, pixel_key, decided in (
                ("in tiles: highest tile score, map stitched by max", "tiled", "tiled max", "tiled"),
                ("in tiles: peak of the map stitched by mean", "tiled_peak_mean", "tiled mean", None),
                ("one cell at a time", "per_cell", "per cell", "per_cell")):
            rows.append([way, str(result.get("n_test")), _percent(image.get(image_key)), _percent(pixel.get(pixel_key)),
                         _percent(verdict.get(decided)), _percent(peak.get(decided))])
    return lines + _table(["scored", "n", "image AUROC", "pixel AUROC", "verdict", "peak in the anomalous cell"], rows) + [""]


def _percent(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def line_scale_sections(runs: dict[str, dict]) -> list[str]:
    lines = profile_section(runs[PROFILE_FILE]) if PROFILE_FILE in runs else []
    mosaics = [name for name in runs if name.endswith(MOSAIC_SUFFIX)]
    if mosaics and not lines:
        lines = ["## Profiles and large images", ""]
    for name in mosaics:
        lines += mosaic_section(name, runs[name])
    return lines


def busy(machine_facts: dict) -> bool:
    """Whether other work was running when a benchmark started (1-minute load above half a core):
    on 2 cores one concurrent job doubles every time measured."""
    return float(machine_facts.get("load_average_1min") or 0.0) > 0.5


BENCH_FILE = "bench.json"
MEMORY_FILE = "memory_benchmark.json"


def bench_section(data: dict) -> list[str]:
    """`anomaly-assistant bench --json`: ms per image by stage, reference count and backend, beside
    anomalib's PatchCore, and the issue's speed targets read from the same run."""
    machine_info = data.get("machine", {})
    lines = ["### Latency by stage (`anomaly-assistant bench`)", "",
             f"- command: `{data.get('command') or 'anomaly-assistant bench'}`; images: `{data.get('folder')}`, "
             f"{data.get('queries')} queries x {data.get('repeats')} timed passes, medians",
             f"- machine: {machine_info.get('cpus')} CPUs ({machine_info.get('cpu')}"
             + (f", similarities in {machine_info['similarities']}" if machine_info.get("similarities") else "")
             + "), torch threads "
             f"{machine_info.get('torch_threads')}, 1-minute load average at the start {machine_info.get('load_average_1min')}"
             + ("; **the machine was busy: these times are inflated**" if busy(machine_info) else ""), ""]
    rows = []
    for backend, report in data.get("backends", {}).items():
        for shots, row in report.get("shots", {}).items():
            batch = next((v for key, v in row.items() if key.startswith("batch")), None)
            rows.append([backend, str(shots), f"{row.get('build_s', 0):.1f}", *(f"{row.get(f'{stage}_ms', 0):.1f}" for stage in
                         ("decode", "prepare", "encode", "maps_score", "regions", "detect")), f"{batch:.1f}" if batch else "-"])
    anomalib = data.get("anomalib", {})
    for shots, row in anomalib.get("shots", {}).items():
        rows.append(["anomalib PatchCore", str(shots), f"{row.get('build_s', 0):.1f}", "-", "-", "-", "-", "-",
                     f"{row.get('ms', 0):.1f}", "-"])
    lines += _table(["backend", "references", "build s", "decode", "prepare", "encode", "maps + score", "regions",
                     "detect (end to end)", "batch of 8, per image"], rows) + [""]
    if "skipped" in anomalib:
        lines += [f"anomalib's PatchCore was skipped: {anomalib['skipped']}.", ""]
    return lines + bench_targets(data)


# Backends compared with float32 PyTorch; the 0.5 x target is for the quantised one.
FAST_BACKENDS = (("onnx-int8", "INT8 ONNX", " (target 0.5 x)"), ("openvino", "float32 OpenVINO", ""))


def bench_targets(data: dict) -> list[str]:
    """The speed targets of the run, each with the figures it compares."""
    torch_shots = data.get("backends", {}).get("torch", {}).get("shots", {})
    targets = []
    if data.get("detect_ms") is not None:
        detect = float(data["detect_ms"])
        targets.append(f"end to end, 1 reference: {detect:.1f} ms (target 150 ms)")
        if data.get("anomalib_patchcore_ms") is not None:
            targets.append(f"against anomalib's PatchCore in the same run: {detect:.1f} vs {float(data['anomalib_patchcore_ms']):.1f} ms")
    first = next(iter(torch_shots), None)
    for backend, label, target in FAST_BACKENDS:
        fast = data.get("backends", {}).get(backend, {}).get("shots", {})
        if first is not None and first in fast:
            ratio = fast[first]["detect_ms"] / torch_shots[first]["detect_ms"]
            targets.append(f"{label} against float32 PyTorch, end to end: {ratio:.2f} x{target}")
    if first is not None and "64" in torch_shots:
        ratio = torch_shots["64"]["maps_score_ms"] / torch_shots[first]["maps_score_ms"]
        targets.append(f"maps + score at 64 references against {first}: {ratio:.1f} x (target 2 x); "
                       f"64-reference build {torch_shots['64']['build_s']:.1f} s (target 60 s)")
    return ["Targets (issue \"Speed on a CPU\"), read from this run:", ""] + [f"- {t}" for t in targets] + [""] if targets else []


def memory_section(data: dict) -> list[str]:
    """`eval/memory_benchmark.py`: resident memory of the app and of inspect."""
    rows = [["app.py once it serves its page", f"{data.get('app_after_start_mib')} MiB", f"started in {data.get('app_start_s')} s"],
            ["app.py after one answer (language model loaded, one reference)", f"{data.get('app_after_answer_mib')} MiB",
             f"peak {data.get('app_peak_mib')} MiB; answer in {data.get('app_first_answer_s')} s"],
            [f"inspect over {data.get('inspect_images')} images, one reference, with answers",
             f"peak {data.get('inspect_peak_mib')} MiB", f"{data.get('inspect_images_per_second')} images/s, "
             f"{data.get('inspect_wall_s')} s with model loading"]]
    machine_info = data.get("machine", {})
    return (["### Memory (`eval/memory_benchmark.py`)", "",
             f"- command: `{data.get('command')}`",
             f"- machine: {machine_info.get('cpus')} CPUs, {machine_info.get('threads')} threads, "
             f"1-minute load average at the start {machine_info.get('load_average_1min')}"
             + ("; **the machine was busy: these figures are inflated**" if busy(machine_info) else ""), ""]
            + _table(["process", "resident memory", "notes"], rows) + [""])


KINDS_SUFFIX = "_kinds.json"
KIND_COLUMNS = (("defect_kind_accuracy", "kind accuracy"), ("open_set_rejection", "left-out kind rejected"),
                ("open_set_known_accuracy", "known kinds then correct"), ("kind_confidence_ece", "confidence ECE"))


def is_kinds_run(name: str, data: dict) -> bool:
    return name.endswith(KINDS_SUFFIX) and all(isinstance(v, dict) and "defect_shots" in v for v in data.values())


def kinds_section(runs: dict[str, dict]) -> list[str]:
    """`anomaly-assistant eval-kinds`: kind accuracy (balanced over kinds) and open-set rejection, per
    set, half of the anomalous test images and examples per kind; query regions from the masks or
    from the engine's own strongest region."""
    rows = []
    for name, data in runs.items():
        if not is_kinds_run(name, data):
            continue
        category = name[:-len(KINDS_SUFFIX)]
        for key, entry in data.items():
            half = entry.get("subset", "all")
            for regions, figures in (("mask", entry), ("engine", entry.get("engine_region") or {})):
                if "defect_kind_accuracy" in figures:
                    rows.append([f"`{name}`", category, half, regions, str(entry["defect_shots"]), str(entry["seeds"]),
                                 str(entry.get("queries", "?")), *[cell(figures.get(k)) for k, _ in KIND_COLUMNS]])
    if not rows:
        return []
    return (["## Defect kinds (`anomaly-assistant eval-kinds`)", "",
             "- command: `anomaly-assistant eval-kinds --data ../shared/datasets --category SET --defect-shots 1 3 5 "
             "--seeds 5 --subset dev holdout --regions both --output docs/eval/SET_kinds.json`",
             "- K labelled examples per kind drawn from the set's anomalous test images of that half, the rest of "
             "the half as queries; the method's constants were chosen on `dev` (docs/method.md, \"Defect kinds "
             "from labelled examples\"). Regions: `mask` describes each query by its ground-truth mask, `engine` by "
             "the engine's strongest region against one reference. Rejection: one kind left out of the examples, "
             "the share of its images called \"none of these\", while the known kinds are then still correct as "
             "the next column says.", ""]
            + _table(["run", "set", "half", "regions", "K", "seeds", "queries", *[t for _, t in KIND_COLUMNS]], rows)
            + [""])


def speed_sections(runs: dict[str, dict]) -> list[str]:
    lines = []
    if BENCH_FILE in runs:
        lines += bench_section(runs[BENCH_FILE])
    if MEMORY_FILE in runs:
        lines += memory_section(runs[MEMORY_FILE])
    return ["## Speed and memory", ""] + lines if lines else []


def variants_section(runs: dict[str, dict]) -> list[str]:
    current = {name for name, *_ in CURRENT}
    rows = []
    for name, data in runs.items():
        if name in current or not is_eval_run(data):
            continue
        config, results = data["config"], data["results"]
        for category in categories(results):
            entry = results[category]
            rows.append([f"`{name}`", category, str(config.get("shots", "?")), seeds_text(config).split(" ")[0],
                         " / ".join(cell(entry.get(k)).split(" ")[0] for k in ("image_auroc", "pixel_auroc", "aupro")),
                         VARIANTS.get(name[:-5], "not described")])
    if not rows:
        return []
    return (["## Other runs", "",
             "Variants and ablations that `docs/method.md` cites, each measured with the engine and preset it "
             "records, which differ from the shipped ones as the last column says. They are evidence for "
             "design choices, not current figures.", ""]
            + _table(["run", "set", "references", "seeds", "image / pixel / AUPRO", "differs from the shipped engine"], rows)
            + [""])


HEADER = f"""# Benchmarks

<!-- Generated from docs/eval/*.json by `{COMMAND}`. Do not edit by hand: rerun it. -->

Figures of the shipped engine (preset `embedded`: EfficientNet-Lite2 and the trained text map in
`checkpoints/embedded`) on the evaluation sets: one table per set and number of references, each
with the command that reproduces it and the machine it ran on.

This file is generated from the JSON files the eval writes (`docs/eval/*.json`):

```bash
{COMMAND}           # rewrite docs/benchmarks.md
{COMMAND} --check   # exit 1 when it differs from the runs
```

`tests/test_benchmarks_doc.py` runs the check and compares every figure with its JSON file. After
rerunning an eval command, rerun the generator and commit both.

- **image AUROC**: defective vs good images ranked by the image score; **pixel AUROC** and **AUPRO**
  (false-positive rate up to 30 %): the map against the ground-truth masks, with the longest side
  scaled to 256 px; **F1-max**: the best F1 over score thresholds; **verdict**: balanced accuracy
  of the yes/no the assistant states (score above the engine's label-free threshold), in runs that
  record it. All in percent, mean ± std over seeds (the std of one seed is 0).
- Rows per defect type score that type's images against all good test images.
- Sets: `tire` (MVTec 3D-AD RGB images, an object on a plain background), `magnetic_tile` (a ground
  surface filling the frame), `textile` (`conformal-clip-data`, simulated fabric with image labels
  only, so no pixel metrics). The first two are read from `../shared/datasets` and never copied
  into the repository. How sets, splits and seeds are used: `docs/protocol.md`.
- A table is as current as its run: a change to the engine, the preset or the checkpoint that can
  move a figure needs its command rerun. The machine's speed changes no figure here; latency is
  measured by `anomaly-assistant bench` (`docs/usage.md`).
"""


def render(runs: dict[str, dict], preset: dict) -> str:
    lines = [HEADER, "## Summary", "", "All test images of each set unless the set names a half (docs/protocol.md); the "
             "sections below give each run's command and the figures per defect type.", ""]
    lines += summary(runs) + [""]
    missing = [name for name, *_ in CURRENT if name not in runs or not is_eval_run(runs[name])]
    if missing:
        lines += ["Runs named by `eval/benchmarks_doc.py` but missing from `docs/eval`: "
                  + ", ".join(f"`{m}`" for m in missing), ""]
    lines += ["## Runs of the shipped engine", ""]
    for name, set_name, setting, note in CURRENT:
        if name in runs and is_eval_run(runs[name]):
            lines += run_section(name, runs[name], f"{set_name} · {setting}", note, preset)
    if MATRIX_FILE in runs and is_matrix(runs[MATRIX_FILE]):
        lines += matrix_section(MATRIX_FILE, runs[MATRIX_FILE])
    lines += line_scale_sections(runs)
    lines += kinds_section(runs)
    lines += speed_sections(runs)
    lines += variants_section(runs)
    return "\n".join(lines).rstrip("\n") + "\n"


def generate(eval_dir: Path = EVAL_DIR, preset_path: Path = PRESET) -> str:
    return render(load_runs(eval_dir), json.loads(preset_path.read_text(encoding="utf-8")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write docs/benchmarks.md from docs/eval/*.json.")
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs from what the runs give")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where to write (default: docs/benchmarks.md)")
    parser.add_argument("--eval-dir", type=Path, default=EVAL_DIR, help="the runs (default: docs/eval)")
    args = parser.parse_args(argv)
    text = generate(args.eval_dir)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else ""
        if current != text:
            print(f"{args.output} is stale: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
