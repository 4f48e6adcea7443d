"""`mamclap data ...`: fetch the Debian sources, build the source bank, build and inspect kits.

    mamclap data setup                          download and unpack the Debian packages (debian.setup)
    mamclap data bank                           build the source bank ($MAMCLAP_DATA/bank)
    mamclap data build --size tiny --seed 0     bank if missing, HEAR suite, SUPERB layouts, corpus, manifest
                       [--finetune]             ... and the fine-tuning sets in their real layouts
                       [--corpus-clips N]       ... with a corpus of N clips, in kit-<size>-s<seed>-c<N>/
                       [--corpus-bank DIR]      ... with the corpus mixed from a corpus bank, in a "-cb" folder
                       [--corpus-only]          ... only that corpus (the bank need not be there yet)
    mamclap data corpus-bank --size medium      the corpus bank (pretraining-only sources, Ogg Opus) for a
                                                built kit's holdout ($MAMCLAP_DATA/corpus-bank-<size>-s<seed>)
    mamclap data show --size tiny --seed 0      what a kit holds: counts, hours, sizes, paths
    mamclap data check --size tiny --seed 0     re-verify the no-overlap check and every file's sha256
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training.args import out_dir, positive_int, seed
from training.kit import build


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="the offline sound kit: bank, pretraining corpus, HEAR and SUPERB sets",
                              description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=out_dir, default=None,
                   help="data root (default $MAMCLAP_DATA or ./data)")
    p.add_argument("--cache-dir", type=out_dir, default=None,
                   help="download cache (default $MAMCLAP_CACHE or ./cache)")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="STEP")

    s = sub.add_parser("setup", help="download and unpack the Debian packages the bank is made from")
    s.add_argument("--install-tools", action=argparse.BooleanOptionalAction, default=True,
                   help="apt-get install the synthesizers (espeak-ng, flite, ...) and the test suite's "
                        "chromium and pdflatex (default: on)")
    s.set_defaults(func=_setup)

    s = sub.add_parser("bank", help="build the source bank (data/bank)")
    s.add_argument("--workers", type=positive_int, default=2, help="rendering processes (1: in this process)")
    s.set_defaults(func=_bank)

    s = sub.add_parser("corpus-bank", help="build the corpus bank: pretraining-only source audio beside the bank")
    s.add_argument("--size", choices=list(build.SIZES), default="medium", help="the kit whose holdout it respects")
    s.add_argument("--seed", type=seed, default=0, help="that kit's seed (also the plan's)")
    s.add_argument("--workers", type=positive_int, default=2, help="rendering processes")
    s.add_argument("--limit", type=positive_int, default=None, help="at most this many clips per source (tests)")
    s.add_argument("--out", type=out_dir, default=None, help="default <data-dir>/corpus-bank-<size>-s<seed>")
    s.set_defaults(func=_corpus_bank)

    for name, func, text in (("build", _build, "build a kit (reuses complete stages)"),
                             ("show", _show, "print what a kit holds"),
                             ("check", _check, "re-verify a kit: no overlap with test splits, file checksums")):
        s = sub.add_parser(name, help=text)
        s.add_argument("--size", choices=list(build.SIZES), default="tiny", help="kit size")
        s.add_argument("--seed", type=seed, default=0, help="kit seed (which clips, splits and augmentations)")
        s.add_argument("--corpus-clips", type=positive_int, default=None,
                       help="a corpus of this many clips instead of the size's (kit folder kit-<size>-s<seed>-c<N>; "
                            "the same HEAR suite, SUPERB layouts and held-out material)")
        s.add_argument("--corpus-bank", type=Path, default=None,
                       help="mix the corpus from this corpus bank (`mamclap data corpus-bank`); kit folder ends -cb")
        if name == "build":
            s.add_argument("--corpus-only", action="store_true",
                           help="with --corpus-bank: build the corpus alone (no bank needed); a later full build "
                                "reuses it and checks it")
            s.add_argument("--workers", type=positive_int, default=2,
                           help="processes for the bank, the HEAR tasks and SUPERB layouts, and the corpus")
            s.add_argument("--audioset-layout", action="store_true",
                           help="also write the corpus in AudioSet's CSV + audio folder layout")
            s.add_argument("--finetune", action="store_true",
                           help="also write the fine-tuning sets (AudioSet, ESC-50, Speech Commands V2) in their "
                                "real layouts under finetune/")
            s.add_argument("--bank-dir", type=out_dir, default=None, help="source bank (default <data-dir>/bank)")
        s.set_defaults(func=func)


def _dirs(args) -> tuple[Path, Path]:
    return args.data_dir or build.data_root(), args.cache_dir or build.cache_root()


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _setup(args) -> int:
    from training.kit.debian import setup
    _logging()
    setup(_dirs(args)[1], install_tools=args.install_tools)
    return 0


def _bank(args) -> int:
    from training.kit.bank import build_bank
    _logging()
    data, cache = _dirs(args)
    summary = build_bank(data / "bank", cache, seed=0, workers=args.workers)
    print(json.dumps({k: v for k, v in summary.items() if k != "skipped"}, indent=1, default=str))
    return 0


def _corpus_bank(args) -> int:
    from training.kit.corpus_bank import build_corpus_bank
    _logging()
    data, cache = _dirs(args)
    kit = build.kit_dir(args.size, args.seed, data)
    if not (kit / "hear" / "stage.json").is_file():  # a kit of another corpus size has the same holdout
        kit = next((k for k in sorted(data.glob(f"{kit.name}-c*")) if (k / "hear" / "stage.json").is_file()
                    and not k.name.endswith("-cb")), kit)
    out = args.out or data / f"corpus-bank-{args.size}-s{args.seed}"
    try:
        summary = build_corpus_bank(out, kit, data / "bank", cache, seed=args.seed, workers=args.workers,
                                    limit=args.limit)
    except (FileNotFoundError, ValueError) as err:
        print(f"corpus-bank: {err}", file=sys.stderr)
        return 1
    print(json.dumps({k: summary[k] for k in ("kit", "plan", "clips", "seconds", "total_bytes", "build_seconds")},
                     indent=1))
    return 0


def _build(args) -> int:
    _logging()
    data, cache = _dirs(args)
    if args.corpus_only and args.corpus_bank is None:
        print("data build: --corpus-only needs --corpus-bank DIR", file=sys.stderr)
        return 2
    manifest = build.build_kit(args.size, args.seed, data, cache, workers=args.workers,
                               audioset_layout=args.audioset_layout, bank_dir=args.bank_dir,
                               finetune_layouts=args.finetune, corpus_clips=args.corpus_clips,
                               corpus_bank=args.corpus_bank, corpus_only=args.corpus_only)
    kit = build.kit_dir(args.size, args.seed, data, args.corpus_clips, args.corpus_bank is not None)
    if args.corpus_only:
        print(f"built {kit / 'corpus'}: {manifest['clips']} clips, {manifest['hours']} hours")
    else:
        print(f"built {kit} in stages {manifest['timings_s']}")
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _show(args) -> int:
    kit = build.kit_dir(args.size, args.seed, _dirs(args)[0], args.corpus_clips, args.corpus_bank is not None)
    path = kit / "manifest.json"
    if not path.is_file():
        more = f" --corpus-clips {args.corpus_clips}" if args.corpus_clips else ""
        print(f"no built kit at {kit}: run `mamclap data build --size {args.size} --seed {args.seed}{more}`",
              file=sys.stderr)
        return 1
    m = json.loads(path.read_text())
    print(f"{m['kit']}: {m['purpose']}  (bank {m['bank']['path']}: {m['bank']['clips']} clips "
          f"{m['bank']['counts']})")
    print(f"{'data set':34s} {'clips':>7s} {'hours':>8s} {'size':>10s}  path")
    for name, d in m["datasets"].items():
        clips = d.get("clips", d.get("files", 0))
        size = _human(d["bytes"]) if "bytes" in d else "-"
        hours = f"{d['hours']:.3f}" if "hours" in d else "-"
        print(f"{name:34s} {clips:>7} {hours:>8s} {size:>10s}  {d['path']}")
    by_kind = m["datasets"].get("corpus", {}).get("sources_by_category")
    if by_kind:  # kits built before the corpus reported it lack it
        print("corpus source recordings: " + ", ".join(
            f"{k} {c['recordings']} ({c['hours']:.3f} h, {c['groups']} groups)" for k, c in by_kind.items()))
    ov = m["no_overlap"]
    print(f"no overlap: corpus uses {ov['corpus_bank_ids']} bank clips, {ov['excluded_bank_ids']} held out, "
          f"shared {len(ov['intersection'])}")
    print(f"stage timings (s): {m['timings_s']}")
    for w in m.get("warnings", []):
        print(f"warning: {w}")
    return 0


def _check(args) -> int:
    kit = build.kit_dir(args.size, args.seed, _dirs(args)[0], args.corpus_clips, args.corpus_bank is not None)
    try:
        result = build.check_kit(kit)
    except (build.OverlapError, RuntimeError, FileNotFoundError) as err:
        print(f"check FAILED: {err}", file=sys.stderr)
        return 1
    print(f"{result['kit']}: {result['files']} files verified; corpus uses {result['no_overlap']['corpus_bank_ids']} "
          f"bank clips, none of the {result['no_overlap']['test_bank_ids']} held out for evaluation")
    return 0
