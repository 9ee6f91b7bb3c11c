"""`anomaly-assistant profile create|list|show|delete`: named reference sets (assistant/profiles.py)."""
from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from pathlib import Path

from .cli_support import add_model_args, find_images, load_assistant

log = logging.getLogger("assistant.profile")


def add_profile_command(sub) -> None:
    parser = sub.add_parser("profile", help="save a product's reference set under a name; list, show, delete",
                            description="Profiles hold a memory bank, its label-free threshold and described defect "
                                        "examples, built once from good images ($ANOMALY_ASSISTANT_HOME/profiles).")
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="build a profile from a folder of good images")
    create.add_argument("name", help="profile name: letters, digits, '.', '_' or '-'")
    create.add_argument("--good", required=True, type=Path, help="folder of good images of the product (recursive)")
    create.add_argument("--defects", type=Path, default=None, metavar="DIR",
                        help="labelled defect examples, a folder per kind (DIR/<kind>/*.png, masks optional), or a .zip of it")
    create.add_argument("--class-name", default="object", help="what the product is, e.g. tire (default: object)")
    create.add_argument("--replace", action="store_true", help="replace a profile of that name")
    add_model_args(create)
    create.set_defaults(handler=run_create)
    listing = actions.add_parser("list", help="the saved profiles")
    listing.set_defaults(handler=run_list)
    show = actions.add_parser("show", help="what a profile was made from and with")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print profile.json")
    show.set_defaults(handler=run_show)
    delete = actions.add_parser("delete", help="delete a profile")
    delete.add_argument("name")
    delete.set_defaults(handler=run_delete)


def run_create(args) -> int:
    from . import profiles

    logging.getLogger("assistant").setLevel(logging.INFO)
    profiles.check_free(args.name, args.replace)  # before the models load
    good = find_images(args.good)
    started = time.time()
    with contextlib.redirect_stdout(sys.stderr):
        assistant = load_assistant(args.preset, args.checkpoint, use_llm=False)
        info = profiles.create(assistant.engine, args.name, good, args.class_name, args.defects, args.replace,
                               progress=log.info)
    print(f"profile {args.name!r}: {info['n_good_images']} good images, threshold {info['threshold']:.4f}"
          f"{' (estimated: one image)' if info['threshold_estimated'] else ''}, built in {time.time() - started:.1f} s")
    print(f"saved in {profiles.profile_dir(args.name)}")
    return 0


def run_list(args) -> int:
    from . import profiles

    found = profiles.names()
    if not found:
        print(f"no profiles in {profiles.profiles_home()} (make one with 'anomaly-assistant profile create')")
        return 0
    for name in found:
        try:
            print(summary_line(profiles.read_info(name)))
        except profiles.ProfileError as exc:
            print(f"{name}: {exc}")
    return 0


def summary_line(info: dict) -> str:
    kinds = info.get("defect_kinds") or {}
    return (f"{info['name']}: {info['class_name']}, {info['n_good_images']} good images"
            f"{', ' + str(len(kinds)) + ' defect kinds' if kinds else ''}, preset {info['preset']}, made {info['created']}")


def run_show(args) -> int:
    from . import profiles

    info = profiles.read_info(args.name)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    tiled = info.get("tiled")
    lines = [
        summary_line(info),
        f"folder:     {profiles.profile_dir(args.name)}",
        f"threshold:  {info['threshold']:.4f}" + (" (estimated from one image)" if info.get("threshold_estimated") else ""),
        f"scoring:    {'tiles at %.2f x (%d tiles)' % (tiled['scale'], tiled['n_tiles']) if tiled else 'one view per image'}",
        f"made with:  preset {info['preset']} ({info['preset_hash']}), version {info['project_version']}",
    ]
    for kind, count in sorted((info.get("defect_kinds") or {}).items()):
        lines.append(f"defects:    {kind}: {count} examples")
    print("\n".join(lines))
    return 0


def run_delete(args) -> int:
    from . import profiles

    print(f"deleted {profiles.delete(args.name)}")
    return 0
