"""One benchmark figure, compared with its budget."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Result:
    """A measured figure; ``ok`` is None where DESIGN sets no budget for it."""

    name: str
    value: float
    unit: str
    budget: str = ""
    ok: bool | None = None
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)
