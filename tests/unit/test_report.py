"""`kuberlhf report` and curves.png: panels chosen by the metrics a run recorded, a table of the headline
metrics, one plot per stage of a chained job, and clear errors for a missing dir or a broken metrics.jsonl."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from kuberlhf.cli import main
from kuberlhf.errors import UserError
from kuberlhf.telemetry.report import DPI, PANEL_INCHES, choose_panels, read_metrics, report_run, summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def online_records(steps: int = 6) -> list[dict]:
    records = []
    for step in range(1, steps + 1):
        record = {"step": step, "reward/mean": 0.1 * step, "reward/std": 0.05, "kl/sequence": 0.01 * step,
                  "response_length/mean": 10.0 + step, "policy/loss": -0.1, "policy/entropy": 1.0,
                  "time/generation": 0.5, "time/scoring": 0.1, "time/training": 0.3, "time/weight_sync": 0.05,
                  "time/step": 1.0}
        if step % 3 == 0:
            record["eval/reward_mean"] = 0.2 * step
            record["time/checkpoint"] = 0.2
        records.append(record)
    return records


def offline_records(steps: int = 5) -> list[dict]:
    records = [{"step": step, "loss": 1.0 / step, "accuracy": 0.5 + 0.05 * step, "margin": 0.1 * step,
                "lr": 1e-3, "time/step": 0.2} for step in range(1, steps + 1)]
    records[-1].update({"eval/loss": 0.3, "eval/accuracy": 0.8})
    return records


def write_run(run_dir, records, summary=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=200)


def png_size(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def test_online_runs_get_reward_kl_length_and_step_time_panels():
    titles = [panel.title for panel in choose_panels(online_records())]
    assert titles == ["reward", "KL (sequence)", "response length (tokens)", "step time (s)"]


def test_offline_runs_get_loss_accuracy_margin_and_step_time_panels():
    titles = [panel.title for panel in choose_panels(offline_records())]
    assert titles == ["loss", "accuracy", "margin", "step time (s)"]


def test_panels_whose_metrics_are_absent_are_skipped():
    records = [{"step": 1, "loss": 0.5, "time/step": 0.1}]  # an sft stage: no accuracy, no margin
    assert [panel.line for panel in choose_panels(records)] == ["loss", "time/step"]


def test_report_writes_a_valid_png_of_the_panel_grid(tmp_path):
    run_dir = write_run(tmp_path / "run", online_records())
    [png] = report_run(run_dir, quiet_console())
    assert png == run_dir / "curves.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    # four panels: two columns by two rows
    assert png_size(png) == (int(2 * PANEL_INCHES[0] * DPI), int(2 * PANEL_INCHES[1] * DPI))


def test_matplotlib_reads_the_png_back(tmp_path):
    import matplotlib.image

    [png] = report_run(write_run(tmp_path / "run", offline_records()), quiet_console())
    height, width = matplotlib.image.imread(png).shape[:2]
    assert (width, height) == (int(2 * PANEL_INCHES[0] * DPI), int(2 * PANEL_INCHES[1] * DPI))


def test_one_panel_makes_a_one_panel_figure(tmp_path):
    [png] = report_run(write_run(tmp_path / "run", [{"step": 1, "loss": 0.5}]), quiet_console())
    assert png_size(png) == (int(PANEL_INCHES[0] * DPI), int(PANEL_INCHES[1] * DPI))


def test_summary_rows_hold_first_last_min_max_and_mean():
    rows = {row.metric: row for row in summarize(online_records())}
    reward = rows["reward/mean"]
    assert (reward.first, reward.last, reward.min, reward.max) == pytest.approx((0.1, 0.6, 0.1, 0.6))
    assert reward.mean == pytest.approx(0.35)
    assert (rows["eval/reward_mean"].first, rows["eval/reward_mean"].last) == pytest.approx((0.6, 1.2))
    assert "loss" not in rows


def test_the_report_agrees_with_the_summary_on_the_held_out_reward(tmp_path):
    """The run evaluates before its first step (summary.json only) and at its last (metrics.jsonl too): the
    table's first and last eval/reward_mean are the summary's start and end."""
    summary = {"job": "grpo-demo", "algorithm": "grpo", "steps": 6,
               "eval": {"eval/reward_mean_start": 0.368, "eval/reward_mean_end": 1.2}}
    console = quiet_console()
    report_run(write_run(tmp_path / "run", online_records(), summary), console)
    out = console.file.getvalue()
    assert "grpo-demo (grpo), 6 steps" in out
    row = next(line for line in out.splitlines() if "eval/reward_mean" in line)
    assert [cell.strip() for cell in row.split("│")[2:4]] == ["0.368", "1.2"]


def test_the_printed_table_shows_first_and_last_values(tmp_path):
    console = quiet_console()
    report_run(write_run(tmp_path / "run", offline_records(), {"job": "dpo-demo", "algorithm": "dpo"}), console)
    out = console.file.getvalue()
    assert "dpo-demo (dpo), 5 steps" in out
    cells = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
             for line in out.splitlines() if line.startswith("│")}
    assert cells["loss"][:2] == ["1", "0.2"]  # first, last
    assert cells["accuracy"][:2] == ["0.55", "0.75"]
    assert cells["eval/accuracy"][:2] == ["0.8", "0.8"]


def test_a_chained_job_gets_one_plot_per_stage_in_stage_order(tmp_path):
    job_dir = tmp_path / "job"
    write_run(job_dir / "sft", offline_records())
    write_run(job_dir / "grpo", online_records())
    (job_dir / "summary.json").write_text(json.dumps({"job": "chain", "status": "succeeded", "stages": [
        {"stage": "sft", "status": "succeeded"}, {"stage": "grpo", "status": "succeeded"}]}))
    console = quiet_console()
    pngs = report_run(job_dir, console)
    assert pngs == [job_dir / "sft" / "curves.png", job_dir / "grpo" / "curves.png"]
    assert all(png.read_bytes()[:8] == PNG_MAGIC for png in pngs)
    out = console.file.getvalue()
    assert out.index("sft, 5 steps") < out.index("grpo, 6 steps")


def test_a_chained_job_without_summary_is_found_by_its_stage_dirs(tmp_path):
    job_dir = tmp_path / "job"
    write_run(job_dir / "sft", offline_records())
    (job_dir / "checkpoints").mkdir()
    assert report_run(job_dir, quiet_console()) == [job_dir / "sft" / "curves.png"]


def test_a_broken_line_is_named_by_file_and_line(tmp_path):
    run_dir = write_run(tmp_path / "run", offline_records(2))
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 3, "loss": \n')
    with pytest.raises(UserError, match=r"metrics\.jsonl:3: not valid JSON"):
        read_metrics(run_dir / "metrics.jsonl")


def test_a_line_that_is_not_an_object_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n[1, 2]\n')
    with pytest.raises(UserError, match=r"metrics\.jsonl:2: expected a JSON object per line, got list"):
        read_metrics(path)


def test_a_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"nope: no such directory"):
        report_run(tmp_path / "nope", quiet_console())


def test_a_dir_without_metrics_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: no metrics\.jsonl here nor in a stage dir"):
        report_run(tmp_path / "empty", quiet_console())


def test_metrics_without_plottable_keys_name_the_file(tmp_path):
    run_dir = write_run(tmp_path / "run", [{"step": 1, "something/else": 1.0}])
    with pytest.raises(UserError, match=r"metrics\.jsonl: nothing to plot"):
        report_run(run_dir, quiet_console())


def test_cli_report_writes_the_plot_and_prints_the_table(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run", online_records())
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "reward/mean" in out and f"curves: {run_dir / 'curves.png'}" in out.replace("\n", "")
    assert (run_dir / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_cli_report_prints_user_errors_without_a_traceback(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run", offline_records(2))
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write("not json\n")
    assert main(["report", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert f"error: {run_dir / 'metrics.jsonl'}:3: not valid JSON" in err and "Traceback" not in err


def test_cli_report_has_help(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["report", "--help"])
    assert exited.value.code == 0
    assert "usage: kuberlhf report" in capsys.readouterr().out


def finished_job(output_dir):
    from types import SimpleNamespace

    spec = SimpleNamespace(algorithm="dpo", is_offline=True, training=SimpleNamespace(steps=5))
    return SimpleNamespace(output_dir=str(output_dir), metadata=SimpleNamespace(name="dpo-demo"), spec=spec)


def finished_result(run_dir):
    return {"final_model": str(run_dir / "final"), "metrics_file": str(run_dir / "metrics.jsonl"), "eval": {}}


def test_a_finished_run_writes_curves_and_names_them_in_its_summary(tmp_path):
    from kuberlhf.launcher import finish

    run_dir = write_run(tmp_path / "run", offline_records())
    summary = finish(finished_job(run_dir), finished_result(run_dir), 1.0, quiet_console())
    assert summary["plot"] == str(run_dir / "curves.png")
    assert json.loads((run_dir / "summary.json").read_text())["plot"] == summary["plot"]
    assert (run_dir / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_a_plot_that_fails_does_not_fail_a_finished_run(tmp_path):
    from kuberlhf.launcher import finish

    run_dir = write_run(tmp_path / "run", [{"step": 1, "something/else": 1.0}])
    console = quiet_console()
    summary = finish(finished_job(run_dir), finished_result(run_dir), 1.0, console)
    assert summary["status"] == "succeeded" and "plot" not in summary
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "succeeded"
    assert "warning: curves.png not written: UserError: nothing to plot" in console.file.getvalue()


def test_the_report_shows_the_newest_samples(tmp_path):
    run = write_run(tmp_path / "run", online_records())
    samples = [{"step": step, "prompt": [{"role": "user", "content": f"What is {step}+1?"}],
                "completion": f"It is {step + 1}.", "reward": 1.0} for step in range(1, 9)]
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples) + '{"step": 9, "prom')
    console = quiet_console()
    report_run(run, console)
    out = console.file.getvalue()
    assert "newest samples" in out and "What is 8+1?" in out and "It is 9." in out
    assert "What is 2+1?" not in out  # only the newest six (the half-written last line is skipped)


def test_only_the_phases_that_partition_a_step_are_stacked():
    from kuberlhf.telemetry.report import phase_keys

    record = {"time/step": 3.0, "time/generation": 1.0, "time/scoring": 0.5, "time/reference": 0.5,
              "time/training": 1.5, "time/policy_update": 1.4, "time/weight_sync": 0.1}
    assert phase_keys([record]) == ["time/generation", "time/scoring", "time/training"]
