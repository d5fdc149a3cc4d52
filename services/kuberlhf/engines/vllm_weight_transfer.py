"""The broadcast transport on vLLM's own weight-transfer API: a `WeightTransferEngine` registered under
`kuberlhf-broadcast` that joins the sync's process group (engines/weight_transfer.py) and loads each bucket as
it arrives through vLLM's layerwise reload (`start_weight_update` / `update_weights` / `finish_weight_update`
on the worker), so the engine never holds a second full copy of the model.

vLLM creates the engine in its worker process; the rollout actor runs vLLM in-process, so registering here is
enough. Imported only where vLLM is installed.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

from kuberlhf.engines.weight_transfer import BroadcastGroup, TensorMeta, receive_buckets

BACKEND = "kuberlhf-broadcast"


@dataclass
class BroadcastInit(WeightTransferInitInfo):
    address: str
    port: int
    rank: int
    world_size: int
    timeout_s: float
    bind_address: str


@dataclass
class BroadcastUpdate(WeightTransferUpdateInfo):
    meta: list[TensorMeta]
    plan: list[list[int]]


class BroadcastReceiver(WeightTransferEngine[BroadcastInit, BroadcastUpdate]):
    init_info_cls = BroadcastInit
    update_info_cls = BroadcastUpdate
    supports_draft_weight_update = False
    group: BroadcastGroup | None = None

    def init_transfer_engine(self, init_info: BroadcastInit) -> None:
        self.group = BroadcastGroup(init_info.address, init_info.port, init_info.rank, init_info.world_size,
                                    self.device, init_info.timeout_s, init_info.bind_address)

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def receive_weights(self, update_info: BroadcastUpdate) -> None:
        if self.group is None:
            raise RuntimeError("the kuberlhf-broadcast weight transfer was used before it joined its group")
        for pairs in receive_buckets(self.group, update_info.meta, update_info.plan):
            self.model.load_weights(pairs)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def shutdown(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None


def register() -> None:
    """Make the backend known to vLLM (once per process)."""
    try:
        WeightTransferEngineFactory.register_engine(BACKEND, BroadcastReceiver)
    except ValueError:  # registered already
        pass
