"""Test order and the demo assets' head start: the fast tiers run first (unit, then k8s, then integration), and
while they run, the integration tests' assets (a tiny model warmed up on addition, about two minutes of CPU) build
in a subprocess, so the single-threaded unit and k8s tests leave the second core to it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "k8s", "integration")


def tier(item: pytest.Item) -> str:
    return item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else ""


ENVIRONMENT: dict[str, str] = {}  # os.environ once the tests are collected (their imports done), until used
PYTEST_OWN = "PYTEST_CURRENT_TEST"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Unit, then k8s, then integration; within a tier the order is pytest's (a stable sort)."""
    items.sort(key=lambda item: TIERS.index(tier(item)) if tier(item) in TIERS else len(TIERS))


def pytest_collection_finish(session: pytest.Session) -> None:
    ENVIRONMENT.update(os.environ)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The integration tier starts from the environment the tests were collected in: what the fast tiers'
    libraries put there (importing trl sets VLLM_LOGGING_LEVEL=ERROR; the operator tests a KUBECONFIG) would
    otherwise reach every Ray worker of the jobs the integration tests run."""
    if tier(item) == "integration" and ENVIRONMENT:
        for name in set(os.environ) - set(ENVIRONMENT) - {PYTEST_OWN}:
            del os.environ[name]
        os.environ.update({k: v for k, v in ENVIRONMENT.items() if k != PYTEST_OWN})
        ENVIRONMENT.clear()  # once, as the tier starts: its own fixtures' settings stay


@pytest.fixture(scope="session", autouse=True)
def assets_build(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[Path, subprocess.Popen] | None]:
    """Starts `kuberlhf demo-assets` in the background when a test of the session uses the `assets` fixture,
    which waits for it (and builds in-process, raising the real error, should it have failed)."""
    if not any("assets" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield None
        return
    out = tmp_path_factory.mktemp("addition-assets")
    with open(out.parent / "addition-assets.log", "w") as log:
        build = subprocess.Popen([sys.executable, "-m", "kuberlhf.cli", "demo-assets", str(out)],
                                 stdout=log, stderr=subprocess.STDOUT)
    yield out, build
    if build.poll() is None:  # the session ended before any test needed the assets
        build.kill()
        build.wait()
