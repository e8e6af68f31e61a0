"""What the cost benchmarks share: device and dtype flags, timing, FLOP counting, per-component time attribution.

FLOPs are counted with the formulas of ``torch.utils.flop_counter`` (those of ``FlopCounterMode``): every matrix
product, convolution and attention, 2 per multiply-add, forward and backward; element-wise work (activations, norms,
the optimizer) counts 0. Two gaps of the stock registry are closed here: the CPU attention kernel that
``scaled_dot_product_attention`` picks when attention dropout is off (``_scaled_dot_product_flash_attention_for_cpu``
and its backward, e.g. in inference) would count 0 (it gets the formula of the other attention kernels), and so would
the in-place ``addmm_`` (it gets ``addmm``'s). Counting fails when any other contraction-like operator runs without a
formula, so that nothing is silently counted as free. LSTM cells need no formula of their own: ``LSTMCell``
dispatches as ``addmm``/``mm`` products plus element-wise gates, on CPU and on CUDA.

``--dtype bfloat16`` runs the forward pass (and the losses) under ``torch.autocast``: parameters, gradients and the
optimizer stay in float32, as in mixed-precision training.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import (
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

aten = torch.ops.aten


@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_flash_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _cpu_flash_attention_backward_flop(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


@register_flop_formula(aten.addmm_)
def _inplace_addmm_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    # addmm's arithmetic, accumulated into its first operand (e.g. by the caption decoder's vocabulary loss).
    (rows, inner), (_, columns) = a_shape, b_shape
    return 2 * rows * inner * columns


# Operators whose names say they contract tensors; one of them running without a FLOP formula is an error.
_CONTRACTION_NAME = re.compile(
    r"mm($|_)|(^|_)conv(?!ert)|attention|lstm|(^|_)gru|rnn|matmul|einsum|^linear"
    r"|^(mv|addmv|dot|vdot|addr|outer|bilinear)$"
)
# Fused recurrent cells that only apply the element-wise gates: their matrix products run as separate mm ops.
_ELEMENTWISE_CELLS = {"_thnn_fused_lstm_cell", "_thnn_fused_lstm_cell_backward_impl", "_thnn_fused_gru_cell",
                      "_thnn_fused_gru_cell_backward"}


class _UncountedContractions(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self._counted = {str(op).removeprefix("aten.") for op in flop_registry}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in self._counted and name not in _ELEMENTWISE_CELLS and _CONTRACTION_NAME.search(name):
            self.names.add(name)
        return func(*args, **(kwargs or {}))


def count_flops(run: Callable[[], object]) -> int:
    """Total FLOPs of ``run()``. Raises when an operator that contracts tensors ran without a FLOP formula."""
    with ComponentFlops({}) as counter:
        run()
    return counter.total


class ComponentFlops:
    """FLOPs per component, forward and backward, of what runs inside it (a context manager).

    A forward operator counts for the component whose module is running. A backward operator counts for the
    component whose forward created the autograd node being run: when a component's module returns, the autograd
    nodes between its outputs and its inputs are marked as its own, and the nodes that lead to its inputs and
    belong to no component yet (glue between components) as ``other``. (``FlopCounterMode``'s own per-module
    breakdown charges much of the backward pass to whichever module its tracker saw last.) Raises on leaving when an
    operator that contracts tensors ran without a FLOP formula.
    """

    def __init__(self, components: dict[str, list[nn.Module]]) -> None:
        self.components = components
        self.flops: dict[str, int] = defaultdict(int)
        self._running: list[str] = []
        self._node_owner: dict[int, str] = {}
        self._handles = []
        self._uncounted = _UncountedContractions()
        self._counting = _CountingMode(self)

    def __enter__(self) -> ComponentFlops:
        for name, modules in self.components.items():
            for module in modules:
                self._handles.append(module.register_forward_pre_hook(self._entering(name), with_kwargs=True))
                self._handles.append(module.register_forward_hook(self._leaving(name), with_kwargs=True))
        self._uncounted.__enter__()
        self._counting.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._counting.__exit__(*exc)
        self._uncounted.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        if exc[0] is None and self._uncounted.names:
            raise RuntimeError(
                f"operators without a FLOP formula ran: {sorted(self._uncounted.names)}; register one in cost_tools.py"
            )

    def _entering(self, name: str):
        def hook(_module, args, kwargs):
            self._claim((args, kwargs), "other")
            self._running.append(name)

        return hook

    def _leaving(self, name: str):
        def hook(_module, _args, _kwargs, output):
            self._running.pop()
            self._claim(output, name)

        return hook

    def _claim(self, values, owner: str) -> None:
        pending = [tensor.grad_fn for tensor in _tensors_in(values) if tensor.grad_fn is not None]
        while pending:
            node = pending.pop()
            key = node._sequence_nr()
            if key in self._node_owner or "AccumulateGrad" in node.name():
                continue
            self._node_owner[key] = owner
            pending.extend(parent for parent, _ in node.next_functions if parent is not None)

    def owner_of_current_operator(self) -> str:
        node = torch._C._current_autograd_node()
        if node is not None:
            return self._node_owner.get(node._sequence_nr(), "other")
        return self._running[-1] if self._running else "other"

    @property
    def total(self) -> int:
        return sum(self.flops.values())


class _CountingMode(TorchDispatchMode):
    def __init__(self, counter: ComponentFlops) -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet not in flop_registry:
            # As FlopCounterMode does: an operator without a formula may decompose into operators with one.
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if packet in flop_registry:
            self.counter.flops[self.counter.owner_of_current_operator()] += flop_registry[packet](
                *args, **kwargs, out_val=out
            )
        return out


def _tensors_in(values) -> Iterator[torch.Tensor]:
    if isinstance(values, torch.Tensor):
        yield values
    elif isinstance(values, dict):
        for value in values.values():
            yield from _tensors_in(value)
    elif isinstance(values, (list, tuple)):
        for value in values:
            yield from _tensors_in(value)
    elif dataclasses.is_dataclass(values) and not isinstance(values, type):
        for field in dataclasses.fields(values):
            yield from _tensors_in(getattr(values, field.name))


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="bfloat16 runs the forward pass and losses under torch.autocast; weights and optimizer stay float32",
    )


def autocast(device: str, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype))


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(run: Callable[[], object], device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def spread(values: list[float]) -> str:
    """``median [min-max]``."""
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


@contextlib.contextmanager
def component_ranges(components: dict[str, list[nn.Module]]) -> Iterator[None]:
    """Wraps each call of the components' modules in a profiler range named ``component: <name>``."""
    handles = []
    for name, modules in components.items():
        for module in modules:
            open_ranges = []

            def enter(_module, _args, name=name, open_ranges=open_ranges):
                open_ranges.append(torch.profiler.record_function(f"component: {name}"))
                open_ranges[-1].__enter__()

            def leave(_module, _args, _output, open_ranges=open_ranges):
                open_ranges.pop().__exit__(None, None, None)

            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


_BACKWARD_PREFIX = "autograd::engine::evaluate_function: "


def attribute_time(profile: torch.profiler.profile, device: str) -> dict[str, dict[str, float]]:
    """Seconds per component, forward and backward, from a profile of steps run inside ``component_ranges``.

    Forward: the time inside each component's ranges. Backward: every autograd node is charged to the component
    whose forward created it (the profiler gives a backward node the sequence number of the forward operator that
    recorded it); nodes without a forward operator (gradient accumulation into parameters) and nodes created
    outside every component (losses, glue) go to ``other``. On CUDA the times are the kernels' device time, on CPU
    the operators' CPU time.
    """

    def seconds(event) -> float:
        total = event.device_time_total if torch.device(device).type == "cuda" else event.cpu_time_total
        return total / 1e6

    events = profile.events()
    owner_of_sequence: dict[int, str] = {}
    forward: dict[str, float] = defaultdict(float)
    backward: dict[str, float] = defaultdict(float)

    def claim(event, component: str) -> None:
        if event.sequence_nr >= 0:
            owner_of_sequence[event.sequence_nr] = component
        for child in event.cpu_children:
            claim(child, component)

    for event in events:
        if event.name.startswith("component: ") and not _inside_component(event):
            component = event.name.removeprefix("component: ")
            forward[component] += seconds(event)
            claim(event, component)
    for event in events:
        if event.name.startswith(_BACKWARD_PREFIX) and not _inside_backward(event):
            backward[owner_of_sequence.get(event.sequence_nr, "other")] += seconds(event)
    return {"forward": dict(forward), "backward": dict(backward)}


def _inside_component(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("component: "):
            return True
        parent = parent.cpu_parent
    return False


def _inside_backward(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(_BACKWARD_PREFIX):
            return True
        parent = parent.cpu_parent
    return False


def profiler_activities(device: str) -> list[torch.profiler.ProfilerActivity]:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.device(device).type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return activities
