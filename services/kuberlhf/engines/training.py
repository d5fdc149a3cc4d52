"""Training engines: own a model's optimizer and apply one optimizer step per call.

`TorchTrainingEngine` is plain torch AdamW with gradient clipping, single process. The DeepSpeed ZeRO engine
(next issue) implements the same methods: `optimizer_step(loss) -> grad_norm`, `save(path, **extra)`,
`load(path) -> extra`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


class TorchTrainingEngine:
    def __init__(self, model: nn.Module, learning_rate: float, weight_decay: float, max_grad_norm: float) -> None:
        self.model = model
        self.max_grad_norm = max_grad_norm
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=learning_rate, weight_decay=weight_decay)

    def optimizer_step(self, loss: torch.Tensor) -> float:
        """Backward, clip, step, zero grads; returns the gradient norm before clipping."""
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def save(self, path: str | Path, **extra: Any) -> None:
        """Model and optimizer state (plus the caller's own counters) to one file."""
        torch.save({"engine": self.state_dict(), **extra}, Path(path))

    def load(self, path: str | Path) -> dict[str, Any]:
        """Restore what `save` wrote; returns the caller's extras. Tensors and plain values only
        (`weights_only`): a checkpoint cannot run code when it is loaded."""
        state = torch.load(Path(path), weights_only=True)
        self.load_state_dict(state.pop("engine"))
        return state
