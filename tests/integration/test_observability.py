"""Observability end to end: a real Prometheus (Debian's binary, on loopback) scrapes a running local job's
endpoint and Ray's metrics endpoint; the reward-hacking monitor trips on a planted length-paying reward and
stays quiet on the honest reward of the same task."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PROMETHEUS = Path(sys.executable).parent / "prometheus"  # scripts/install_prometheus.sh puts it in .venv/bin
RAY_DISCOVERY = "/tmp/ray/prom_metrics_service_discovery.json"  # Ray writes its nodes' metrics endpoints here
LENGTH_REWARD = "def reward(prompts, completions, **columns):\n    return [float(len(c)) for c in completions]\n"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@pytest.fixture
def prometheus(tmp_path):
    """A Prometheus scraping the job's endpoint (port returned) and Ray's nodes every second."""
    assert PROMETHEUS.is_file(), "prometheus missing: scripts/bootstrap.sh installs it (scripts/install_prometheus.sh)"
    job_port, web_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "kuberlhf", "honor_labels": True,  # keep the series' own job and namespace labels
             "static_configs": [{"targets": [f"127.0.0.1:{job_port}"]}]},
            {"job_name": "ray", "file_sd_configs": [{"files": [RAY_DISCOVERY], "refresh_interval": "1s"}]},
        ],
    }))
    server = subprocess.Popen(
        [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web_port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"))
    base = f"http://127.0.0.1:{web_port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{base}/-/ready", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    else:
        server.kill()
        raise AssertionError((tmp_path / "prometheus.log").read_text()[-2000:])
    yield base, job_port
    server.terminate()
    server.wait(timeout=30)


SECRET = "hf_kuberlhf-test-secret-0c4f9a"  # a hub token in the job's environment must never be printed or exported


def start_job(assets, tmp_path: Path, *overrides: str, dashboard: bool = False) -> subprocess.Popen:
    """`kuberlhf run` of grpo-tiny in the background. With the dashboard, Ray keeps RAY_DISCOVERY current."""
    return subprocess.Popen(
        [sys.executable, "-m", "kuberlhf.cli", "run", str(EXAMPLES / "grpo-tiny.yaml"),
         *([] if dashboard else ["--no-dashboard"]),
         "--set", f"spec.policy.model={assets['model']}", "--set", f"spec.data.train={assets['train']}",
         "--set", "spec.data.eval=", "--set", f"spec.output.dir={tmp_path / 'out'}",
         "--set", "spec.rollout.maxNewTokens=8",
         "--set", "spec.monitor.window=3", *(arg for o in overrides for arg in ("--set", o))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
             "HF_TOKEN": SECRET},
    )


def test_prometheus_scrapes_a_running_job_and_the_honest_reward_trips_no_signal(assets, tmp_path, prometheus):
    base, job_port = prometheus
    job = start_job(assets, tmp_path, f"spec.metrics.port={job_port}", "spec.training.steps=300", dashboard=True)
    seen: dict[str, list[dict]] = {}
    wanted = {
        "reward": 'kuberlhf_reward_mean{job="grpo-tiny",stage="main",algorithm="grpo"}',
        "generation": 'kuberlhf_phase_seconds{job="grpo-tiny",phase="generation"}',
        "step_time": 'kuberlhf_step_seconds{job="grpo-tiny"}',
        "memory": 'ray_kuberlhf_worker_memory_bytes{role="policy",device="cpu"}',
    }
    exported = ""
    while job.poll() is None and len(seen) < len(wanted):  # query while it runs: its series go stale after
        for name, expr in wanted.items():
            if name not in seen and (result := query(base, expr)):
                seen[name] = result
        if "reward" in seen and not exported:
            exported = urllib.request.urlopen(f"http://127.0.0.1:{job_port}/metrics", timeout=10).read().decode()
        time.sleep(1)
    stdout, stderr = job.communicate(timeout=600)
    ray_logs = "".join(p.read_text(errors="replace") for p in Path("/tmp/ray/session_latest/logs").rglob("*")
                       if p.is_file() and p.stat().st_size < 50_000_000)
    written = "".join(p.read_text(errors="replace") for p in (tmp_path / "out").glob("*.json*"))
    assert "kuberlhf_reward_mean" in exported
    for where, text in {"stdout": stdout, "stderr": stderr, "/metrics": exported, "Ray's logs": ray_logs,
                        "metrics.jsonl and summary.json": written}.items():
        assert SECRET not in text, f"the hub token leaked into {where}"
    assert job.returncode == 0, stderr[-3000:]
    assert "Prometheus metrics at http://" in stderr and f":{job_port}/metrics" in stderr
    assert set(seen) == set(wanted), f"never scraped: {set(wanted) - set(seen)}"
    assert 0.0 <= float(seen["reward"][0]["value"][1]) <= 1.0  # exact-match rewards
    assert float(seen["step_time"][0]["value"][1]) > 0 and float(seen["memory"][0]["value"][1]) > 10e6
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    print(f"exact-match reward: reward {records[0]['reward/mean']:.3f} -> {records[-1]['reward/mean']:.3f}, response "
          f"length {records[0]['response_length/mean']:.2f} -> {records[-1]['response_length/mean']:.2f} over "
          f"{len(records)} steps; no signal")
    assert not any(key.startswith("monitor/") for r in records for key in r)
    assert "reward hacking suspected" not in stderr
    quiet = query(base, 'max_over_time(kuberlhf_reward_hacking_suspected{signal="length"}[10m])')
    assert quiet and float(quiet[0]["value"][1]) == 0.0


def test_a_reward_that_pays_for_length_trips_the_monitor_which_stops_the_job(assets, tmp_path):
    (tmp_path / "length_reward.py").write_text(LENGTH_REWARD)
    job = start_job(assets, tmp_path, "spec.reward.function=length_reward:reward", "spec.training.steps=200",
                    "spec.monitor.action=stop", "spec.metrics.port=0")
    _, stderr = job.communicate(timeout=600)
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    print(f"length reward: response length {records[0]['response_length/mean']:.2f} -> "
          f"{records[-1]['response_length/mean']:.2f}, stopped at step {records[-1]['step']}")
    assert job.returncode == 1, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    print(last)
    assert last.startswith("error: stopped by spec.monitor (action: stop) at step") and "length:" in last
    assert records[-1].get("monitor/length") == 1.0 and len(records) < 200
    checkpoint = tmp_path / "out" / "checkpoints" / f"step-{records[-1]['step']:08d}"
    assert checkpoint.is_dir(), sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    shutil.rmtree(tmp_path / "out")
