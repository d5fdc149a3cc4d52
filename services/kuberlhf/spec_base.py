"""The base class of every RLHFJob spec section (shared by `spec.py` and `spec_offline.py`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class SpecModel(BaseModel):
    """Base of every spec section: camelCase aliases, unknown fields rejected, docstrings as descriptions."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        validate_default=True,
    )
