"""Which prompts each step trains on: a seeded shuffle per epoch, with an explicit position.

The state (epoch, position) is all a checkpoint needs to continue with exactly the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PromptSampler:
    """Yields `batch_size` row indices per call, reshuffling with seed + epoch at each epoch boundary."""

    num_rows: int
    batch_size: int
    seed: int
    epoch: int = 0
    position: int = 0

    def next_indices(self) -> list[int]:
        indices: list[int] = []
        while len(indices) < self.batch_size:
            order = self._order(self.epoch)
            take = min(self.batch_size - len(indices), self.num_rows - self.position)
            indices.extend(order[self.position : self.position + take])
            self.position += take
            if self.position == self.num_rows:
                self.epoch, self.position = self.epoch + 1, 0
        return indices

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict[str, int]) -> None:
        """Continue where a checkpoint was; a position past the end of the data (a resume that accepted a
        smaller data.train) starts the next epoch."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if self.position >= self.num_rows:
            self.epoch, self.position = self.epoch + 1, 0

    def _order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_rows, generator=generator).tolist()
