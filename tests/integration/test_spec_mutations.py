"""Hardened input: 500 mutations of every example job (deleted keys, wrong types, negative or huge numbers, NaN,
unknown keys, broken YAML; bytes that are not UTF-8, NULs, a BOM; duplicate keys, aliases and alias bombs,
deep nesting, several documents, a top level that is no mapping, huge values) through `kuberlhf validate` and
`kuberlhf run` give either a valid job or one short, clear error naming the field (or file:line), never a
traceback.

`run` goes through everything it does before Ray starts (validation, input checks that read the model, the
tokenizer and the data, the resume point); the test stops it where Ray would start."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kuberlhf.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.yaml"))
# What a clear error names: a field path, or a place in a file.
NAMED = re.compile(r"^error: (--set )?(spec|metadata|apiVersion|kind)\b|^error: \S+\.(yaml|jsonl|json)(:\d+)*: |^error: \S+: ")


class RayWouldStart(BaseException):
    """Raised where `kuberlhf run` would connect to Ray: everything before it has passed. (Not an Exception:
    `kuberlhf run` turns any unexpected Exception into a one-line error.)"""


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a parsed job (dict keys and list indices)."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in items:
        found.append((*prefix, key))
        found.extend(paths(child, (*prefix, key)))
    return found


def parent_of(document: dict, path: tuple) -> Any:
    node = document
    for key in path[:-1]:
        node = node[key]
    return node


odd_values = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.just(10**30), st.just(-1), st.just(0),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.just(""),
    st.lists(st.integers(0, 3), max_size=3), st.dictionaries(st.sampled_from(["a", "model", "x"]), st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def small_assets(assets, tmp_path_factory) -> Path:
    """The test assets with 48 rows per data file (run's input checks read every row), models linked."""
    source, small = Path(assets["model"]).parent, tmp_path_factory.mktemp("small-assets")
    for path in source.iterdir():
        if path.suffix == ".jsonl":
            (small / path.name).write_text("".join(path.read_text().splitlines(keepends=True)[:48]))
        else:
            (small / path.name).symlink_to(path)
    return small


def encoding_mutation(draw, text: str) -> bytes:
    """The job's bytes with something that is not (or not only) UTF-8 text in them."""
    data = text.encode()
    at = draw(st.integers(0, len(data)))
    kind = draw(st.sampled_from(["latin1", "invalid", "nul", "bom", "binary", "utf16"]))
    if kind == "latin1":
        return text.replace("a", "\xe4", 1).encode("latin-1", errors="replace")
    if kind == "invalid":  # a cut multi-byte sequence or a lone continuation byte
        return data[:at] + draw(st.sampled_from([b"\xc3", b"\x80", b"\xed\xa0\x80", b"\xff\xfe"])) + data[at:]
    if kind == "nul":
        return data[:at] + b"\x00" + data[at:]
    if kind == "bom":
        return b"\xef\xbb\xbf" + data
    if kind == "utf16":
        return text.encode("utf-16")
    return bytes(draw(st.lists(st.integers(0, 255), min_size=1, max_size=200)))


def structure_mutation(draw, text: str) -> str:
    """The job's YAML with a structural trap: what PyYAML alone would accept silently or expand without end."""
    kind = draw(st.sampled_from(["duplicate", "alias", "bomb", "deep", "documents", "top", "huge", "merge"]))
    if kind == "duplicate":  # a section given twice (the first would be silently dropped)
        section = draw(st.sampled_from(["training", "data", "policy", "output"]))
        return text.replace("spec:\n", f"spec:\n  {section}: {{}}\n", 1)
    if kind == "alias":  # an anchor reused: legal, and must validate like the expanded document
        return "x-defaults: &defaults {steps: 2}\n" + text
    if kind == "bomb":
        lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
        lines += [f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]" for i in range(1, 9)]
        return "\n".join(lines) + "\n" + text
    if kind == "deep":
        depth = draw(st.integers(60, 3000))
        return text.replace("spec:\n", "spec:\n  x: " + "[" * depth + "]" * depth + "\n", 1)
    if kind == "documents":
        return text + "\n---\n" + text
    if kind == "top":
        return draw(st.sampled_from(["- " + text.replace("\n", "\n  "), "42\n", "just a string\n", "~\n", ""]))
    if kind == "huge":
        return text.replace("spec:\n", "spec:\n  algorithm: " + "x" * 2_000_000 + "\n", 1)
    return text.replace("spec:\n", "spec:\n  <<: {algorithm: ppo}\n", 1)


@st.composite
def mutated_documents(draw, assets_dir: Path) -> str | bytes:
    """The YAML text (or bytes) of an example job (paths pointed at the test assets) after one or two
    mutations."""
    name = draw(st.sampled_from(NAMES))
    text = (EXAMPLES / f"{name}.yaml").read_text()
    text = text.replace("examples/real-assets", str(assets_dir)).replace("examples/assets", str(assets_dir))
    family = draw(st.integers(0, 19))
    if family == 0:
        return encoding_mutation(draw, text)
    if family == 1:
        return structure_mutation(draw, text)
    if family == 2:  # broken YAML: a character range replaced by YAML punctuation
        start = draw(st.integers(0, len(text) - 1))
        end = draw(st.integers(start, min(len(text), start + 20)))
        return text[:start] + draw(st.sampled_from([":", "[", "{", "\t", '"', "- ", ": :", "&a *b", "\n  x"])) + text[end:]
    document = yaml.safe_load(text)
    for _ in range(draw(st.integers(1, 2))):
        candidates = paths(document)
        path = draw(st.sampled_from(candidates))
        parent, key = parent_of(document, path), path[-1]
        kind = draw(st.sampled_from(["delete", "replace", "unknown_key", "negate"]))
        if kind == "delete":
            del parent[key]
        elif kind == "replace":
            parent[key] = draw(odd_values)
        elif kind == "negate" and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
            parent[key] = -parent[key] if parent[key] else -1
        elif isinstance(parent[key], dict):
            parent[key][draw(st.sampled_from(["lerningRate", "foo", "stepz", "Model"]))] = 1
        else:
            parent[key] = draw(odd_values)
    return yaml.safe_dump(document, sort_keys=False)


def check_cli(argv: list[str], capsys) -> None:
    """A valid job (exit 0, or Ray reached) or exit 1 with one clear, named error; never a traceback."""
    capsys.readouterr()  # drop what an earlier call printed
    try:
        code = main(argv)
    except RayWouldStart:
        event(f"{argv[0]}: valid, reached Ray")
        return
    err = capsys.readouterr().err
    assert code in (0, 1), err
    event(f"{argv[0]}: {'valid' if code == 0 else 'named error'}")
    if code == 1:
        assert "Traceback" not in err, err
        first = err.strip().splitlines()[0]
        assert NAMED.search(first), first
        assert len(err) < 20_000, err[:2000]  # an error echoes what it was given within bounds


@pytest.fixture(scope="module")
def no_ray():
    """Stop `kuberlhf run` where it would connect to Ray, and keep a mutated model path that is no directory
    (read as a hub id) off the network (module-scoped: hypothesis reuses it)."""
    import huggingface_hub.constants

    import kuberlhf.launcher as launcher

    saved = launcher.ray_session, huggingface_hub.constants.HF_HUB_OFFLINE

    def refuse(*args, **kwargs):
        raise RayWouldStart

    launcher.ray_session, huggingface_hub.constants.HF_HUB_OFFLINE = refuse, True
    yield
    launcher.ray_session, huggingface_hub.constants.HF_HUB_OFFLINE = saved


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_examples_are_valid_or_a_named_error_never_a_traceback(data, small_assets, capsys, no_ray):
    text = data.draw(mutated_documents(small_assets))
    with tempfile.TemporaryDirectory() as directory:
        job_file = Path(directory) / "job.yaml"
        job_file.write_bytes(text if isinstance(text, bytes) else text.encode())
        out = f"spec.output.dir={directory}/out"
        check_cli(["validate", str(job_file)], capsys)
        check_cli(["run", str(job_file), "--no-dashboard", "--set", out], capsys)


def test_the_mutator_reaches_every_kind_of_field():
    """The mutations touch every section of every example (so a passing run means something)."""
    for name in NAMES:
        document = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
        sections = {p[1] for p in paths(document) if p[0] == "spec" and len(p) > 1}
        assert {"policy", "data", "training"} <= sections or "stages" in sections, name
