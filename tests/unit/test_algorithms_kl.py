"""Unit tests for kuberlhf.algorithms.kl (hand-computed expected values)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from kuberlhf.algorithms import adaptive_kl_coef, kl_penalized_token_rewards, kl_penalty

# log r = ref - logprobs = [-1, 1, 0]
LOGPROBS = torch.tensor([-1.0, -2.0, -0.5])
REF = torch.tensor([-2.0, -1.0, -0.5])


def test_k1_is_logprobs_minus_ref_logprobs():
    # k1 = -log r = [1, -1, 0]
    assert_close(kl_penalty(LOGPROBS, REF, "k1"), torch.tensor([1.0, -1.0, 0.0]))


def test_k2_is_half_squared_log_ratio():
    # k2 = (log r)^2 / 2 = [0.5, 0.5, 0]
    assert_close(kl_penalty(LOGPROBS, REF, "k2"), torch.tensor([0.5, 0.5, 0.0]))


def test_k3_by_hand():
    # k3 = (e^{log r} - 1) - log r: [e^-1 - 1 + 1, e - 1 - 1, 0] = [0.367879, 0.718282, 0]
    assert_close(kl_penalty(LOGPROBS, REF, "k3"), torch.tensor([0.367879, 0.718282, 0.0]))


def test_k3_is_nonnegative():
    gen = torch.Generator().manual_seed(0)
    logprobs = torch.randn(64, 32, generator=gen) * 3
    ref = torch.randn(64, 32, generator=gen) * 3
    assert (kl_penalty(logprobs, ref, "k3") >= 0).all()


def test_k3_clamps_log_ratio_to_twenty_and_stays_finite():
    # log r = 100 is clamped to 20: e^20 - 1 - 20 = 485165174.41
    out = kl_penalty(torch.tensor([-100.0]), torch.tensor([0.0]), "k3")
    assert torch.isfinite(out).all()
    assert_close(out, torch.tensor([485165174.41]))
    # log r = -100 is clamped to -20: e^-20 - 1 + 20 ~= 19.0
    assert_close(kl_penalty(torch.tensor([0.0]), torch.tensor([-100.0]), "k3"), torch.tensor([19.0]))


def test_kl_penalty_unknown_estimator_raises():
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(LOGPROBS, REF, "k4")  # type: ignore[arg-type]


def test_kl_penalized_rewards_add_score_at_last_real_token():
    scores = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # coef 0.5: row0 = [-0.05, -0.1 + 1.0, 0 (pad)]; row1 = [-0.2, -0.25, -0.3 + 2.0]
    expected = torch.tensor([[-0.05, 0.9, 0.0], [-0.2, -0.25, 1.7]])
    assert_close(kl_penalized_token_rewards(scores, kl, mask, kl_coef=0.5), expected)


def test_kl_penalized_rewards_drop_score_for_empty_response():
    scores = torch.tensor([5.0, 1.0])
    kl = torch.tensor([[0.3, 0.3], [0.0, 0.0]])
    mask = torch.tensor([[0, 0], [1, 0]], dtype=torch.bool)
    expected = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    assert_close(kl_penalized_token_rewards(scores, kl, mask, kl_coef=1.0), expected)


def test_kl_penalized_rewards_ignore_kl_at_padding():
    scores = torch.tensor([1.0])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    a = kl_penalized_token_rewards(scores, torch.tensor([[0.1, 0.2, 0.3]]), mask, kl_coef=0.5)
    b = kl_penalized_token_rewards(scores, torch.tensor([[0.1, 0.2, float("inf")]]), mask, kl_coef=0.5)
    assert_close(a, b)
    assert a[0, 2].item() == 0.0


# Adaptive KL: coef 0.1, target 6, n_steps / horizon = 50 / 100 = 0.5


def test_adaptive_kl_coef_increases_when_kl_above_target():
    # e = 6.6/6 - 1 = 0.1 -> 0.1 * (1 + 0.1 * 0.5) = 0.105
    assert math.isclose(adaptive_kl_coef(0.1, 6.6, 6.0, horizon=100, n_steps=50), 0.105)


def test_adaptive_kl_coef_decreases_when_kl_below_target():
    # e = 5.4/6 - 1 = -0.1 -> 0.1 * (1 - 0.05) = 0.095
    assert math.isclose(adaptive_kl_coef(0.1, 5.4, 6.0, horizon=100, n_steps=50), 0.095)


def test_adaptive_kl_coef_error_clipped_at_plus_point_two():
    # e = 60/6 - 1 = 9 -> clipped to 0.2 -> 0.1 * 1.1 = 0.11
    assert math.isclose(adaptive_kl_coef(0.1, 60.0, 6.0, horizon=100, n_steps=50), 0.11)


def test_adaptive_kl_coef_error_clipped_at_minus_point_two():
    # e = 0/6 - 1 = -1 -> clipped to -0.2 -> 0.1 * 0.9 = 0.09
    assert math.isclose(adaptive_kl_coef(0.1, 0.0, 6.0, horizon=100, n_steps=50), 0.09)


def test_adaptive_kl_coef_unchanged_at_target():
    assert math.isclose(adaptive_kl_coef(0.1, 6.0, 6.0, horizon=100, n_steps=50), 0.1)


def test_adaptive_kl_coef_rejects_nonpositive_target():
    with pytest.raises(ValueError, match="target_kl"):
        adaptive_kl_coef(0.1, 1.0, 0.0, horizon=100, n_steps=50)


def test_algorithms_package_imports_neither_ray_nor_transformers():
    import ast
    from pathlib import Path

    import kuberlhf.algorithms as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"ray", "transformers"}, f"{path.name} imports {name}"
