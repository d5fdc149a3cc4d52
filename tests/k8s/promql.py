"""Metric names in a PromQL expression, for the tests that hold the alert rules and the Grafana dashboard to
telemetry/catalog.py. A tokenizer, not a parser: it drops strings, label matchers, ranges, label lists and
offsets, then takes every identifier that is not a function call or a keyword; enough for our expressions."""

from __future__ import annotations

import re

KEYWORDS = {"and", "or", "unless", "bool", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers (Grafana's $variables included)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"\boffset\s+-?\w+", "", expr)
    identifiers = re.findall(r"(?<![\w:.$])[a-zA-Z_:][\w:]*(?![\w:]|\s*\()", expr)
    return {name for name in identifiers if name.lower() not in KEYWORDS}
