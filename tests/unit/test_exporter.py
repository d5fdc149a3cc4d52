"""The job's Prometheus endpoint: a step's metrics as labelled gauges, non-finite losses counted, the monitor's
verdict, a clear error for a taken port, and the catalog's keys are the ones the trainers write."""

from __future__ import annotations

import math
import re
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kuberlhf.errors import UserError
from kuberlhf.telemetry.catalog import OWN_METRICS, PHASES, STEP_METRICS
from kuberlhf.telemetry.exporter import JobMetrics

LABELS = {"job": "demo", "namespace": "team-a", "stage": "main", "algorithm": "grpo"}
SERVICES = Path(__file__).parents[2] / "services" / "kuberlhf"


def samples(metrics: JobMetrics) -> dict[tuple[str, tuple], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def key(name: str, **extra: str) -> tuple[str, tuple]:
    return name, tuple(sorted({**LABELS, **extra}.items()))


def test_a_step_becomes_labelled_gauges():
    metrics = JobMetrics(LABELS, total_steps=20)
    metrics.observe_step(3, {"reward/mean": 0.25, "kl/sequence": 0.125, "time/generation": 1.5,
                             "policy/grad_norm": 2.0, "epoch": 1, "note": "ignored"})
    seen = samples(metrics)
    assert seen[key("kuberlhf_reward_mean")] == 0.25
    assert seen[key("kuberlhf_kl")] == 0.125
    assert seen[key("kuberlhf_phase_seconds", phase="generation")] == 1.5
    assert seen[key("kuberlhf_grad_norm", role="policy")] == 2.0
    assert seen[key("kuberlhf_step")] == 3 and seen[key("kuberlhf_steps_total")] == 20
    assert seen[key("kuberlhf_nonfinite_steps_total")] == 0
    assert key("kuberlhf_policy_loss") not in seen  # never written: no series rather than a made-up 0


def test_non_finite_losses_are_counted_and_the_monitor_verdict_is_exported():
    metrics = JobMetrics(LABELS, total_steps=5)
    metrics.observe_step(1, {"policy/loss": float("nan")})
    metrics.observe_step(2, {"policy/loss": 0.5, "policy/grad_norm": float("inf")})
    metrics.observe_step(3, {"policy/loss": 0.5})
    metrics.set_signals({"length": True, "kl_budget": False})
    seen = samples(metrics)
    assert seen[key("kuberlhf_nonfinite_steps_total")] == 2
    assert seen[key("kuberlhf_reward_hacking_suspected", signal="length")] == 1
    assert seen[key("kuberlhf_reward_hacking_suspected", signal="kl_budget")] == 0


def test_the_endpoint_serves_and_a_taken_port_is_a_clear_error():
    metrics = JobMetrics(LABELS, total_steps=5)
    port = metrics.serve(0)
    metrics.observe_step(1, {"reward/mean": 0.5})
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'kuberlhf_reward_mean{algorithm="grpo",job="demo",namespace="team-a",stage="main"} 0.5' in body
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        with pytest.raises(UserError, match=r"spec.metrics.port: cannot serve metrics on port \d+"):
            JobMetrics(LABELS, total_steps=5).serve(taken.getsockname()[1])


def test_a_taken_default_port_gives_way_to_a_free_one_and_a_named_port_does_not():
    from kuberlhf.spec_monitor import MetricsSpec
    from kuberlhf.telemetry.exporter import port_may_move

    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        moved = JobMetrics(LABELS, total_steps=5).serve(port, or_any=True)
        assert moved not in (0, port)
        urllib.request.urlopen(f"http://127.0.0.1:{moved}/metrics", timeout=10).read()
    assert port_may_move(MetricsSpec())
    assert not port_may_move(MetricsSpec.model_validate({"port": 9400}))


def test_every_catalog_key_is_a_metric_some_trainer_writes():
    """A renamed metrics key must not leave a gauge that is never set."""
    source = "\n".join(p.read_text() for p in SERVICES.rglob("*.py") if "telemetry" not in p.parts)
    written = set(re.findall(r'"([a-z_]+/[a-z_]+|[a-z_]+)"', source))
    written |= {f"time/{name}" for name in re.findall(r'timer\("([a-z_]+)"\)', source)}
    written |= {f"time/{name}" for name in re.findall(r'"([a-z_]+)": workers\.', source)}  # gather_timed
    policy_stats = [SERVICES / "workers" / "policy.py", *(SERVICES / "algorithms").glob("*losses.py")]  # stats keys
    written |= {f"policy/{k}" for p in policy_stats for k in re.findall(r'"([a-z_]+)"', p.read_text())}
    written |= {f"critic/{k}" for k in re.findall(r'"([a-z_]+)"', (SERVICES / "workers" / "critic.py").read_text())}
    if 'f"eval/{key}"' in source:  # offline evaluation: the training keys, prefixed
        written |= {f"eval/{k}" for k in written if "/" not in k}
    missing = [m.key for m in STEP_METRICS if m.key not in written]
    assert missing == []
    assert set(PHASES) == {m.labels["phase"] for m in STEP_METRICS if "phase" in m.labels}
    assert all(name.startswith("kuberlhf_") for name in OWN_METRICS)


def test_the_metric_and_alert_reference_in_the_docs_is_current():
    from kuberlhf.telemetry.catalog_docs import BEGIN, END, render_metrics_markdown

    root = SERVICES.parents[1]
    page = (root / "docs" / "observability.md").read_text()
    checked_in = page[page.index(BEGIN): page.index(END) + len(END)] + "\n"
    rules = (root / "helm" / "kuberlhf" / "rules" / "kuberlhf-alerts.yaml").read_text()
    assert checked_in == render_metrics_markdown(rules), \
        "regenerate: kuberlhf metrics-docs --rules helm/kuberlhf/rules/kuberlhf-alerts.yaml (into docs/observability.md)"


def test_the_torch_engine_skips_an_update_whose_gradient_is_not_finite():
    import torch

    from kuberlhf.engines.training import TorchTrainingEngine, TrainingSetup

    model = torch.nn.Linear(3, 1)
    engine = TorchTrainingEngine(model, TrainingSetup(learning_rate=0.1, weight_decay=0.0, max_grad_norm=1.0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine.accumulate(model(torch.ones(1, 3)).sum() * float("nan"))
    assert math.isnan(engine.step())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no step taken
    assert not engine.optimizer.state  # and no optimizer state touched
    engine.accumulate(model(torch.ones(1, 3)).sum())
    assert math.isfinite(engine.step()) and not torch.equal(before["weight"], model.weight)
