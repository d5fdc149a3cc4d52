"""Training curves from what a run left on disk: metrics.jsonl -> curves.png and a table of the headline metrics.

Used by `kuberlhf report RUN_DIR` and at the end of `kuberlhf run`. It only reads metrics.jsonl and summary.json
and writes PNGs; it never touches Ray, models or checkpoints. matplotlib draws with its Agg backend on a
Figure of its own (no pyplot, no display, no global backend switch).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console
from rich.table import Table

from kuberlhf.errors import UserError

PANEL_INCHES = (6.0, 3.5)  # width, height of one panel
DPI = 100
COLUMNS = 2
# The phases that partition a step's wall time, in step order. Other time/* keys are parts of these (the
# reference and critic inside scoring, the policy update inside training, the weight load inside the next
# step's generation) and stacking them too would count their time twice.
PHASE_ORDER = ("time/generation", "time/scoring", "time/training", "time/evaluation", "time/checkpoint")
SAMPLES_SHOWN = 6  # the newest samples `kuberlhf report` prints
SUMMARY_KEYS = ("reward/mean", "eval/reward_mean", "kl/sequence", "response_length/mean",
                "loss", "eval/loss", "accuracy", "eval/accuracy", "margin", "time/step")


@dataclass(frozen=True)
class Panel:
    """One plot of the grid: `line` against step, with an optional ±`band` around it and `points` (eval)."""

    title: str
    line: str
    band: str | None = None
    points: str | None = None
    stacked: bool = False  # the time/* phases as stacked areas under the `line` (time/step)


PANELS = (
    Panel("reward", "reward/mean", band="reward/std", points="eval/reward_mean"),
    Panel("KL (sequence)", "kl/sequence"),
    Panel("response length (tokens)", "response_length/mean"),
    Panel("loss", "loss", points="eval/loss"),
    Panel("accuracy", "accuracy", points="eval/accuracy"),
    Panel("margin", "margin"),
    Panel("step time (s)", "time/step", stacked=True),
)


class Row(NamedTuple):
    metric: str
    first: float
    last: float
    min: float
    max: float
    mean: float


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line that is not a JSON object is a UserError naming file:line, except
    a last line cut short (a run killed while writing it), which is left out."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (a run writes metrics.jsonl in its output dir after its first step)")
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines) and not path.read_text().endswith("\n"):
                break
            raise UserError(f"{path}:{number}: not valid JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
        records.append(record)
    return records


def series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records that hold a number under `key`; a record without "step" counts from 1."""
    steps, values = [], []
    for index, record in enumerate(records, start=1):
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            steps.append(float(record.get("step", index)))
            values.append(float(value))
    return steps, values


def phase_keys(records: list[dict[str, Any]]) -> list[str]:
    """The phases of PHASE_ORDER the records hold, in step order."""
    found = {key for record in records for key in record}
    return [key for key in PHASE_ORDER if key in found]


def choose_panels(records: list[dict[str, Any]]) -> list[Panel]:
    """The panels whose metric some record holds (online runs get reward/KL/length, offline loss/accuracy/margin)."""
    present = {key for record in records for key in record}
    return [panel for panel in PANELS if panel.line in present]


def plot_run(records: list[dict[str, Any]], out_png: str | Path, title: str) -> Path:
    """One PNG with a grid of the panels `choose_panels` picks, COLUMNS wide, PANEL_INCHES each at DPI."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'kuberlhf[runtime]' (or matplotlib)") from None
    panels = choose_panels(records)
    if not panels:
        raise UserError(f"nothing to plot: none of {', '.join(p.line for p in PANELS)} was recorded")
    columns = min(COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for ax, panel in zip(axes, panels):
        draw_panel(ax, panel, records)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.suptitle(title)
    figure.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=DPI, format="png")
    return out_png


def draw_panel(ax: Any, panel: Panel, records: list[dict[str, Any]]) -> None:
    if panel.stacked:
        draw_phases(ax, records)
    steps, values = series(records, panel.line)
    ax.plot(steps, values, color="black" if panel.stacked else "C0", linewidth=1.2, label=panel.line)
    if panel.band:
        band = dict(zip(*series(records, panel.band)))
        if band:
            pairs = [(s, v, band[s]) for s, v in zip(steps, values) if s in band]
            ax.fill_between([s for s, _, _ in pairs], [v - d for _, v, d in pairs], [v + d for _, v, d in pairs],
                            color="C0", alpha=0.2, label=f"± {panel.band}")
    if panel.points:
        eval_steps, eval_values = series(records, panel.points)
        if eval_steps:
            ax.scatter(eval_steps, eval_values, color="C3", s=18, zorder=3, label=panel.points)
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if len(ax.get_legend_handles_labels()[0]) > 1:
        ax.legend(fontsize="small")


def draw_phases(ax: Any, records: list[dict[str, Any]]) -> None:
    """The time/* phases of each step stacked as areas (a phase a step did not run counts 0)."""
    phases = phase_keys(records)
    timed = [(float(r.get("step", i)), r) for i, r in enumerate(records, start=1) if "time/step" in r]
    if not phases or not timed:
        return
    heights = [[float(record.get(key) or 0.0) for _, record in timed] for key in phases]
    ax.stackplot([step for step, _ in timed], heights, labels=[key.removeprefix("time/") for key in phases],
                 alpha=0.6)


def summarize(records: list[dict[str, Any]]) -> list[Row]:
    """First, last, min, max and mean of each headline metric the records hold."""
    rows = []
    for key in SUMMARY_KEYS:
        values = series(records, key)[1]
        if values:
            rows.append(Row(key, values[0], values[-1], min(values), max(values), sum(values) / len(values)))
    return rows


def summary_table(rows: list[Row], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    for name in Row._fields[1:]:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(row.metric, *(f"{value:.4g}" for value in row[1:]))
    return table


def report_run(run_dir: str | Path, console: Console | None = None) -> list[Path]:
    """curves.png and a table for a run dir, or for each stage of a chained job's dir; the PNGs written."""
    console = console or Console()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such directory (pass a run's output dir, spec.output.dir)")
    if (run_dir / "metrics.jsonl").is_file():
        return [report_one(run_dir, console)]
    stages = stage_dirs(run_dir)
    if not stages:
        raise UserError(f"{run_dir}: no metrics.jsonl here nor in a stage dir below it; is it a run's output dir?")
    return [report_one(stage, console) for stage in stages]


def report_one(run_dir: Path, console: Console) -> Path:
    metrics = run_dir / "metrics.jsonl"
    records = read_metrics(metrics)
    if not records:
        raise UserError(f"{metrics}: empty; the run has not finished a step yet")
    title = run_title(run_dir, len(records))
    records = with_start_evaluation(records, read_summary(run_dir))
    try:
        png = plot_run(records, run_dir / "curves.png", title)
    except UserError as err:
        raise UserError(f"{metrics}: {err}") from None
    console.print(summary_table(summarize(records), title))
    samples = newest_samples(run_dir / "samples.jsonl")
    if samples:
        console.print(samples_table(samples))
    console.print(f"curves: {png}")
    return png


def with_start_evaluation(records: list[dict[str, Any]], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The records behind a step-0 record of the evaluation an online run makes before its first step (kept in
    summary.json as `eval/reward_mean_start`), so the table's first and last eval/reward_mean are the summary's
    start and end and the chart plots it at step 0."""
    evals = summary.get("eval")
    start = evals.get("eval/reward_mean_start") if isinstance(evals, dict) else None
    if not isinstance(start, (int, float)) or isinstance(start, bool):
        return records
    return [{"step": 0, "eval/reward_mean": float(start)}, *records]


def newest_samples(path: Path, count: int = SAMPLES_SHOWN) -> list[dict[str, Any]]:
    """The last `count` records of samples.jsonl (none when the run wrote none; a broken line is skipped, since
    samples are for reading, never for resuming)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines()[-count:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def samples_table(samples: list[dict[str, Any]]) -> Table:
    """Step, reward, prompt (a conversation's last message) and completion of each sample, cut to a line."""
    table = Table(title="newest samples (samples.jsonl)")
    for name, justify in (("step", "right"), ("reward", "right"), ("prompt", "left"), ("completion", "left")):
        table.add_column(name, justify=justify, overflow="ellipsis", no_wrap=name != "completion")
    for sample in samples:
        prompt = sample.get("prompt", "")
        if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
            prompt = prompt[-1].get("content", "")
        reward = sample.get("reward")
        table.add_row(str(sample.get("step", "")), f"{reward:.3g}" if isinstance(reward, (int, float)) else "",
                      _one_line(str(prompt), 60), _one_line(str(sample.get("completion", "")), 200))
    return table


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def stage_dirs(run_dir: Path) -> list[Path]:
    """A chained job's stage dirs that hold metrics.jsonl: in summary.json's order, else oldest metrics first."""
    summary = read_summary(run_dir)
    names = [stage.get("stage") for stage in summary.get("stages", []) if isinstance(stage, dict)]
    if names:
        return [run_dir / str(name) for name in names if (run_dir / str(name) / "metrics.jsonl").is_file()]
    found = [child for child in run_dir.iterdir() if (child / "metrics.jsonl").is_file()]
    return sorted(found, key=lambda child: (child / "metrics.jsonl").stat().st_mtime)


def read_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json if there is a readable one (a run still going has none), else {}."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def run_title(run_dir: Path, steps: int) -> str:
    summary = read_summary(run_dir)
    name = summary.get("job") or run_dir.name
    algorithm = f" ({summary['algorithm']})" if summary.get("algorithm") else ""
    return f"{name}{algorithm}, {steps} steps"
