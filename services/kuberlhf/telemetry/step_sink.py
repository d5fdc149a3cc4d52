"""Where a step's metrics go: metrics.jsonl, the job's Prometheus endpoint, the RLHFJob status (on
Kubernetes), the terminal, and (online) the reward-hacking monitor, whose verdict goes to all of them."""

from __future__ import annotations

from typing import Any, Callable

from kuberlhf.telemetry.job_status import StatusReporter
from kuberlhf.telemetry.monitor import SIGNALS, RewardHackingMonitor, Signal
from kuberlhf.telemetry.run_log import StepLog


class StepSink:
    def __init__(self, metrics_file: StepLog, exporter: Any | None, reporter: StatusReporter | None,
                 monitor: RewardHackingMonitor | None = None, note: Callable[[str], None] = print) -> None:
        self.metrics_file, self.exporter, self.reporter = metrics_file, exporter, reporter
        self.monitor, self.note = monitor, note
        self.holding: dict[str, Signal] = {}  # the signals that held at the last step

    def record(self, step: int, metrics: dict[str, Any]) -> list[Signal]:
        """Send one step's metrics everywhere; returns the monitor's signals that hold at this step."""
        signals = self.monitor.observe(step, metrics) if self.monitor is not None else []
        now = {s.name: s for s in signals}
        for name in now.keys() - self.holding.keys():
            self.note(f"step {step}: reward hacking suspected ({name}): {now[name].evidence}")
        for name in self.holding.keys() - now.keys():
            self.note(f"step {step}: signal {name} cleared")
        changed = now.keys() != self.holding.keys()
        self.holding = now
        for signal in signals:
            metrics[f"monitor/{signal.name}"] = 1.0
        self.metrics_file.write({"step": step, **metrics})
        if self.exporter is not None:  # fire-and-forget: a slow scrape never slows training
            self.exporter.observe_step.remote(step, metrics)
            if self.monitor is not None:
                self.exporter.set_signals.remote({name: name in now for name in SIGNALS})
        if self.reporter is not None:
            self.reporter.report(step, metrics, signals if self.monitor is not None else None, force=changed)
        return signals
