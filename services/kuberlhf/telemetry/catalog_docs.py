"""The metric and alert reference of docs/observability.md, rendered from `telemetry.catalog` and the chart's
alert rules; `kuberlhf metrics-docs --rules helm/kuberlhf/rules/kuberlhf-alerts.yaml` prints it, and a test
fails when the checked-in page drifts."""

from __future__ import annotations

from typing import Any

import yaml

from kuberlhf.telemetry.catalog import JOB_LABELS, OWN_METRICS, PHASES, RAY_METRICS, STEP_METRICS

BEGIN, END = "<!-- generated: kuberlhf metrics-docs; do not edit by hand -->", "<!-- end of generated -->"


def render_metrics_markdown(rules_text: str | None = None) -> str:
    lines = [BEGIN, "", "### The job's endpoint (`spec.metrics.port`)", "",
             f"Every series carries the labels {', '.join(f'`{name}`' for name in JOB_LABELS)}.", "",
             "| metric | from (metrics.jsonl key) | what it is |", "|---|---|---|"]
    for metric in STEP_METRICS:
        extra = "".join(f"{{{k}=\"{v}\"}}" for k, v in metric.labels.items())
        what = PHASES[metric.labels["phase"]] if "phase" in metric.labels else metric.help
        lines.append(f"| `{metric.name}{extra}` | `{metric.key}` | {_one_line(what)} |")
    for name, help in OWN_METRICS.items():
        lines.append(f"| `{name}` | (exporter) | {_one_line(help)} |")
    lines += ["", "### Worker actors (Ray's metrics endpoint, every node)", "", "| metric | what it is |", "|---|---|"]
    lines += [f"| `ray_{name}` | {_one_line(help)} |" for name, help in RAY_METRICS.items()]
    if rules_text is not None:
        lines += ["", "### Alerts (`helm/kuberlhf/rules/kuberlhf-alerts.yaml`)", "",
                  "| alert | severity | for | expression |", "|---|---|---|---|"]
        lines += [f"| `{r['alert']}` | {r.get('labels', {}).get('severity', '')} | {r.get('for', '0s')} | "
                  f"`{_one_line(r['expr'])}` |" for r in alert_rules(rules_text)]
    return "\n".join([*lines, "", END]) + "\n"


def alert_rules(rules_text: str) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(rules_text)["groups"] for rule in group["rules"] if "alert" in rule]


def _one_line(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")
