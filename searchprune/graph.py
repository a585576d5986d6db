"""Trace an ``nn.Module`` into an ordered list of operations with tensor shapes.

The trace runs on the ``meta`` device, so no weights or real data are needed. BatchNorm is
folded into the conv / linear before it and ReLU / ReLU6 fused into the op before them, as
int8 runtimes do; dropout and identity are free (they alias a tensor); flatten / reshape are
kept as ``reshape`` ops, which the cost model lowers per runtime (free, or a copy in TFLM).
Anything the tracer does not know raises :class:`UnsupportedOpError` naming the node.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from .errors import SearchpruneError, UnsupportedOpError

# op kinds the cost model prices
CONV, DEPTHWISE, POINTWISE, FC = "conv", "depthwise", "pointwise", "fc"
ADD, CONCAT, POOL, ELEMENTWISE = "add", "concat", "pool", "elementwise"
WEIGHTED_KINDS = (CONV, DEPTHWISE, POINTWISE, FC)

_FUSABLE_ACTS = (nn.ReLU, nn.ReLU6)
_FUSABLE_ACT_FNS = (F.relu, F.relu6, torch.relu)
_ALIAS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_ALIAS_FNS = (F.dropout,)
_ALIAS_METHODS = ("contiguous",)
# reshapes are free for most runtimes; the cost model decides (TFLM copies some)
_RESHAPE_MODULES = (nn.Flatten, nn.Unflatten)
_RESHAPE_FNS = (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze)
_RESHAPE_METHODS = ("view", "reshape", "flatten", "squeeze", "unsqueeze")
RESHAPE = "reshape"
_ELEMENTWISE_MODULES = (nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU,
                        nn.LeakyReLU, nn.ELU, nn.Softmax, nn.LogSoftmax, nn.Upsample, nn.ZeroPad2d,
                        nn.ConstantPad2d, nn.Hardtanh, nn.PReLU)
_ELEMENTWISE_FNS = (torch.sigmoid, torch.tanh, F.sigmoid, F.hardswish, F.silu, F.gelu,
                    F.leaky_relu, F.softmax, F.log_softmax, F.interpolate, F.pad, torch.softmax,
                    torch.mul, operator.mul, torch.sub, operator.sub)
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POOL_FNS = (F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d, F.adaptive_avg_pool1d,
             F.avg_pool1d, F.max_pool1d, torch.mean)


_SHAPE_QUERIES = ("size", "dim", getattr, operator.getitem)


@dataclass
class Op:
    """One runtime operator. Shapes include the batch dimension (batch 1)."""

    name: str
    kind: str
    inputs: list[str]
    output: str
    in_shape: tuple
    out_shape: tuple
    weight_shape: tuple | None = None
    bias: bool = False
    groups: int = 1
    kernel: tuple = ()
    stride: tuple = ()
    padding: tuple = ()            # per spatial dim, both sides (convolutions)
    activation: str | None = None
    weight_zeros: int = 0          # zero-valued weights (unstructured / N:M sparsity)
    module_type: str = ""

    @property
    def out_channels(self) -> int:
        return int(self.weight_shape[0]) if self.weight_shape else int(self.out_shape[1])

    @property
    def in_channels(self) -> int:
        if self.weight_shape is None:
            return int(self.in_shape[1])
        return int(self.weight_shape[1]) * self.groups

    @property
    def weights(self) -> int:
        return math.prod(self.weight_shape) if self.weight_shape else 0

    @property
    def params(self) -> int:
        """Weights plus biases (a folded BatchNorm contributes a bias)."""
        return self.weights + (self.out_channels if self.bias else 0)

    @property
    def macs(self) -> int:
        """Multiply-accumulates: output elements x kernel window x input channels per group."""
        if self.kind not in WEIGHTED_KINDS:
            return 0
        if self.kind == FC:
            return self.weights * (math.prod(self.out_shape) // self.out_channels)
        out_elems = math.prod(self.out_shape)
        return out_elems * math.prod(self.kernel) * int(self.weight_shape[1])


@dataclass
class Graph:
    """Ordered ops plus every activation tensor's shape; constants are not tensors here."""

    ops: list[Op]
    tensors: dict[str, tuple]
    inputs: list[str]
    outputs: list[str]

    def tensor_bytes(self, name: str, bytes_per_element: int = 1) -> int:
        return math.prod(self.tensors[name]) * bytes_per_element


def _shape(value) -> tuple | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _act_name(target) -> str:
    if isinstance(target, nn.Module):
        return type(target).__name__.lower()
    return getattr(target, "__name__", str(target))


def trace(model: nn.Module, input_shape: tuple[int, ...]) -> Graph:
    """Trace ``model`` called on one input of ``input_shape`` (batch included, e.g. (1, 1, 8, 8))."""
    zeros = {name: int((m.weight == 0).sum()) for name, m in model.named_modules()
             if isinstance(getattr(m, "weight", None), torch.Tensor) and not m.weight.is_meta}
    try:
        # the fx Graph alone: no GraphModule, whose Python code generation would cost more
        # than the rest of the cost model
        fx_graph = torch.fx.Tracer().trace(model)
    except Exception as e:  # data-dependent control flow and the like
        raise SearchpruneError(f"cannot trace {type(model).__name__} with torch.fx: {e}") from e
    modules = dict(model.named_modules())  # never run with their weights: shapes are analytic
    env: dict[str, object] = {}
    tensor_of: dict[str, str] = {}   # fx node name -> tensor name (aliases resolve here)
    producer: dict[str, Op] = {}     # tensor name -> op that wrote it
    ops: list[Op] = []
    tensors: dict[str, tuple] = {}
    inputs: list[str] = []
    outputs: list[str] = []

    def arg_value(a):
        return torch.fx.node.map_arg(a, lambda n: env[n.name])

    def tensor_inputs(node) -> list[str]:
        names = []
        for a in node.all_input_nodes:
            if a.name in tensor_of and tensor_of[a.name] not in names:
                names.append(tensor_of[a.name])
        return names

    def sole_user(node) -> bool:
        src = node.all_input_nodes[0] if node.all_input_nodes else None
        return src is not None and len(src.users) == 1

    def new_op(node, kind, value, **kw) -> Op:
        ins = tensor_inputs(node)
        op = Op(name=node.name if node.op != "call_module" else str(node.target), kind=kind,
                inputs=ins, output=node.name, in_shape=tensors[ins[0]] if ins else (),
                out_shape=_shape(value), **kw)
        tensors[node.name] = op.out_shape
        tensor_of[node.name] = node.name
        producer[node.name] = op
        ops.append(op)
        return op

    def alias(node):
        src = [a for a in node.all_input_nodes if a.name in tensor_of][0]
        tensor_of[node.name] = tensor_of[src.name]  # same bytes, another view

    fused_nodes: set[str] = set()   # nodes that became part of the op that produced their input

    def fuse_into_producer(node, what: str) -> bool:
        """Fold BN / fuse activation into the op that produced the input, when legal: the
        input comes straight from that op (or from a BN / activation fused into it) and
        nothing else reads it."""
        src_node = node.all_input_nodes[0]
        t = tensor_of.get(src_node.name)
        op = producer.get(t)
        direct = t == src_node.name or src_node.name in fused_nodes
        if op is None or not sole_user(node) or not direct:
            return False
        if what == "bn" and op.kind in WEIGHTED_KINDS and op.activation is None:
            op.bias = True
        elif what == "act" and op.kind in WEIGHTED_KINDS + (ADD,) and op.activation is None:
            op.activation = _act_name(node.target if node.op != "call_module"
                                      else modules[node.target])
        else:
            return False
        tensor_of[node.name] = t
        fused_nodes.add(node.name)
        return True

    for node in fx_graph.nodes:
        if node.op == "placeholder":
            value = torch.zeros(input_shape, device="meta")
            env[node.name] = value
            tensor_of[node.name] = node.name
            tensors[node.name] = tuple(input_shape)
            inputs.append(node.name)
            continue
        if node.op == "output":
            outs = node.all_input_nodes
            outputs.extend(tensor_of[a.name] for a in outs if a.name in tensor_of)
            break
        if node.op == "get_attr":
            env[node.name] = operator.attrgetter(node.target)(model)
            continue
        args, kwargs = arg_value(node.args), arg_value(node.kwargs)
        try:
            if node.op == "call_module":
                value = _module_output(modules[node.target], args, kwargs)
            elif node.op == "call_function":
                value = node.target(*args, **kwargs)
            else:  # call_method
                value = getattr(args[0], node.target)(*args[1:], **kwargs)
        except UnsupportedOpError:
            raise
        except Exception as e:
            raise UnsupportedOpError(f"cannot follow node {node.name!r} ({node.target}) on the "
                                     f"meta device: {e}") from None
        env[node.name] = value
        reads_activation = any(a.name in tensor_of for a in node.all_input_nodes)
        if node.op != "call_module":
            if not reads_activation:
                continue  # a constant computed from parameters only
            if not isinstance(value, torch.Tensor) and node.target in _SHAPE_QUERIES:
                continue  # x.size(), x.shape[...]: no runtime op
        _classify(node, value, modules, zeros, new_op, alias, fuse_into_producer)
    return Graph(ops=ops, tensors=tensors, inputs=inputs, outputs=outputs)


_SHAPE_PRESERVING = (nn.BatchNorm1d, nn.BatchNorm2d, nn.PReLU) + _FUSABLE_ACTS


def _conv_out_shape(mod: nn.Module, shape: tuple) -> tuple:
    """Output shape of a Conv1d / Conv2d on an input of ``shape`` (N, C, *spatial)."""
    spatial = []
    for i, size in enumerate(shape[2:]):
        k, s, d = mod.kernel_size[i], mod.stride[i], mod.dilation[i]
        if mod.padding == "same":
            spatial.append(size)
            continue
        p = 0 if mod.padding == "valid" else mod.padding[i]
        spatial.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
    return (shape[0], mod.out_channels, *spatial)


def _conv_padding(mod: nn.Module) -> tuple:
    if mod.padding == "valid":
        return (0,) * len(mod.kernel_size)
    if mod.padding == "same":
        return tuple(d * (k - 1) // 2 for k, d in zip(mod.kernel_size, mod.dilation))
    return tuple(mod.padding)


def _module_output(mod: nn.Module, args, kwargs):
    """The meta-device output of a module, without running its weights."""
    x = args[0]
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        if x.shape[1] != mod.in_channels:
            raise UnsupportedOpError(f"{type(mod).__name__} expects {mod.in_channels} input "
                                     f"channels, got shape {tuple(x.shape)}")
        return torch.empty(_conv_out_shape(mod, tuple(x.shape)), device="meta")
    if isinstance(mod, nn.Linear):
        if x.shape[-1] != mod.in_features:
            raise UnsupportedOpError(f"Linear expects {mod.in_features} input features, got "
                                     f"shape {tuple(x.shape)}")
        return torch.empty((*x.shape[:-1], mod.out_features), device="meta")
    if isinstance(mod, _SHAPE_PRESERVING):
        return torch.empty(x.shape, device="meta")
    if isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        # (the meta kernel is slow on every new shape: a search sees many)
        n = x.dim() - 2
        size = mod.output_size if isinstance(mod.output_size, (tuple, list)) else \
            (mod.output_size,) * n
        spatial = tuple(x.shape[2 + i] if s is None else s for i, s in enumerate(size))
        return torch.empty((*x.shape[:2], *spatial), device="meta")
    if any(True for _ in mod.parameters(recurse=False)):
        raise UnsupportedOpError(f"the cost model does not know module {type(mod).__name__}")
    return mod(*args, **kwargs)  # parameterless: pooling, flatten, softmax, upsample...


def _classify(node, value, modules, zeros, new_op, alias, fuse) -> None:
    """Turn one fx node into an op, an alias or a fusion."""
    if node.op == "call_module":
        mod = modules[node.target]
        mtype = type(mod).__name__
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            k = tuple(mod.kernel_size)
            groups = mod.groups
            if groups > 1 and groups == mod.in_channels:
                kind = DEPTHWISE
            elif math.prod(k) == 1 and groups == 1:
                kind = POINTWISE
            else:
                kind = CONV
            new_op(node, kind, value, weight_shape=tuple(mod.weight.shape),
                   bias=mod.bias is not None, groups=groups, kernel=k,
                   stride=tuple(mod.stride), weight_zeros=zeros.get(node.target, 0),
                   padding=_conv_padding(mod),
                   module_type=mtype)
        elif isinstance(mod, nn.Linear):
            new_op(node, FC, value, weight_shape=tuple(mod.weight.shape),
                   bias=mod.bias is not None, weight_zeros=zeros.get(node.target, 0),
                   module_type=mtype)
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if not fuse(node, "bn"):
                new_op(node, ELEMENTWISE, value, module_type=mtype)
        elif isinstance(mod, _FUSABLE_ACTS):
            if not fuse(node, "act"):
                new_op(node, ELEMENTWISE, value, module_type=mtype)
        elif isinstance(mod, _ALIAS_MODULES):
            alias(node)
        elif isinstance(mod, _RESHAPE_MODULES):
            new_op(node, RESHAPE, value, module_type=mtype)
        elif isinstance(mod, _POOL_MODULES):
            new_op(node, POOL, value, module_type=mtype)
        elif isinstance(mod, _ELEMENTWISE_MODULES):
            new_op(node, ELEMENTWISE, value, module_type=mtype)
        else:
            raise UnsupportedOpError(
                f"the cost model does not know module {mtype} (at {node.target!r}); "
                "supported: Conv1d/2d, Linear, BatchNorm, activations, pooling, flatten, "
                "add, cat, softmax, upsample, pad")
        return
    target = node.target
    n_tensor_inputs = sum(1 for a in node.all_input_nodes)
    if node.op == "call_method":
        if target in _ALIAS_METHODS:
            alias(node)
        elif target in _RESHAPE_METHODS:
            new_op(node, RESHAPE, value)
        elif target in ("add", "__add__") and n_tensor_inputs >= 2:
            new_op(node, ADD, value)
        elif target in ("relu", "relu_") and fuse(node, "act"):
            pass
        elif target in ("mean",):
            new_op(node, POOL, value)
        elif target in ("relu", "sigmoid", "tanh", "softmax", "mul", "add", "__add__", "sub"):
            new_op(node, ELEMENTWISE, value)
        else:
            raise UnsupportedOpError(f"the cost model does not know method .{target}() "
                                     f"(at node {node.name!r})")
        return
    if target in (operator.add, torch.add, operator.iadd):
        new_op(node, ADD if n_tensor_inputs >= 2 else ELEMENTWISE, value)
    elif target is torch.cat or target is torch.concat:
        new_op(node, CONCAT, value)
    elif target in _ALIAS_FNS:
        alias(node)
    elif target in _RESHAPE_FNS:
        new_op(node, RESHAPE, value)
    elif target in _FUSABLE_ACT_FNS:
        if not fuse(node, "act"):
            new_op(node, ELEMENTWISE, value)
    elif target in _POOL_FNS:
        new_op(node, POOL, value)
    elif target in _ELEMENTWISE_FNS:
        new_op(node, ELEMENTWISE, value)
    else:
        raise UnsupportedOpError(f"the cost model does not know function "
                                 f"{getattr(target, '__name__', target)} (at node {node.name!r})")
