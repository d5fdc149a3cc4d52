"""Shared fixtures for integration tests: the tiny addition model (built once per session) and a helper that
runs an example job in-process on an embedded Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kuberlhf.tasks.addition import build_demo_assets, read_jsonl, sampled_accuracy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="session")
def assets(assets_build, tmp_path_factory) -> dict[str, str]:
    """The demo assets (seed 0), built in the background since the session started (tests/conftest.py)."""
    if assets_build is None:
        return build_demo_assets(tmp_path_factory.mktemp("addition-assets"), seed=0)
    out, build = assets_build
    build.wait()
    return build_demo_assets(out, seed=0)  # done: returns the paths; else builds here and raises what failed


def run_example(name: str, assets: dict[str, str], output_dir: Path, *overrides: str,
                chat: bool = False) -> dict[str, Any]:
    """Run examples/<name>.yaml on the test assets; returns the run summary. With `chat`, the prompts are
    conversations (TRL's format) that the model's chat template renders as the plain prompts."""
    import kuberlhf

    prefix = "chat_" if chat else ""
    return kuberlhf.run(EXAMPLES / f"{name}.yaml",  # the Python API, as a user's script calls it
                        f"spec.policy.model={assets['model']}",
                        f"spec.data.train={assets[prefix + 'train']}",
                        f"spec.data.eval={assets[prefix + 'eval']}",
                        f"spec.output.dir={output_dir}",
                        *overrides)


def heldout_sampled_accuracy(model_dir: str, eval_file: str, samples_per_prompt: int = 4) -> float:
    """Exact-match accuracy of sampled completions (temperature 1, 4 per prompt) on the held-out prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return sampled_accuracy(model, tokenizer, read_jsonl(eval_file), samples_per_prompt=samples_per_prompt,
                            temperature=1.0, seed=1234)


class ListeningSockets:
    """While running (a context manager), samples the TCP sockets that this process and its descendants (an
    embedded Ray: GCS, raylet, workers, agents) open to listen on: {(process name, address, port)}; those
    already listening when it starts (left by earlier tests in this process) are not the run's. Once the GCS is
    seen, calls it as a stranger on this machine would, with no token, a wrong one, then the run's own:
    `answers` holds the gRPC status of each call."""

    def __init__(self, every: float = 0.5) -> None:
        import threading

        self.every, self.seen, self.answers, self.before = every, set(), [], set()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "ListeningSockets":
        self.before = self._listening()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(30)

    @staticmethod
    def _listening() -> set[tuple[str, str, int]]:
        import psutil

        me = psutil.Process()
        family = {me.pid: me.name()}
        for child in me.children(recursive=True):
            try:
                family[child.pid] = child.name()
            except psutil.NoSuchProcess:
                pass
        return {(family[c.pid], c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.pid in family}

    def _sample(self) -> None:
        while not self.stopping.is_set():
            self.seen |= self._listening() - self.before
            if not self.answers and self.port_of("gcs_server"):
                self.answers = self._call_gcs(self.port_of("gcs_server"))
            self.stopping.wait(self.every)

    @staticmethod
    def _call_gcs(port: int) -> list[str]:
        import os

        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        answers = []
        for token in (None, "0" * 64, os.environ.get("RAY_AUTH_TOKEN")):
            metadata = [("authorization", f"Bearer {token}")] if token else None
            try:
                stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=10, metadata=metadata)
                answers.append("OK")
            except grpc.RpcError as err:
                answers.append(err.code().name)
        return answers

    def port_of(self, process: str) -> int | None:
        return next((port for name, _, port in sorted(self.seen) if name == process), None)
