"""The weight sync's pure parts: bucket plans, the broadcast group (two ranks in two threads), the probe's
difference, the batches' weight-version check, the transport `auto` picks."""

from __future__ import annotations

import threading
import time

import psutil
import pytest
import torch

from kuberlhf.data.batch import RolloutBatch
from kuberlhf.engines.weight_transfer import (
    BroadcastGroup,
    TensorMeta,
    open_listener,
    plan_buckets,
    receive_buckets,
    send_buckets,
    tensor_metadata,
    tied_aliases,
)
from kuberlhf.errors import WeightSyncError
from kuberlhf.trainers.online import check_weight_version
from kuberlhf.workers.weight_sync import probe_difference, resolve_transport


def test_buckets_hold_one_dtype_and_at_most_the_size_unless_one_tensor_is_larger():
    meta = [TensorMeta("a", "float32", (4,)), TensorMeta("b", "float32", (4,)), TensorMeta("c", "float32", (10,)),
            TensorMeta("d", "bfloat16", (2,)), TensorMeta("e", "float32", (1,))]
    assert [m.nbytes for m in meta] == [16, 16, 40, 4, 4]
    assert plan_buckets(meta, bucket_bytes=32) == [[0, 1], [2], [3], [4]]
    assert plan_buckets(meta, bucket_bytes=1 << 20) == [[0, 1, 2], [3], [4]]


def listening_sockets() -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections(kind="inet")
            if c.status == "LISTEN"}


def test_a_broadcast_delivers_every_tensor_exactly_in_buckets():
    weights = {"w": torch.randn(3, 5), "b": torch.randn(5), "h": torch.randn(2, 2).to(torch.bfloat16),
               "v": torch.randn(7)}
    meta = tensor_metadata(weights)
    plan = plan_buckets(meta, bucket_bytes=64)
    assert len(plan) == 4  # w alone (60 bytes + b would pass 64), b, h (another dtype), v
    before = listening_sockets()  # other tests in this process may have left servers open
    listener, port = open_listener("127.0.0.1")
    received = {}

    def receiver() -> None:
        group = BroadcastGroup("127.0.0.1", port, 1, 2, torch.device("cpu"), 30, "127.0.0.1")
        for pairs in receive_buckets(group, meta, plan):
            received.update((name, tensor.clone()) for name, tensor in pairs)

    thread = threading.Thread(target=receiver)
    thread.start()
    sender = BroadcastGroup("127.0.0.1", port, 0, 2, torch.device("cpu"), 30, "127.0.0.1", listen_fd=listener)
    opened = listening_sockets() - before
    assert opened and {ip for ip, _ in opened} == {"127.0.0.1"}  # the store and gloo: loopback only
    sent = send_buckets(sender, ([weights[meta[i].name] for i in bucket] for bucket in plan))
    thread.join(30)
    assert sent == sum(m.nbytes for m in meta)
    assert received.keys() == weights.keys()
    assert all(torch.equal(received[name], weights[name]) for name in weights)


def tied_llama(seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True))


def build_untied_copy(model: torch.nn.Module) -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    config = model.config.to_dict() | {"tie_word_embeddings": False}
    return LlamaForCausalLM(type(model.config).from_dict(config))


def test_a_tied_weight_is_sent_once_and_lands_under_both_names():
    from kuberlhf.engines.generation import HFGenerationEngine

    sender, receiver = tied_llama(0), HFGenerationEngine(tied_llama(1), tokenizer=None)
    assert tied_aliases(sender) == {"lm_head.weight"}
    assert tied_aliases(build_untied_copy(sender)) == set()
    weights = sender.state_dict()
    meta = [m for m in tensor_metadata(weights) if m.name not in tied_aliases(sender)]
    plan = plan_buckets(meta)
    listener, port = open_listener("127.0.0.1")
    thread = threading.Thread(target=lambda: (
        receiver.join_weight_group("127.0.0.1", port, 1, 2, 30, "127.0.0.1"), receiver.receive_weights(meta, plan)))
    thread.start()
    group = BroadcastGroup("127.0.0.1", port, 0, 2, torch.device("cpu"), 30, "127.0.0.1", listen_fd=listener)
    sent = send_buckets(group, ([weights[meta[i].name] for i in bucket] for bucket in plan))
    thread.join(30)
    assert sent == sum(m.nbytes for m in tensor_metadata(weights)) - weights["lm_head.weight"].nbytes
    for name, tensor in receiver.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name  # lm_head.weight too: it is the embedding


def test_a_group_whose_peer_never_comes_fails_within_its_timeout():
    started = time.perf_counter()
    with pytest.raises(Exception, match="(?i)time"):
        listener, port = open_listener("127.0.0.1")
        BroadcastGroup("127.0.0.1", port, 0, 2, torch.device("cpu"), 1, "127.0.0.1", listen_fd=listener)
    assert time.perf_counter() - started < 15


def test_the_probe_difference_is_the_mean_absolute_difference_over_all_tokens():
    trainer = [torch.tensor([-1.0, -2.0]), torch.tensor([-0.5])]
    engine = [torch.tensor([-1.5, -2.0]), torch.tensor([-0.25])]
    assert probe_difference(trainer, engine) == pytest.approx((0.5 + 0.0 + 0.25) / 3)


def batch_of_version(version: int | None) -> RolloutBatch:
    return RolloutBatch(torch.ones(1, 1), torch.ones(1, 1), torch.ones(1, 1), torch.ones(1, 1), torch.zeros(1, 1),
                        ["p"], ["c"], weight_version=version)


def test_each_step_must_be_sampled_with_the_weights_it_expects():
    check_weight_version(batch_of_version(4), step=5, first_step=1, one_step_off_policy=False)
    check_weight_version(batch_of_version(3), step=5, first_step=1, one_step_off_policy=True)
    check_weight_version(batch_of_version(9), step=10, first_step=10, one_step_off_policy=True)  # after a resume
    check_weight_version(batch_of_version(0), step=1, first_step=1, one_step_off_policy=True)
    with pytest.raises(WeightSyncError, match="step 5 was sampled with the weights of policy update 3, not 4"):
        check_weight_version(batch_of_version(3), step=5, first_step=1, one_step_off_policy=False)
    parts = RolloutBatch.concat([batch_of_version(4), batch_of_version(3)])
    assert parts.weight_version == 3  # the stalest rank speaks for the batch


def test_auto_broadcasts_unless_vllm_shards_over_several_gpus():
    assert resolve_transport("auto", 1) == "broadcast"
    assert resolve_transport("auto", 2) == "objectStore"
    assert resolve_transport("broadcast", 1) == "broadcast"
