import dataclasses

import pytest
import torch
import torch.nn as nn

import searchprune as sp
from searchprune import zoo
from searchprune.cost import Buffer, buffers, live_peak, lower, plan_arena
from searchprune.errors import UnsupportedOpError
from searchprune.graph import trace
from searchprune.hardware import LatencyCoefficients, Runtime


def profile(**runtime):
    """A hand-made profile with round numbers, so costs can be checked by hand."""
    rt = dict(name="test", ram_reserved_bytes=1000, flash_reserved_bytes=1000, channel_multiple=1,
              im2col=False, op_overhead_bytes=100, quant_bytes_per_channel=8)
    rt.update(runtime)
    return sp.HardwareProfile(
        name="test-board", core="cortex-m0", clock_hz=1_000_000, sram_bytes=4096,
        flash_bytes=4096, active_power_mw=10.0, runtime=Runtime(**rt),
        latency=LatencyCoefficients(conv_cycles_per_mac=2.0, depthwise_cycles_per_mac=3.0,
                                    pointwise_cycles_per_mac=1.0, fc_cycles_per_mac=4.0,
                                    elementwise_cycles_per_element=0.5,
                                    pool_cycles_per_element=0.25, op_overhead_cycles=100))


def tiny_net():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 8, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def test_tiny_net_against_hand_computed_costs():
    r = sp.estimate(tiny_net(), (1, 1, 8, 8), profile())
    # params: conv 36 + folded-BN bias 4, depthwise 36 + 4, pointwise 32 + 8, fc 80 + 10
    assert r.params == 210
    # MACs: 8*8*4*9, 8*8*4*9, 8*8*8*4, 8*10
    assert r.macs == 2304 + 2304 + 2048 + 80
    # flash: 6 x 100 B metadata (5 ops + header), 184 B int8 weights, 4 B per bias
    # (26 channels), 8 B quantisation per conv channel (16) and per FC tensor (1)
    assert r.model_bytes == 600 + 184 + 104 + 136
    assert r.flash_bytes == r.model_bytes + 1000
    # RAM: pointwise step keeps the 256 B depthwise output and 512 B pointwise output live
    assert r.live_peak_bytes == 768 and r.arena_bytes == 768
    assert r.peak_ram_bytes == 768 + 1000
    # cycles: 4608 + 6912 + 2048 + pool 512*0.25 + fc 80*4, plus 5 ops x 100
    assert r.latency_ms == pytest.approx(14.516)
    assert r.energy_uj == pytest.approx(145.16)
    assert r.fits
    df = r.to_dataframe()
    assert list(df["kind"]) == ["conv", "depthwise", "pointwise", "pool", "fc"]
    assert list(df["activation"][:3]) == ["relu", "relu", "relu"]


def test_fits_checks_both_budgets():
    p = profile()
    small = dataclasses.replace(p, sram_bytes=1700)
    assert not sp.estimate(tiny_net(), (1, 1, 8, 8), small).fits


def test_meta_device_model_gives_the_same_report():
    a = sp.estimate(tiny_net(), (1, 1, 8, 8), profile())
    b = sp.estimate(tiny_net().to("meta"), (1, 1, 8, 8), profile())
    assert (a.macs, a.params, a.flash_bytes, a.peak_ram_bytes, a.latency_ms) == \
        (b.macs, b.params, b.flash_bytes, b.peak_ram_bytes, b.latency_ms)


def test_several_profiles_give_one_report_each():
    reports = sp.estimate(tiny_net(), (1, 1, 8, 8), ["stm32f746-tflm-cmsisnn", "stm32g031-cgen"])
    assert [r.profile for r in reports] == ["stm32f746-tflm-cmsisnn", "stm32g031-cgen"]
    assert reports[0].macs == reports[1].macs


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 64, 2)

    def forward(self, x):
        y = self.a(x)
        z = torch.relu(self.b(y))
        return self.head(torch.flatten(y + z, 1))


def test_residual_keeps_the_skip_tensor_alive():
    r = sp.estimate(Residual(), (1, 1, 8, 8), profile())
    kinds = [row["kind"] for row in r.layers]
    assert kinds == ["conv", "conv", "add", "fc"]
    # during the add: y (256), z (256) and the sum (256) are live
    assert r.live_peak_bytes == 768
    assert r.macs == 64 * 4 * 9 + 64 * 4 * 36 + 256 * 2


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 1)
        self.b = nn.Conv2d(1, 8, 1)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


def test_concat_output_and_live_set():
    r = sp.estimate(Concat(), (1, 1, 8, 8), profile())
    assert [row["kind"] for row in r.layers] == ["pointwise", "pointwise", "concat"]
    # concat step: its two inputs (256 + 512) and its output (768)
    assert r.live_peak_bytes == 256 + 512 + 768


def test_arena_planner_on_crafted_lifetimes():
    bufs = [Buffer("a", 96, 0, 1), Buffer("b", 48, 1, 2), Buffer("c", 96, 2, 3),
            Buffer("d", 32, 3, 3)]
    arena, plan = plan_arena(bufs)
    off = {b.name: b.offset for b in plan}
    # c first (largest, later tie), a shares offset 0 (no time overlap), b above both,
    # d above c (overlaps c at step 3), below b's slot since b is dead at step 3
    assert off == {"c": 0, "a": 0, "b": 96, "d": 96}
    assert arena == 144 == live_peak(bufs)


def test_planner_can_exceed_the_live_set_lower_bound():
    # a classic case where greedy-by-size leaves a hole
    bufs = [Buffer("x", 32, 0, 1), Buffer("y", 64, 1, 2), Buffer("z", 48, 2, 3),
            Buffer("w", 64, 3, 4)]
    arena, _ = plan_arena(bufs)
    assert arena >= live_peak(bufs)


def test_im2col_scratch_is_planned():
    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1))
    plain = sp.estimate(net, (1, 4, 8, 8), profile())
    scratch = sp.estimate(net, (1, 4, 8, 8), profile(im2col=True))
    # CMSIS-NN s8 conv buffer: 2 * cin * k * k int16 = 2 * 4 * 9 * 2 = 144 B
    assert scratch.arena_bytes - plain.arena_bytes == 144


@pytest.mark.parametrize("core,extra", [("cortex-m4f", 8 * 9 * 2), ("cortex-m0plus", 0),
                                        ("cortex-m85", 4 * 124 * 9)])
def test_depthwise_scratch_follows_cmsis_nn_per_core(core, extra):
    # arm_depthwise_conv_s8_opt_get_buffer_size: cin x kh x kw int16 with DSP, 4 x 124 x kh x
    # kw with Helium, nothing without DSP
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8))
    plain = sp.estimate(net, (1, 8, 8, 8), dataclasses.replace(profile(), core=core))
    with_dw = sp.estimate(net, (1, 8, 8, 8), dataclasses.replace(
        profile(depthwise_scratch=True), core=core))
    assert with_dw.arena_bytes - plain.arena_bytes == extra


def test_channel_multiple_rounds_work_up():
    net = nn.Sequential(nn.Conv2d(6, 6, 1, bias=False))
    p1 = sp.estimate(net, (1, 6, 4, 4), profile())
    p4 = sp.estimate(net, (1, 6, 4, 4), profile(channel_multiple=4))
    assert p1.macs == p4.macs == 16 * 36
    # 6 channels cost like 8 in and 8 out on a 4-wide kernel
    assert (p4.latency_ms * 1e3 - 100) / (p1.latency_ms * 1e3 - 100) == pytest.approx(64 / 36)


def test_unstructured_zeros_count_only_where_the_runtime_exploits_them():
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64, bias=False))
    with torch.no_grad():
        net[1].weight[:, :32] = 0
    dense_rt = sp.estimate(net, (1, 64), profile())
    sparse_rt = sp.estimate(net, (1, 64), profile(sparse_storage=True, sparse_kernels=True))
    assert dense_rt.model_bytes - sparse_rt.model_bytes == 2048 - 512  # values + bitmask
    assert sparse_rt.latency_ms < dense_rt.latency_ms
    assert sparse_rt.macs == dense_rt.macs  # MACs describe the model, not the runtime


@pytest.mark.parametrize("name, params, macs", [("resnet8", 77706, 12501632),
                                                ("dscnn_kws", 22604, 2656768),
                                                ("fc_autoencoder", 265864, 264192)])
def test_mlperf_tiny_models_match_published_counts(name, params, macs):
    model, shape = zoo.MODELS[name]()
    r = sp.estimate(model, shape, "ra6m4-tflm-cmsisnn")
    assert (r.params, r.macs) == (params, macs)


@pytest.mark.parametrize("name, size", [("resnet8", 98496), ("dscnn_kws", 53936),
                                        ("fc_autoencoder", 276976)])
def test_tflm_flash_within_5_percent_of_published_tflite(name, size):
    # the bundled TFLM profiles describe searchprune's own exports (litert-torch); the
    # published MLPerf files come from an older converter, whose format constants
    # benchmarks/fit_bundled_profiles.py prints: 440 B per op, 40 B per conv channel,
    # FC quantised per tensor
    base = sp.load_profile("ra6m4-tflm-cmsisnn")
    mlperf_format = dataclasses.replace(base, runtime=dataclasses.replace(
        base.runtime, op_overhead_bytes=440, quant_bytes_per_channel=40, tensor_overhead_bytes=0,
        model_overhead_bytes=0, per_channel_fc=False))
    model, shape = zoo.MODELS[name]()
    r = sp.estimate(model, shape, mlperf_format)
    assert abs(r.model_bytes / size - 1) < 0.05


@pytest.mark.bad_input
def test_unknown_op_is_reported_by_name():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(8, 8)

        def forward(self, x):
            return self.rnn(x)[0]

    with pytest.raises(UnsupportedOpError, match="GRU"):
        sp.estimate(Odd(), (1, 1, 8), profile())


def test_graph_folds_bn_and_lowers_flatten():
    g = trace(tiny_net(), (1, 1, 8, 8))
    assert [op.bias for op in g.ops[:2]] == [True, True]  # BN folded into a bias
    assert [op.kind for op in g.ops][-2:] == ["reshape", "fc"]
    lowered = lower(g, profile())  # a flatten after global pooling is free
    assert len(lowered.ops) == 5 and len(buffers(lowered)) == 6


def test_tflm_lowering_adds_pad_and_input_reshape():
    tflm = profile(name="tflm-reference")
    net = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(64, 3))
    g = lower(trace(net, (1, 2, 8, 8)), tflm)
    assert [op.module_type or op.kind for op in g.ops] == ["PAD", "Conv2d", "Flatten", "Linear"]
    assert g.tensors[g.ops[0].output] == (1, 2, 10, 10)  # the padded copy the converter writes
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    r_tflm = sp.estimate(mlp, (1, 1, 8, 8), tflm)
    r_other = sp.estimate(mlp, (1, 1, 8, 8), profile())
    assert r_tflm.arena_bytes == 64 + 64 and r_other.arena_bytes == 64 + 16


class Audio1d(nn.Module):
    """Conv1d with stride and dilation, max pooling, upsampling, softmax."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 8, 3, stride=2, padding=2, dilation=2)
        self.pool = nn.MaxPool1d(2)
        self.up = nn.Upsample(scale_factor=2)
        self.head = nn.Conv1d(8, 4, 1)

    def forward(self, x):
        return torch.softmax(self.head(self.up(self.pool(torch.relu(self.conv(x))))), dim=1)


def test_conv1d_dilation_pooling_upsample_shapes_and_macs():
    r = sp.estimate(Audio1d(), (1, 2, 32), profile())
    rows = {row["kind"] + ":" + str(row["out_shape"]): row for row in r.layers}
    # L_out = (32 + 2*2 - 2*(3-1) - 1) // 2 + 1 = 16
    assert rows["conv:(1, 8, 16)"]["macs"] == 16 * 8 * 3 * 2
    assert "pool:(1, 8, 8)" in rows and "elementwise:(1, 8, 16)" in rows  # upsampled back
    assert rows["pointwise:(1, 4, 16)"]["macs"] == 16 * 4 * 8
    assert r.layers[-1]["kind"] == "elementwise"  # softmax is an op, not dropped
    assert r.macs == 768 + 512


def test_plan_table_is_a_valid_placement_that_reaches_the_arena():
    model, shape = zoo.MODELS["resnet8"]()
    report = sp.estimate(model, shape, "ra6m4-tflm-cmsisnn")
    plan = report.plan_dataframe()
    assert len(plan) == len(report.plan) and plan["end"].max() == report.arena_bytes
    spans = [(b.first, b.last, b.offset, b.offset + b.size) for b in report.plan]
    for i, (f1, l1, o1, e1) in enumerate(spans):  # alive together -> disjoint in the arena
        for f2, l2, o2, e2 in spans[i + 1:]:
            if f1 <= l2 and f2 <= l1:
                assert e1 <= o2 or e2 <= o1
    top = plan[plan["end"] == report.arena_bytes]
    assert top["at_peak"].all() and not plan["at_peak"].all()
    assert "input_1" in set(plan["buffer"]) and (plan["bytes"] > 0).all()
