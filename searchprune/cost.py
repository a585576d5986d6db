"""The MCU cost model: latency, peak RAM, flash and energy of an int8 model on a profile.

It reads only the traced op graph (shapes, kinds, zero counts) and the profile, never
weights, so a candidate is screened in milliseconds:

- **flash**: int8 weights (zeros dropped only if the runtime stores sparse weights), int32
  biases, per-channel quantisation parameters and per-op metadata of the model format, plus the runtime's own code (``flash_bytes``; ``model_bytes`` excludes the code);
- **peak RAM**: activation tensors (int8) and per-op scratch buffers planned into one arena
  from their lifetimes, the way TFLM's greedy planner does it, plus what the runtime reserves;
- **latency**: cycles per op from the profile's per-kind coefficients, with channel counts
  rounded up to the multiple the kernels vectorise over, divided by the clock;
- **energy**: active power x latency (mW x ms = uJ).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch.nn as nn

from .graph import (CONV, DEPTHWISE, ELEMENTWISE, FC, POINTWISE, POOL, RESHAPE, Graph, Op,
                    trace)
from .hardware import HardwareProfile, load_profile

ARENA_ALIGNMENT = 16  # TFLM aligns every planned buffer to 16 bytes


@dataclass(frozen=True)
class Buffer:
    """One planned arena buffer: bytes, live from op ``first`` to op ``last`` (inclusive)."""

    name: str
    size: int
    first: int
    last: int
    offset: int = -1


@dataclass(frozen=True)
class CostReport:
    """Estimated cost of one model on one profile. Bytes, ms, uJ; ``fits`` checks budgets."""

    profile: str
    latency_ms: float
    peak_ram_bytes: int
    flash_bytes: int
    energy_uj: float
    macs: int
    params: int
    arena_bytes: int
    model_bytes: int
    live_peak_bytes: int
    sram_budget_bytes: int
    flash_budget_bytes: int
    layers: list[dict] = field(default_factory=list, repr=False)
    plan: list[Buffer] = field(default_factory=list, repr=False)

    @property
    def fits(self) -> bool:
        return self.peak_ram_bytes <= self.sram_budget_bytes and \
            self.flash_bytes <= self.flash_budget_bytes

    def metrics(self) -> dict[str, float]:
        """The figures a search records for this profile."""
        return {"latency_ms": self.latency_ms, "peak_ram_bytes": self.peak_ram_bytes,
                "flash_bytes": self.flash_bytes, "energy_uj": self.energy_uj,
                "macs": self.macs, "params": self.params}

    def to_dataframe(self):
        """One row per op: kind, shapes, MACs, params, cycles, latency_ms, flash bytes."""
        import pandas as pd
        return pd.DataFrame(self.layers)

    def plan_dataframe(self):
        """The arena plan, one row per buffer (activation or scratch): bytes, offset in the
        arena, live from op ``first_op`` to ``last_op``; ``at_peak`` marks the buffers live
        at the same time as one that reaches the arena's top (shrink one to lower it)."""
        import pandas as pd
        names = [row["layer"] for row in self.layers]
        top = max((b.offset + b.size for b in self.plan), default=0)
        peak_ops = {i for b in self.plan if b.offset + b.size == top
                    for i in range(b.first, b.last + 1)}
        return pd.DataFrame([{
            "buffer": b.name, "bytes": b.size, "offset": b.offset, "end": b.offset + b.size,
            "first_op": names[b.first] if b.first < len(names) else b.first,
            "last_op": names[b.last] if b.last < len(names) else b.last,
            "at_peak": any(b.first <= i <= b.last for i in peak_ops)}
            for b in sorted(self.plan, key=lambda b: (b.offset, b.first))])


def _round_up(x: int, m: int) -> int:
    return -(-int(x) // m) * m


def _stored_weight_bytes(op: Op, profile: HardwareProfile) -> int:
    """int8 weights as the runtime stores them; zeros are free only with sparse storage."""
    if profile.runtime.sparse_storage and op.weight_zeros:
        nonzero = op.weights - op.weight_zeros
        return nonzero + math.ceil(op.weights / 8)  # values + a 1-bit occupancy mask
    return op.weights


def _constant_tensors(op: Op) -> int:
    """Constant tensors an op carries in the model file: weights and bias, or the shape /
    paddings / axes operand of RESHAPE, PAD and MEAN."""
    if op.weight_shape is not None:
        return 2
    if op.kind == RESHAPE or op.module_type == "PAD" or \
            (op.kind == POOL and not op.module_type.startswith(("MaxPool", "AvgPool"))):
        return 1
    return 0


def op_flash_bytes(op: Op, profile: HardwareProfile) -> int:
    """Bytes of flash for one op: format metadata (per op and per tensor), int8 weights,
    int32 biases and the quantisation parameters (per output channel for convolutions, and
    for FC where the profile says so, else per tensor)."""
    rt = profile.runtime
    size = rt.op_overhead_bytes + rt.tensor_overhead_bytes * (1 + _constant_tensors(op))
    if op.weight_shape is not None:
        channels = op.out_channels if (op.kind != FC or rt.per_channel_fc) else 1
        size += _stored_weight_bytes(op, profile) + 4 * op.out_channels
        size += channels * rt.quant_bytes_per_channel
    return size


def op_work(op: Op, profile: HardwareProfile) -> tuple[str, float]:
    """(latency coefficient name, units of work) of one op. MAC counts use channel counts
    rounded up to the runtime's vector multiple, and skip zeros only with sparse kernels."""
    m = profile.runtime.channel_multiple
    out_elems = math.prod(op.out_shape)
    if op.kind in (CONV, POINTWISE, DEPTHWISE, FC):
        cout = _round_up(op.out_channels, m)
        spatial = out_elems // op.out_channels
        if op.kind == DEPTHWISE:
            work = spatial * cout * math.prod(op.kernel) * op.weight_shape[1]
        else:
            work = spatial * cout * math.prod(op.kernel or (1,)) * _round_up(op.weight_shape[1], m)
        if profile.runtime.sparse_kernels and op.weights:
            work *= 1 - op.weight_zeros / op.weights
        return f"{op.kind}_cycles_per_mac", float(work)
    if op.kind == POOL:
        return "pool_cycles_per_element", float(math.prod(op.in_shape))
    return "elementwise_cycles_per_element", float(out_elems)  # add, concat, activation, ...


def op_cycles(op: Op, profile: HardwareProfile) -> float:
    """Cycles of one op: its coefficient x its work, plus the per-op overhead."""
    coef, work = op_work(op, profile)
    return getattr(profile.latency, coef) * work + profile.latency.op_overhead_cycles


# cores with the Helium (MVE) vector extension and cores without the DSP extension: CMSIS-NN
# sizes its scratch buffers differently on them
MVE_CORES = ("cortex-m55", "cortex-m85")
NO_DSP_CORES = ("cortex-m0", "cortex-m0plus", "cortex-m3")


def scratch_buffers(op: Op, profile: HardwareProfile) -> list[int]:
    """Per-op scratch buffers (bytes), as CMSIS-NN's ``*_get_buffer_size`` and TFLM ask:
    - im2col for k > 1 convs: 2 x cin x kh x kw int16 (Helium: 4 x cin*kh*kw rounded to 8);
    - the optimised depthwise kernel (channel multiplier 1): cin x kh x kw int16 on DSP cores,
      4 x 124 x kh x kw on Helium, none without DSP;
    - in TFLM, a global-average MEAN's int32 sums (one per output), its resolved axes and its
      normalised dimensions (int32 each)."""
    rt, core = profile.runtime, profile.core
    k = math.prod(op.kernel) if op.kernel else 1
    if rt.im2col and op.kind == CONV and k > 1:
        cols = op.in_channels // op.groups * k
        return [4 * -(-cols // 8) * 8 if core in MVE_CORES else 2 * cols * 2]
    if rt.depthwise_scratch and op.kind == DEPTHWISE and op.out_channels == op.in_channels \
            and core not in NO_DSP_CORES:
        return [4 * 124 * k if core in MVE_CORES else op.in_channels * k * 2]
    if rt.name.startswith("tflm") and op.kind == POOL and len(op.in_shape) > 2 \
            and math.prod(op.out_shape[2:] or (1,)) == 1 and math.prod(op.in_shape[2:]) > 1:
        return [4 * math.prod(op.out_shape), 4 * (len(op.in_shape) - 2), 4 * len(op.in_shape)]
    return []


def scratch_bytes(op: Op, profile: HardwareProfile) -> int:
    return sum(scratch_buffers(op, profile))


def buffers(graph: Graph, profile: HardwareProfile | None = None) -> list[Buffer]:
    """Activation tensors and scratch buffers with their lifetimes in op order."""
    n = len(graph.ops)
    first: dict[str, int] = {name: 0 for name in graph.inputs}
    last: dict[str, int] = {}
    for i, op in enumerate(graph.ops):
        first.setdefault(op.output, i)
        for t in op.inputs:
            last[t] = i
    for t in graph.outputs:
        last[t] = max(n - 1, 0)
    out = [Buffer(t, _round_up(graph.tensor_bytes(t), ARENA_ALIGNMENT), first[t],
                  last.get(t, first[t])) for t in first]
    if profile is not None:
        for i, op in enumerate(graph.ops):
            for j, s in enumerate(scratch_buffers(op, profile)):
                out.append(Buffer(f"{op.name}:scratch{j}", _round_up(s, ARENA_ALIGNMENT), i, i))
    return out


def plan_arena(bufs: Sequence[Buffer]) -> tuple[int, list[Buffer]]:
    """Greedy-by-size arena plan (TFLM's GreedyMemoryPlanner): largest buffer first (ties: the
    later-listed first), each at the lowest offset that overlaps no time-overlapping buffer.
    Returns (arena bytes, buffers with offsets)."""
    order = sorted(range(len(bufs)), key=lambda i: (-bufs[i].size, -i))
    placed: list[Buffer] = []
    for i in order:
        b = bufs[i]
        live = sorted((p for p in placed if p.first <= b.last and b.first <= p.last),
                      key=lambda p: p.offset)
        offset = 0
        for p in live:
            if offset + b.size <= p.offset:
                break
            offset = max(offset, p.offset + p.size)
        placed.append(Buffer(b.name, b.size, b.first, b.last, offset))
    arena = max((p.offset + p.size for p in placed), default=0)
    return arena, sorted(placed, key=lambda p: (p.first, p.name))


def live_peak(bufs: Sequence[Buffer]) -> int:
    """Largest sum of simultaneously live buffers: a lower bound of any arena plan."""
    n = max((b.last for b in bufs), default=-1) + 1
    return max((sum(b.size for b in bufs if b.first <= i <= b.last) for i in range(n)), default=0)


def lower(graph: Graph, profile: HardwareProfile) -> Graph:
    """The graph the runtime really executes.

    Reshapes are free (the tensor is reused), except in TFLM where the converter keeps a
    RESHAPE op with its own output tensor when it reshapes the graph input or a spatial map
    (a flatten after global pooling folds into the pooling). In TFLM, a convolution with
    stride > 1 and padding becomes an explicit PAD op writing a padded copy, then the conv.
    """
    tflm = profile.runtime.name.startswith("tflm")
    ops: list[Op] = []
    tensors = dict(graph.tensors)
    rename: dict[str, str] = {}
    for op in graph.ops:
        inputs = [rename.get(t, t) for t in op.inputs]
        if op.kind == RESHAPE:
            src = inputs[0]
            spatial = math.prod(tensors[src][2:]) if len(tensors[src]) > 2 else 1
            if tflm and (src in graph.inputs or spatial > 1):
                ops.append(dataclasses.replace(op, inputs=inputs))
            else:
                rename[op.output] = src
            continue
        pad = _padding(op)
        if tflm and pad and any(s > 1 for s in op.stride):
            padded = f"{op.output}:pad_input"
            shape = op.in_shape[:2] + tuple(d + 2 * p for d, p in zip(op.in_shape[2:], pad))
            tensors[padded] = shape
            ops.append(Op(name=f"{op.name}:pad", kind=ELEMENTWISE, inputs=inputs[:1],
                          output=padded, in_shape=op.in_shape, out_shape=shape,
                          module_type="PAD"))
            inputs = [padded] + inputs[1:]
        ops.append(dataclasses.replace(op, inputs=inputs))
    outputs = [rename.get(t, t) for t in graph.outputs]
    used = {t for op in ops for t in op.inputs} | {op.output for op in ops} | set(outputs)
    return Graph(ops=ops, tensors={k: v for k, v in tensors.items() if k in used or
                                   k in graph.inputs},
                 inputs=graph.inputs, outputs=outputs)


def _padding(op: Op) -> tuple | None:
    """Per spatial dim padding of a conv / depthwise, or None when it has none."""
    if op.kind not in (CONV, DEPTHWISE, POINTWISE) or not any(op.padding):
        return None
    return op.padding


def estimate_graph(graph: Graph, profile: HardwareProfile) -> CostReport:
    """Cost of a traced graph on one profile."""
    graph = lower(graph, profile)
    layers, total_cycles, model_bytes = [], 0.0, 0
    for op in graph.ops:
        cycles = op_cycles(op, profile)
        flash = op_flash_bytes(op, profile)
        total_cycles += cycles
        model_bytes += flash
        layers.append({"layer": op.name, "kind": op.kind, "in_shape": op.in_shape,
                       "out_shape": op.out_shape, "activation": op.activation,
                       "macs": op.macs, "params": op.params,
                       "sparsity": op.weight_zeros / op.weights if op.weights else 0.0,
                       "cycles": cycles, "latency_ms": cycles / profile.clock_hz * 1e3,
                       "flash_bytes": flash, "output_bytes": math.prod(op.out_shape),
                       "scratch_bytes": scratch_bytes(op, profile)})
    rt = profile.runtime  # model header, graph inputs
    model_bytes += rt.op_overhead_bytes + rt.model_overhead_bytes + \
        rt.tensor_overhead_bytes * len(graph.inputs)
    bufs = buffers(graph, profile)
    arena, plan = plan_arena(bufs)
    latency_ms = total_cycles / profile.clock_hz * 1e3
    return CostReport(
        profile=profile.name, latency_ms=latency_ms,
        peak_ram_bytes=arena + profile.runtime.ram_reserved_bytes,
        flash_bytes=model_bytes + profile.runtime.flash_reserved_bytes,
        energy_uj=profile.active_power_mw * latency_ms,
        macs=sum(op.macs for op in graph.ops), params=sum(op.params for op in graph.ops),
        arena_bytes=arena, model_bytes=model_bytes, live_peak_bytes=live_peak(bufs),
        sram_budget_bytes=profile.sram_bytes, flash_budget_bytes=profile.flash_bytes,
        layers=layers, plan=plan)


def estimate(model: nn.Module, input_shape: Sequence[int],
             profile: str | HardwareProfile | Sequence[str | HardwareProfile]):
    """Estimate ``model`` (any ``nn.Module``, meta device allowed) on one or more profiles.

    ``input_shape`` includes the batch dimension, e.g. ``(1, 3, 32, 32)``. Returns one
    :class:`CostReport`, or a list of them when ``profile`` is a list.

    >>> import torch.nn as nn
    >>> r = estimate(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), (1, 64),
    ...              "stm32f746-tflm-cmsisnn")
    >>> r.macs, r.params
    (640, 650)
    """
    graph = trace(model, tuple(input_shape))
    if isinstance(profile, (list, tuple)):
        return [estimate_graph(graph, load_profile(p)) for p in profile]
    return estimate_graph(graph, load_profile(profile))
