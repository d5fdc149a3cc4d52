"""Where workers compute: batches move to a worker's device and back, and each role's precision."""

from __future__ import annotations

import torch

from kuberlhf.engines.training import TrainingSetup
from kuberlhf.engines.process import frozen_dtype, worker_device
from tests.unit.test_gradient_accumulation import experience

META = torch.device("meta")  # a second device every machine has: tensors without storage


def test_experience_moves_every_tensor_including_the_nested_rollout():
    moved = experience().to(META)
    tensors = [moved.advantages, moved.rollout.prompt_ids, moved.rollout.response_mask, moved.rollout.rollout_logprobs]
    assert all(t.device == META for t in tensors)
    assert moved.rollout.prompts == experience().rollout.prompts  # text stays as it is


def test_selecting_rows_of_a_moved_batch_stays_on_its_device():
    part = experience().to(META).select([2, 0])
    assert part.advantages.device == META and part.advantages.shape[0] == 2


def test_moving_to_the_device_a_batch_is_already_on_returns_it_unchanged():
    batch = experience()
    assert batch.to(torch.device("cpu")) is batch


def test_a_cpu_only_machine_computes_on_the_cpu():
    if not torch.cuda.is_available():
        assert worker_device() == torch.device("cpu")


def test_frozen_roles_follow_training_bf16_on_gpus_only():
    assert frozen_dtype(torch.device("cuda", 0), bf16=True) == torch.bfloat16
    assert frozen_dtype(torch.device("cuda", 0), bf16=False) == torch.float32
    assert frozen_dtype(torch.device("cpu"), bf16=True) == torch.float32


def test_bf16_training_always_goes_through_deepspeed_mixed_precision():
    plain = TrainingSetup(learning_rate=1e-3, weight_decay=0.0, max_grad_norm=1.0)
    assert not plain.uses_deepspeed(world_size=1)
    bf16 = TrainingSetup(learning_rate=1e-3, weight_decay=0.0, max_grad_norm=1.0, bf16=True)
    assert bf16.uses_deepspeed(world_size=1)


def test_a_gpu_phase_hands_torchs_cached_memory_back_even_when_it_fails(monkeypatch):
    from kuberlhf.engines.process import returns_cached_gpu_memory

    emptied = []

    class Role:
        @returns_cached_gpu_memory
        def update(self, fail: bool) -> str:
            if fail:
                raise ValueError("loss is nan")
            return "done"

    assert Role().update(False) == "done" and emptied == []  # on the CPU nothing happens
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    assert Role().update(False) == "done" and emptied == [True]
    try:
        Role().update(True)
    except ValueError:
        pass
    assert emptied == [True, True]
