"""Hardened input: hundreds of mutations of every example job (deleted keys, wrong types, negative or huge
numbers, NaN, unknown keys, broken YAML) through `kuberlhf validate` and `kuberlhf run` give either a valid job
or one clear error naming the field (or file:line), never a traceback.

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


@st.composite
def mutated_documents(draw, assets_dir: Path) -> str:
    """The YAML text of an example job (paths pointed at the test assets) after one or two mutations."""
    name = draw(st.sampled_from(NAMES))
    text = (EXAMPLES / f"{name}.yaml").read_text()
    text = text.replace("examples/real-assets", str(assets_dir)).replace("examples/assets", str(assets_dir))
    if draw(st.integers(0, 9)) == 0:  # broken YAML: a character range replaced by YAML punctuation
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


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_examples_are_valid_or_a_named_error_never_a_traceback(data, small_assets, capsys, no_ray):
    text = data.draw(mutated_documents(small_assets))
    with tempfile.TemporaryDirectory() as directory:
        job_file = Path(directory) / "job.yaml"
        job_file.write_text(text)
        out = f"spec.output.dir={directory}/out"
        check_cli(["validate", str(job_file)], capsys)
        check_cli(["run", str(job_file), "--no-dashboard", "--set", out], capsys)


def test_the_mutator_reaches_every_kind_of_field():
    """The mutations touch every section of every example (so a passing run means something)."""
    for name in NAMES:
        document = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
        sections = {p[1] for p in paths(document) if p[0] == "spec" and len(p) > 1}
        assert {"policy", "data", "training"} <= sections or "stages" in sections, name
