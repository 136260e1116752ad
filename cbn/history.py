"""What a training run records: one entry per evaluation point."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Dict, List


@dataclass
class History:
    """What training recorded, one entry per evaluation point.

    ``step`` counts updates made, ``epoch`` is fractional (steps / steps per epoch), ``lr``
    is the learning rate of the last update. ``train_*`` are measured on the whole training
    set and ``val_*`` on the validation set, both in evaluation mode; ``batch_loss`` is the
    mean training-mode loss of the mini-batches since the previous point. Costs include
    ``lam * sum W^2``; losses do not. Accuracies are fractions in [0, 1]. ``wall_time`` is
    seconds since training started (continued across a resume)."""

    step: List[int] = field(default_factory=list)
    epoch: List[float] = field(default_factory=list)
    lr: List[float] = field(default_factory=list)
    batch_loss: List[float] = field(default_factory=list)
    train_loss: List[float] = field(default_factory=list)
    train_cost: List[float] = field(default_factory=list)
    train_accuracy: List[float] = field(default_factory=list)
    val_loss: List[float] = field(default_factory=list)
    val_cost: List[float] = field(default_factory=list)
    val_accuracy: List[float] = field(default_factory=list)
    wall_time: List[float] = field(default_factory=list)

    def as_dict(self) -> Dict[str, list]:
        """Plain dict of lists (JSON-ready); the lists are copies."""
        # Not dataclasses.asdict, which deep-copies element by element: slow on long runs.
        return {f.name: list(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Dict[str, list]) -> "History":
        """The inverse of ``as_dict``; unknown or missing series raise ValueError."""
        names = {f.name for f in fields(cls)}
        if set(d) != names:
            raise ValueError(f"history series must be exactly {sorted(names)}; missing "
                             f"{sorted(names - set(d))}, unexpected {sorted(set(d) - names)}")
        return cls(**{k: list(v) for k, v in d.items()})

    def __len__(self) -> int:
        return len(self.step)

    def last(self) -> Dict[str, float]:
        """The most recent entry of every series that has one."""
        return {k: v[-1] for k, v in self.as_dict().items() if v}
