"""The condition a conditional model sees an item under: one of its K conditions, or ``best``.

``best`` is, per item, the condition under which the item looks most normal (lowest score):
what scoring does when no condition is given, and the only choice an unconditional model has.
A single condition is a ``Condition``; a batch carries them as an (N,) int64 array or tensor
of codes (``Condition.code``: the index, or ``BEST``), and the model takes the one-hot vectors
of its codes (``one_hot``). The card's line mapping names a condition: a class name, or
``best`` (``Condition.named``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

BEST = -1  # the code of ``best`` in a batch of conditions
BEST_NAME = "best"  # its name in a line mapping


@dataclass(frozen=True)
class Condition:
    """One condition: ``index`` into the model's conditions, or None for ``best``."""

    index: int | None = None

    def __post_init__(self) -> None:
        if self.index is not None and self.index < 0:
            raise ValueError(f"a condition index is >= 0, not {self.index}")

    @classmethod
    def best(cls) -> Condition:
        return cls(None)

    @classmethod
    def of(cls, index: int) -> Condition:
        return cls(int(index))

    @classmethod
    def from_code(cls, code: int) -> Condition:
        """The condition of a batch code: a negative code is ``best``."""
        return cls(None) if code < 0 else cls(int(code))

    @classmethod
    def named(cls, name: str, names: Sequence[str]) -> Condition:
        """The condition of a line mapping's value: ``best``, or one of ``names``; ValueError
        names the choices when it is neither."""
        if str(name) == BEST_NAME:
            return cls(None)
        try:
            return cls(list(names).index(str(name)))
        except ValueError:
            raise ValueError(
                f"condition {name!r} is not one of {list(names)} or {BEST_NAME!r}"
            ) from None

    @property
    def is_best(self) -> bool:
        return self.index is None

    @property
    def code(self) -> int:
        """The batch code: the index, or ``BEST``."""
        return BEST if self.index is None else self.index

    def codes(self, n: int) -> np.ndarray:
        """This condition for ``n`` items, as a batch of codes (N,) int64."""
        return np.full(n, self.code, np.int64)

    def one_hot(self, k: int) -> Tensor:
        """The model's input vector (K,) for this condition; ``best`` has none."""
        if self.index is None:
            raise ValueError("the best condition is chosen per item: it has no one-hot vector")
        return one_hot(torch.tensor([self.index]), k)[0]

    def __str__(self) -> str:
        return BEST_NAME if self.index is None else str(self.index)


BEST_CONDITION = Condition(None)  # ``Condition.best()``, for argument defaults


def codes_of(conditions: Sequence[Condition]) -> np.ndarray:
    """A batch of codes (N,) int64 for these conditions."""
    return np.array([c.code for c in conditions], np.int64)


def is_best(codes: Tensor) -> Tensor:
    """Per item of a batch of codes, whether it asks for its best condition."""
    return codes < 0


def one_hot(codes: Tensor, k: int) -> Tensor:
    """One-hot vectors (N, K) of a batch of codes; every code must be an index, not ``best``
    (choose those first: ``vlae.score.best_conditions``). Not checked here: a check would
    wait for the GPU on every forward pass; torch refuses a negative code itself."""
    return F.one_hot(codes.long(), k).float()
