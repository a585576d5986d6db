"""Hardware profiles: an MCU plus the inference runtime that runs on it, read from YAML.

A profile holds the datasheet figures (core, clock, SRAM, flash, power), what the runtime
reserves and what it can exploit (channel multiples, sparsity), and the latency
coefficients the cost model uses. ``load_profile`` accepts a bundled name or a YAML path.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from . import _config as cfg
from .errors import ConfigError

BUNDLED_DIR = cfg.bundled_dir("hw_profiles")

_MAX_CLOCK_HZ = 5e9          # no MCU runs above 5 GHz: a larger figure is a typo
_MAX_MEMORY_BYTES = 1 << 36  # 64 GiB


@dataclass(frozen=True)
class Runtime:
    """What the inference runtime reserves and which savings it really delivers."""

    name: str
    ram_reserved_bytes: int      # interpreter structs, stack the runtime needs (bytes of SRAM)
    flash_reserved_bytes: int    # runtime code + kernels (bytes of flash)
    channel_multiple: int = 1    # kernels vectorise over this many channels (CMSIS-NN: 4)
    im2col: bool = False         # non-1x1 convolutions need an im2col scratch buffer
    depthwise_scratch: bool = False  # CMSIS-NN's optimised depthwise kernel needs a buffer
    sparse_storage: bool = False # unstructured / N:M zeros are not stored (saves flash)
    sparse_kernels: bool = False # zero weights are skipped at run time (saves time)
    op_overhead_bytes: int = 0      # model-format metadata per operator (flash)
    quant_bytes_per_channel: int = 0  # quantisation parameters per conv output channel (flash)
    tensor_overhead_bytes: int = 0  # model-format metadata per tensor, constant or not (flash)
    model_overhead_bytes: int = 0   # fixed model-format bytes (flash)
    per_channel_fc: bool = False    # fully connected weights quantised per channel too


@dataclass(frozen=True)
class LatencyCoefficients:
    """Cycles per unit of work for each op kind on this (core, runtime) pair."""

    conv_cycles_per_mac: float
    depthwise_cycles_per_mac: float
    pointwise_cycles_per_mac: float
    fc_cycles_per_mac: float
    elementwise_cycles_per_element: float  # add, standalone activation, pad, concat copy
    pool_cycles_per_element: float         # per input element of a pooling op
    op_overhead_cycles: float = 0.0        # fixed cost of invoking one operator


@dataclass(frozen=True)
class HardwareProfile:
    """One MCU with its runtime. Sizes in bytes, clock in Hz, power in mW."""

    name: str
    core: str
    clock_hz: int
    sram_bytes: int
    flash_bytes: int
    active_power_mw: float
    runtime: Runtime
    latency: LatencyCoefficients
    description: str = ""
    source: dict = field(default_factory=dict, compare=False)
    path: str = field(default="", compare=False)


_TOP_REQUIRED = ["name", "core", "clock_hz", "sram_bytes", "flash_bytes", "active_power_mw",
                 "runtime", "latency"]
_TOP_OPTIONAL = ["description", "source"]


def _runtime_from(data: dict, src: str) -> Runtime:
    pre = "runtime"
    names = [f.name for f in fields(Runtime)]
    cfg.check_keys(data, src, pre, required=["name", "ram_reserved_bytes", "flash_reserved_bytes"],
                   optional=[n for n in names if n not in ("name", "ram_reserved_bytes",
                                                           "flash_reserved_bytes")])
    ints = dict(positive=True, allow_zero=True, integer=True, maximum=_MAX_MEMORY_BYTES)
    return Runtime(
        name=cfg.string(data, "name", src, pre),
        ram_reserved_bytes=cfg.number(data, "ram_reserved_bytes", src, pre, **ints),
        flash_reserved_bytes=cfg.number(data, "flash_reserved_bytes", src, pre, **ints),
        channel_multiple=cfg.number(data, "channel_multiple", src, pre, integer=True,
                                    maximum=64, default=1),
        im2col=cfg.boolean(data, "im2col", src, pre),
        depthwise_scratch=cfg.boolean(data, "depthwise_scratch", src, pre),
        sparse_storage=cfg.boolean(data, "sparse_storage", src, pre),
        sparse_kernels=cfg.boolean(data, "sparse_kernels", src, pre),
        op_overhead_bytes=cfg.number(data, "op_overhead_bytes", src, pre, default=0,
                                     **{**ints, "maximum": 1 << 20}),
        quant_bytes_per_channel=cfg.number(data, "quant_bytes_per_channel", src, pre, default=0,
                                           **{**ints, "maximum": 1024}),
        tensor_overhead_bytes=cfg.number(data, "tensor_overhead_bytes", src, pre, default=0,
                                         **{**ints, "maximum": 1 << 20}),
        model_overhead_bytes=cfg.number(data, "model_overhead_bytes", src, pre, default=0,
                                        **{**ints, "maximum": 1 << 24}),
        per_channel_fc=cfg.boolean(data, "per_channel_fc", src, pre),
    )


def _latency_from(data: dict, src: str) -> LatencyCoefficients:
    pre = "latency"
    names = [f.name for f in fields(LatencyCoefficients)]
    cfg.check_keys(data, src, pre, required=names[:-1], optional=names[-1:])
    values = {n: cfg.number(data, n, src, pre, allow_zero=(n == "op_overhead_cycles"),
                            maximum=1e7, default=0.0 if n == "op_overhead_cycles" else None)
              for n in names}
    return LatencyCoefficients(**values)


def profile_from_dict(data: dict, source: str = "<dict>") -> HardwareProfile:
    """Validate a profile mapping; errors name ``source``, the field path and the value."""
    cfg.check_keys(data, source, "", _TOP_REQUIRED, _TOP_OPTIONAL)
    sizes = dict(integer=True, maximum=_MAX_MEMORY_BYTES)
    src_info = data.get("source", {}) or {}
    if not isinstance(src_info, dict):
        raise ConfigError(source, "source", src_info, "must be a mapping (provenance notes)")
    return HardwareProfile(
        name=cfg.string(data, "name", source),
        core=cfg.string(data, "core", source),
        clock_hz=cfg.number(data, "clock_hz", source, integer=True, maximum=_MAX_CLOCK_HZ),
        sram_bytes=cfg.number(data, "sram_bytes", source, **sizes),
        flash_bytes=cfg.number(data, "flash_bytes", source, **sizes),
        active_power_mw=cfg.number(data, "active_power_mw", source, maximum=1e5),
        runtime=_runtime_from(cfg.mapping(data, "runtime", source), source),
        latency=_latency_from(cfg.mapping(data, "latency", source), source),
        description=str(data.get("description", "")),
        source=src_info,
        path=source,
    )


def bundled_profiles() -> dict[str, Path]:
    """Bundled profile names -> YAML paths."""
    return cfg.bundled(BUNDLED_DIR)


def load_profile(name_or_path: str | Path | HardwareProfile) -> HardwareProfile:
    """A bundled profile by name (``"stm32f746-tflm-cmsisnn"``) or a YAML file by path."""
    if isinstance(name_or_path, HardwareProfile):
        return name_or_path
    path = cfg.find_yaml(name_or_path, BUNDLED_DIR, "hardware profile")
    return profile_from_dict(cfg.read_yaml(path), str(path))


def list_profiles() -> list[HardwareProfile]:
    """Every bundled profile, loaded and validated."""
    return [load_profile(p) for p in bundled_profiles().values()]
