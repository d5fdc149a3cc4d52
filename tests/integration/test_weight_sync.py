"""The weight-sync seam on real workers: the broadcast transport (gloo) leaves the rollout engines scoring
bit-for-bit what the object-store transport does, for a dense policy into vLLM, a ZeRO-2 and a ZeRO-3 policy
over 2 ranks and a LoRA policy (merged); a corrupted sync is caught by the probe; an update on 2 ranks equals
the update on 1 under either ZeRO stage (the token mean is over the whole batch); a call that hangs is named
and timed out."""

from __future__ import annotations

import time

import pytest
import ray
import torch

from kuberlhf.data.batch import Experience
from kuberlhf.engines.generation import SamplingParams
from kuberlhf.errors import WeightSyncError, WorkerTimedOut
from kuberlhf.jobfile import load_job
from kuberlhf.launcher import ray_session
from kuberlhf.preflight import check_local_inputs
from kuberlhf.reward_functions import TrainerState
from kuberlhf.workers.group import WorkerGroup
from kuberlhf.workers.launch import start_workers
from kuberlhf.plan import PolicyUpdateConfig
from kuberlhf.workers.weight_sync import BroadcastSync, ObjectStoreSync

from .conftest import EXAMPLES

pytestmark = pytest.mark.slow
UPDATE = PolicyUpdateConfig(epochs=1, mini_batch_size=None, clip_low=0.2, clip_high=0.2, dual_clip=None,
                            temperature=1.0, kl_loss_coef=0.0, kl_estimator="k3")
LEARNING_RATE = 1e-3
FIRST_RUN: dict[str, object] = {}  # the 1-rank run's experience and updated weights, for the 2-rank run


def tiny_job(assets, output_dir, *overrides):
    return load_job(EXAMPLES / "grpo-tiny.yaml", [
        f"spec.policy.model={assets['model']}", f"spec.data.train={assets['train']}", "spec.data.eval=",
        f"spec.output.dir={output_dir}", "spec.training.kl.coef=0", f"spec.training.learningRate={LEARNING_RATE}",
        "spec.rollout.weightSync.transport=broadcast", *overrides])


@pytest.fixture(scope="module")
def session(assets, tmp_path_factory):
    with ray_session(tiny_job(assets, tmp_path_factory.mktemp("session")), dashboard=False):
        yield


def started(job):
    inputs = check_local_inputs(job)
    return start_workers(job, inputs), inputs


def sample(workers, inputs) -> Experience:
    """A batch from the engines, with random advantages (an update that moves every weight); its first rows
    are cut to one token, so the two halves of the batch hold different numbers of tokens."""
    prompts, columns = inputs.train.select(list(range(8)))
    rollout = workers.rollout.map_batch("generate", prompts, SamplingParams(4, 4, 1.0, 1.0), 11, TrainerState(0, 1),
                                        columns=columns).get()
    rollout.response_mask[:6, 1:] = 0
    advantages = torch.randn(rollout.response_mask.shape, generator=torch.Generator().manual_seed(0))
    return Experience(rollout, advantages * rollout.response_mask)


def sequences(experience: Experience) -> list[list[int]]:
    """Each sampled row as the tokens the engines read (prompt without padding, then the response)."""
    batch = experience.rollout
    return [p[pm.bool()].tolist() + r[rm.bool()].tolist() for p, pm, r, rm in
            zip(batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)]


def both_transports_agree(workers, experience: Experience) -> list[torch.Tensor]:
    """Sync by broadcast, then by the object store; the engines' log-probs of the sampled sequences must be the
    same to the bit, match the trainer's, and differ from those before the sync."""
    rows = sequences(experience)
    broadcast = workers.weight_sync
    assert isinstance(broadcast, BroadcastSync)
    before = workers.rollout.call("probe_logprobs", rows).get()
    metrics = broadcast.sync_now(1)
    assert metrics["sync/probe_logprob_diff"] < 1e-4 and metrics["time/weight_sync"] > 0
    by_broadcast = workers.rollout.call("probe_logprobs", rows).get()
    ObjectStoreSync(workers.policy, workers.rollout, broadcast.probe_rows, 0.05).sync_now(2)
    by_object_store = workers.rollout.call("probe_logprobs", rows).get()
    trainer = workers.policy.call("probe_logprobs", rows).get()
    assert all(torch.equal(a, b) for a, b in zip(by_broadcast, by_object_store))
    assert max(float((a - b).abs().max()) for a, b in zip(by_broadcast, trainer)) < 1e-4
    assert max(float((a - b).abs().max()) for a, b in zip(by_broadcast, before)) > 1e-4  # the sync moved them
    return by_broadcast


class CorruptingSync(ObjectStoreSync):
    """Delivers the policy's weights with one matrix scaled: what a loader that garbles a tensor does."""

    def transfer(self, version):
        weights = self.policy.call("state_dict").get()
        name = next(n for n in weights if n.endswith("mlp.down_proj.weight"))
        weights[name] = weights[name] * 3
        return self.rollout.call_each("load_weights", weights, version)


def test_dense_policy_into_vllm(assets, tmp_path, session):
    workers, inputs = started(tiny_job(assets, tmp_path, "spec.rollout.engine=vllm"))
    try:
        experience = sample(workers, inputs)
        workers.policy.map_batch("update", experience, UPDATE).get()
        both_transports_agree(workers, experience)
        FIRST_RUN.update(experience=experience, weights=workers.policy.call("state_dict").get())
        corrupt = CorruptingSync(workers.policy, workers.rollout, workers.weight_sync.probe_rows, 0.05)
        with pytest.raises(WeightSyncError, match=r"rollout rank 0 scores the probe .*probeTolerance 0.05\)"):
            corrupt.sync_now(3)
    finally:
        workers.shutdown()


def assert_same_adam_step(got: torch.Tensor, want: torch.Tensor, name: str, lr: float = LEARNING_RATE) -> None:
    """Adam's first step is lr * g / (|g| + eps): sign-like where |g| >> eps, so a wrong token weighting shows as
    flipped signs (differences near 2 * lr). Where a gradient cancels to about eps (the keys' projection: softmax
    ignores a shift shared by all keys), the reduction order of 1 rank vs 2 moves the step by up to
    lr * rounding / eps, a few 1e-6 on a handful of elements. So: at most 0.1% of the elements beyond 2e-6, none
    beyond 2% of lr."""
    difference = (got - want).abs()
    beyond = int((difference > 2e-6).sum())
    assert beyond <= max(1, difference.numel() // 1000), f"{name}: {beyond} of {difference.numel()} elements differ"
    assert float(difference.max()) < 0.02 * lr, f"{name}: differs by {float(difference.max()):.2e}"


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_a_zero_policy_on_two_ranks_equals_one_rank(assets, tmp_path, session, zero_stage):
    """ZeRO changes where the state lives, not the arithmetic: 2 ranks end with the 1-rank update's weights
    (ZeRO-3's sync gathers them bucket by bucket)."""
    assert FIRST_RUN, "runs after test_dense_policy_into_vllm"
    workers, _ = started(tiny_job(assets, tmp_path, "spec.rollout.engine=hf", "spec.resources.policy.workers=2",
                                  f"spec.training.zeroStage={zero_stage}"))
    try:
        experience = FIRST_RUN["experience"]
        halves = experience.rollout.response_mask.reshape(2, -1).sum(1)
        assert halves[0] != halves[1], "the ranks' halves must hold different token counts"
        workers.policy.map_batch("update", experience, UPDATE).get()
        updated = workers.policy.call("state_dict").get()
        for name, weight in FIRST_RUN["weights"].items():
            assert_same_adam_step(updated[name], weight, name)
        both_transports_agree(workers, experience)
    finally:
        workers.shutdown()


def test_lora_policy_syncs_merged_weights(assets, tmp_path, session):
    workers, inputs = started(tiny_job(assets, tmp_path, "spec.rollout.engine=hf", "spec.policy.lora.rank=4"))
    try:
        experience = sample(workers, inputs)
        workers.policy.map_batch("update", experience, UPDATE).get()
        both_transports_agree(workers, experience)
    finally:
        workers.shutdown()


@ray.remote(num_cpus=0)
class Hanging:
    def generate(self) -> None:
        time.sleep(600)


def test_a_call_that_hangs_times_out_naming_role_rank_and_call(session):
    group = WorkerGroup("rollout", [Hanging.remote(), Hanging.remote()], timeout_s=2)
    started_at = time.perf_counter()
    with pytest.raises(WorkerTimedOut, match=r"rollout rank 0 generate, rollout rank 1 generate: no answer within 2 s"):
        group.call("generate").get()
    assert time.perf_counter() - started_at < 10
    group.kill()
