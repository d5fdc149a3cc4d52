"""The critic's model: a transformer backbone with a scalar value head on every position.

Initialised from a reward model (its score head becomes the value head, as InstructGPT and OpenRLHF do) or
from a causal LM (the LM head is dropped, the value head starts at zero so the first values are 0).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import AutoModel, AutoModelForSequenceClassification, PreTrainedModel

from kuberlhf.errors import UserError
from kuberlhf.models.loading import is_sequence_classifier


class ValueModel(nn.Module):
    def __init__(self, backbone: PreTrainedModel, value_head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.value_head = value_head

    @classmethod
    def from_pretrained(cls, path: str, dtype: torch.dtype = torch.float32) -> ValueModel:
        try:
            if is_sequence_classifier(path):
                classifier = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)
                head = _score_head(classifier)
                return cls(classifier.base_model, head)
            backbone = AutoModel.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError) as err:
            raise UserError(f"spec.critic.model: cannot load a model from {path!r}: {err}") from None
        head = nn.Linear(backbone.config.hidden_size, 1, bias=True, dtype=dtype)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return cls(backbone, head)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        """Values [B, L], one per position."""
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        return self.value_head(hidden).squeeze(-1).float()


def _score_head(classifier: PreTrainedModel) -> nn.Linear:
    for name in ("score", "classifier"):
        head = getattr(classifier, name, None)
        if isinstance(head, nn.Linear) and head.out_features == 1:
            value_head = nn.Linear(head.in_features, 1, bias=True, dtype=head.weight.dtype)
            with torch.no_grad():
                value_head.weight.copy_(head.weight)
                value_head.bias.copy_(head.bias if head.bias is not None else torch.zeros(1))
            return value_head
    raise UserError("spec.critic.model: the reward model has no single-output score head to start a value head from")
