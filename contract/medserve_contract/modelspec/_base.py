"""What the feature spec and the reference profile share: the strict frozen model base, feature and
category names, and the uniqueness check."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

FeatureName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
"""Feature names become Prometheus label values and metric name parts: lower snake case."""

Category = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class Frozen(BaseModel):
    """Unknown fields are errors (a misspelt key must not be ignored); values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_unique(values: Sequence[str], what: str) -> None:
    dupes = sorted(v for v, n in Counter(values).items() if n > 1)
    if dupes:
        raise ValueError(f"{what} must be unique; repeated: {', '.join(dupes)}")
