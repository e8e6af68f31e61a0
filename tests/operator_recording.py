"""A dispatch mode that records which torch operators a piece of code runs (shared by the tests)."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class RecordOperators(TorchDispatchMode):
    """``with RecordOperators() as recorder: ...`` leaves the operators' names (``"bernoulli_"``) in ``recorder.names``."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))
