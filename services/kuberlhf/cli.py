"""The `kuberlhf` command line: run, validate, demo-assets, spec-docs.

User mistakes (a bad field, a missing file, a reward function that fails) print one clear message and exit
with code 1, without a traceback; bugs keep their traceback. Heavy imports (torch, Ray) happen only in the
commands that need them, so `validate` is quick and works where only the spec's dependencies are installed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kuberlhf.errors import UserError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kuberlhf",
        description="Run RLHF jobs (RLHFJob YAML) on an embedded local Ray or an existing Ray cluster.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run an RLHFJob",
        description="Validate the job, check its files before anything starts, then run it on the Ray "
        "cluster at $RAY_ADDRESS, or on an embedded local Ray when RAY_ADDRESS is unset.",
    )
    run.add_argument("file", help="RLHFJob YAML file")
    _add_overrides(run)
    run.add_argument("--dashboard", action=argparse.BooleanOptionalAction, default=True,
                     help="start the Ray dashboard with the embedded Ray (default: on)")
    run.set_defaults(handler=_run)

    validate = commands.add_parser(
        "validate",
        help="check RLHFJob files",
        description="Check each file against the RLHFJob spec, then (unless --schema-only) check that its "
        "model directories, data files and reward function exist on this machine.",
    )
    validate.add_argument("files", nargs="+", help="RLHFJob YAML files")
    _add_overrides(validate)
    validate.add_argument("--schema-only", action="store_true",
                          help="check the spec only, not the files it names (for jobs meant for a cluster)")
    validate.set_defaults(handler=_validate)

    demo = commands.add_parser(
        "demo-assets",
        help="build the tiny demo model and the addition task data",
        description="Build a tiny Llama with a locally made tokenizer, warm it up on the addition task, and "
        "write DIR/model, DIR/train.jsonl and DIR/eval.jsonl. Does nothing if they already exist.",
    )
    demo.add_argument("dir", help="output directory")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_demo_assets)
    docs = commands.add_parser(
        "spec-docs",
        help="print the RLHFJob field reference (Markdown)",
        description="Print the field reference generated from the spec (the source of docs/spec.md).",
    )
    docs.set_defaults(handler=_spec_docs)
    return parser


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override a field by its dotted path, e.g. --set spec.training.steps=50 (repeatable; "
                        "the value is read as YAML, `PATH=` sets null)")


def _spec_docs(args: argparse.Namespace) -> int:
    from kuberlhf.spec_docs import render_spec_markdown

    print(render_spec_markdown(), end="")
    return 0


def _run(args: argparse.Namespace) -> int:
    from kuberlhf.jobfile import load_job
    from kuberlhf.launcher import run_job

    job = load_job(args.file, args.overrides)
    summary = run_job(job, dashboard=args.dashboard)
    return 0 if summary.get("status") == "succeeded" else 1


def _validate(args: argparse.Namespace) -> int:
    from kuberlhf.jobfile import load_job

    failed = 0
    for path in args.files:
        try:
            job = load_job(path, args.overrides)
            if not args.schema_only:
                from kuberlhf.preflight import check_local_inputs

                check_local_inputs(job)
        except UserError as err:
            failed += 1
            print(f"error: {err}", file=sys.stderr)
            continue
        print(f"{path}: ok ({job.spec.algorithm}, {job.spec.training.steps} steps)")
    return 1 if failed else 0


def _demo_assets(args: argparse.Namespace) -> int:
    from kuberlhf.quiet import quiet_libraries

    quiet_libraries()
    from kuberlhf.tasks.addition import build_demo_assets

    paths = build_demo_assets(args.dir, seed=args.seed)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
