"""DeepSpeed ZeRO worker groups: a 2-rank policy group (gloo on CPU) trained with ZeRO-2 and ZeRO-3 under vLLM
rollouts raises held-out sampled accuracy like the single-rank run, and both stages end with the same weights
(ZeRO changes where state lives, not the arithmetic)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from .conftest import heldout_sampled_accuracy, run_example

pytestmark = pytest.mark.slow
FINAL_WEIGHTS: dict[int, dict[str, torch.Tensor]] = {}


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_grpo_on_two_zero_ranks_with_vllm_rollouts_learns(assets, tmp_path, zero_stage):
    start = heldout_sampled_accuracy(assets["model"], assets["eval"])
    summary = run_example("grpo-tiny", assets, tmp_path, "spec.rollout.engine=vllm",
                          "spec.resources.policy.workers=2", f"spec.training.zeroStage={zero_stage}")
    final = heldout_sampled_accuracy(summary["final_model"], assets["eval"])
    print(f"grpo, ZeRO-{zero_stage} x 2 ranks, vLLM rollouts: held-out sampled accuracy {start:.3f} -> {final:.3f}")
    assert final >= start + 0.05
    FINAL_WEIGHTS[zero_stage] = load_file(f"{summary['final_model']}/model.safetensors")


def test_zero_2_and_zero_3_end_with_the_same_weights():
    assert set(FINAL_WEIGHTS) == {2, 3}, "runs after the two learning runs above"
    for name, weight in FINAL_WEIGHTS[2].items():
        torch.testing.assert_close(FINAL_WEIGHTS[3][name], weight, rtol=0, atol=1e-4, msg=name)
