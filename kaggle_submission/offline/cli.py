"""One CLI: `python -m kaggle_submission {dry-run,presets,...}`.

The engine may start worker processes with the spawn method (vLLM does), so everything runs
under the `if __name__ == "__main__":` guard below.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    from ..presets import parse_overrides

    return parse_overrides(pairs)


def cmd_dry_run(args: argparse.Namespace) -> int:
    from .dryrun import DryRunOptions, dry_run

    changes = _overrides(args.set)
    if args.n is not None:
        changes["engine.num_rollouts"] = args.n
    if args.m is not None:
        changes["engine.max_calls"] = args.m
    options = DryRunOptions(
        data=args.data,
        preset=args.preset,
        out_dir=Path(args.out),
        limit=args.limit,
        shuffle_seed=None if args.shuffle_seed < 0 else args.shuffle_seed,
        model=args.model,
        backend=args.backend,
        overrides=changes,
        time_limit_s=args.time_limit,
        ablate_code=args.ablate_code,
    )
    if args.servers or args.concurrency is not None or args.resume is not None:
        from .sharded import ShardedOptions, run_sharded

        result = run_sharded(
            ShardedOptions(
                run=options,
                servers=args.servers,
                concurrency=args.concurrency or 4,
                resume=args.resume is not False,
                problem_cap_s=args.problem_cap,
            )
        )
        return 1 if result.missing else 0
    dry_run(options)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from ..presets import PRESETS, get_preset

    if args.name:
        print(json.dumps(get_preset(args.name).to_dict(), indent=2, default=str))
        return 0
    for preset in PRESETS.values():
        print(f"{preset.name:12s} {preset.description}")
    return 0


def cmd_capacity(args: argparse.Namespace) -> int:
    from ..presets import PRESETS
    from .capacity import ModelShape, compare, report

    if args.compare:
        models = [m.strip() for m in args.compare.split(",") if m.strip()]
        print(compare(models, args.hardware, args.length, bits=args.bits or 8))
        return 0
    shape = ModelShape.from_dir(args.model) if args.model else None
    names = [args.preset] if args.preset else [p for p in PRESETS if PRESETS[p].hardware != "cpu"]
    print("\n\n".join(report(name, shape, args.bits) for name in names))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kaggle_submission", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    dry = sub.add_parser("dry-run", help="the Kaggle code path on a validation set")
    dry.add_argument(
        "--data",
        default="demo",
        help="shipped set (aimo1-train, aime-2022-2024, amc12-2022-2023, "
        "aimo3-reference), a CSV path, or 'demo' (default)",
    )
    dry.add_argument("--preset", default="demo-cpu", help="preset name or file (default demo-cpu)")
    dry.add_argument("--out", default="runs/dry-run", help="output folder")
    dry.add_argument("--limit", type=int, help="first N problems only")
    dry.add_argument(
        "--shuffle-seed", type=int, default=0, help="serving order; -1 keeps file order"
    )
    dry.add_argument("--model", help="model directory replacing the preset's weights")
    dry.add_argument("--backend", help="transformers | vllm | ... replacing the preset's")
    dry.add_argument("-n", type=int, help="rollouts per problem (N)")
    dry.add_argument("-m", type=int, help="generation calls per rollout (M)")
    dry.add_argument("--time-limit", type=float, help="whole-run limit in seconds")
    dry.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="preset override, e.g. engine.temperature=0.6 (repeatable)",
    )
    dry.add_argument(
        "--servers",
        help="OpenAI-compatible server URLs, comma-separated: a "
        "sharded, resumable dry run over them",
    )
    dry.add_argument("--concurrency", type=int, help="problems at once (sharded; default 4)")
    dry.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="skip problems already in OUT/traces.jsonl (sharded; default on)",
    )
    dry.add_argument("--problem-cap", type=float, help="seconds per problem (sharded)")
    dry.add_argument(
        "--ablate-code",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also solve every problem with code execution off and report both "
        "(default: on for the demo model only)",
    )
    dry.set_defaults(func=cmd_dry_run)

    presets = sub.add_parser("presets", help="list presets, or show one as JSON")
    presets.add_argument("name", nargs="?")
    presets.set_defaults(func=cmd_presets)

    sub.add_parser("manifest", help="weights manifest: fill | verify | show (see manifest.py)")

    capacity = sub.add_parser("capacity", help="KV cache capacity per preset and layout")
    capacity.add_argument("--preset", help="one preset (default: every GPU preset)")
    capacity.add_argument("--model", help="model directory whose config.json to use")
    capacity.add_argument("--bits", type=int, help="weight bits (default from the preset)")
    capacity.add_argument(
        "--compare",
        help="models side by side instead (manifest names or model directories, comma-separated)",
    )
    capacity.add_argument("--hardware", default="t4x2", help="with --compare (default t4x2)")
    capacity.add_argument(
        "--length", type=int, default=16384, help="with --compare: rollout tokens (default 16384)"
    )
    capacity.set_defaults(func=cmd_capacity)

    from .tune import add_tune_parser

    add_tune_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["manifest"]:
        from ..manifest import main as manifest_main

        return manifest_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
