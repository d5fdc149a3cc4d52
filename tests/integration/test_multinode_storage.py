"""Jobs on a Ray cluster whose nodes do not share a disk, as the pods of a KubeRay cluster: a head node (no CPUs,
the driver's node) and two worker nodes, each started in its own mount namespace where the same path,
`<tmp>/pod`, is a different directory (the node's own disk). The driver runs in the head's namespace.

Without output.uri, every checkpoint part and the final model written by workers on the other nodes arrive,
complete, in the head's output directory (through the driver's relay), and nothing lands on the workers'
disks. With output.uri (here a file:// path every node sees, as an object store), a run stopped after step 2
and rerun after every node's disk was wiped resumes from the store and ends with the weights of an
uninterrupted run; the same for an offline stage (Ray Train workers on other nodes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import EXAMPLES

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")


def can_unshare() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


def in_own_disk(root: Path, pod: Path, command: list[str]) -> list[str]:
    """`command` in a new mount namespace where `pod` is `root` (this node's disk)."""
    script = f'mount --bind "{root}" "{pod}" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, "sh", *command]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not can_unshare():
        pytest.skip("needs mount namespaces (unshare -m): run as root, as CI does")
    base = tmp_path_factory.mktemp("pods")
    pod = base / "pod"
    pod.mkdir()
    roots = {name: base / f"disk-{name}" for name in ("head", "node-a", "node-b")}
    for root in roots.values():
        root.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    start = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    logs = {name: base / f"{name}.log" for name in roots}

    def start_node(name: str, *options: str) -> subprocess.Popen:
        with logs[name].open("wb") as log:
            return subprocess.Popen(in_own_disk(roots[name], pod, [*start, *options]), env=env,
                                    start_new_session=True, stdout=log, stderr=subprocess.STDOUT)

    nodes = [start_node("head", "--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard", "false")]
    try:
        wait_for_nodes(address, 1, nodes, logs)
        # One at a time: two nodes of one IP starting together can each take the other's raylet for its own
        # and time out ("The current node timed out during startup"), as seen under a loaded CI machine.
        for count, name in enumerate(("node-a", "node-b"), start=2):
            nodes.append(start_node(name, "--address", address, "--num-cpus", "2", "--node-name", name))
            wait_for_nodes(address, count, nodes, logs)
        yield {"address": address, "pod": pod, "roots": roots, "base": base}
    finally:
        for node in reversed(nodes):
            with contextlib.suppress(ProcessLookupError):  # a node that failed to start may be gone
                os.killpg(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10  # `ray start --block` may sit out a graceful stop: not ours to wait for
        for node in nodes:
            try:
                node.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.pid, signal.SIGKILL)


def wait_for_nodes(address: str, count: int, nodes: list[subprocess.Popen], logs: dict[str, Path]) -> None:
    """Until `count` nodes are alive; a node process that ended, or 5 minutes, fails with every node's log tail."""
    count_alive = ("import ray; ray.init(address='%s', logging_level='ERROR', log_to_driver=False); "
                   "print(sum(node['Alive'] for node in ray.nodes()))" % address)
    deadline = time.monotonic() + 300
    last = ""
    while time.monotonic() < deadline and all(node.poll() is None for node in nodes):
        status = subprocess.run([sys.executable, "-c", count_alive], capture_output=True, text=True,
                                env={**os.environ, "RAY_AUTH_MODE": "disabled"}, timeout=120)
        if status.returncode == 0 and int(status.stdout.split()[-1]) >= count:
            return
        last = (status.stdout + status.stderr)[-1500:]
        time.sleep(2)
    tails = "\n".join(f"--- {name} (exit {node.poll()}):\n{path.read_text(errors='replace')[-1500:]}"
                      for (name, path), node in zip(logs.items(), nodes))
    raise AssertionError(f"the {count} Ray nodes did not come up; last probe:\n{last}\n{tails}")


def run_on_head(cluster, *settings: str, example: str = "grpo-tiny") -> str:
    """`kuberlhf run` on the head node (its disk), as the RayJob's driver; returns its terminal output."""
    command = [sys.executable, "-m", "kuberlhf.cli", "run", str(EXAMPLES / f"{example}.yaml"), "--no-dashboard",
               *(arg for setting in settings for arg in ("--set", setting))]
    env = {**os.environ, "RAY_ADDRESS": cluster["address"], "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(in_own_disk(cluster["roots"]["head"], cluster["pod"], command), env=env,
                          cwd=cluster["base"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def online(assets, cluster, name: str, *settings: str) -> tuple[str, ...]:
    return (f"spec.policy.model={assets['model']}", f"spec.data.train={assets['train']}", "spec.data.eval=",
            f"spec.output.dir={cluster['pod']}/{name}", "spec.metrics.port=0", "spec.rollout.engine=hf",
            "spec.training.kl.coef=0", "spec.resources.placement=separate", "spec.resources.policy.workers=2",
            "spec.training.zeroStage=1", "spec.training.promptsPerStep=4", "spec.checkpoint.everySteps=2",
            "spec.checkpoint.keep=2", *settings)


def offline(assets, cluster, name: str, *settings: str) -> tuple[str, ...]:
    return ("spec.algorithm=sft", "spec.dpo=", f"spec.policy.model={assets['model']}",
            f"spec.data.train={assets['sft']}", f"spec.output.dir={cluster['pod']}/{name}", "spec.metrics.port=0",
            "spec.training.batchSize=8", "spec.resources.policy.workers=2", "spec.checkpoint.everySteps=2",
            *settings)


def wipe_every_disk(cluster) -> None:
    for root in cluster["roots"].values():
        for entry in root.iterdir():
            shutil.rmtree(entry)


def same_weights(a: Path, b: Path) -> None:
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=0, atol=1e-6, msg=key)


def committed(checkpoint: Path) -> dict[str, int]:
    """The manifest of a committed checkpoint, after checking every file it lists is there with its size."""
    files = json.loads((checkpoint / "trainer_state.json").read_text())["files"]
    for name, size in files.items():
        assert (checkpoint / name).stat().st_size == size, name
    return files


def test_online_job_outputs_reach_the_driver_node_and_resume_from_the_store(assets, cluster):
    head, workers = cluster["roots"]["head"], [cluster["roots"]["node-a"], cluster["roots"]["node-b"]]
    run_on_head(cluster, *online(assets, cluster, "straight", "spec.training.steps=4"))
    straight = head / "straight"
    files = committed(straight / "checkpoints" / "step-00000004")
    ranks = {name for name in files if "zero_pp_rank_" in name}
    assert {"zero_pp_rank_0", "zero_pp_rank_1"} <= {n.split("/")[-1][:14] for n in ranks}, files  # both ranks' shards
    assert (straight / "final" / "kuberlhf-final.json").is_file() and (straight / "metrics.jsonl").is_file()
    assert all(not any(root.iterdir()) for root in workers)  # nothing was left on the workers' disks
    assert not any(cluster["pod"].iterdir())  # every node wrote to its own disk (the namespaces hold)

    store = cluster["base"] / "store"
    run_on_head(cluster, *online(assets, cluster, "resumed", "spec.training.steps=2", f"spec.output.uri=file://{store}"))
    assert committed(store / "checkpoints" / "step-00000002")
    keep = cluster["base"] / "straight-final"
    shutil.copytree(straight / "final", keep)
    wipe_every_disk(cluster)  # a KubeRay retry on a new cluster: every pod's disk is new
    output = run_on_head(cluster, *online(assets, cluster, "resumed", "spec.training.steps=4",
                                          f"spec.output.uri=file://{store}"))
    assert f"resuming from file://{store}/checkpoints/step-00000002 (step 2)" in output
    same_weights(store / "final", keep)
    same_weights(head / "resumed" / "final", keep)  # and a copy beside the driver's metrics
    steps = [json.loads(line)["step"] for line in (head / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the history of steps 1-2 came back from the store


def test_offline_stage_outputs_reach_the_driver_node_and_resume_from_the_store(assets, cluster):
    head, workers = cluster["roots"]["head"], [cluster["roots"]["node-a"], cluster["roots"]["node-b"]]
    run_on_head(cluster, *offline(assets, cluster, "sft-straight", "spec.training.steps=4"), example="dpo-tiny")
    straight = head / "sft-straight"
    assert committed(straight / "checkpoints" / "step-00000004")
    assert (straight / "final" / "kuberlhf-final.json").is_file()
    assert all(not any(root.iterdir()) for root in workers)
    keep = cluster["base"] / "sft-straight-final"
    shutil.copytree(straight / "final", keep)

    store = cluster["base"] / "sft-store"
    run_on_head(cluster, *offline(assets, cluster, "sft", "spec.training.steps=2", f"spec.output.uri=file://{store}"),
                example="dpo-tiny")
    shutil.rmtree(store / "final")  # as a run that died after its step-2 checkpoint
    wipe_every_disk(cluster)
    output = run_on_head(cluster, *offline(assets, cluster, "sft", "spec.training.steps=4",
                                           f"spec.output.uri=file://{store}"), example="dpo-tiny")
    assert f"resuming from file://{store}/checkpoints/step-00000002 (step 2)" in output
    same_weights(store / "final", keep)
