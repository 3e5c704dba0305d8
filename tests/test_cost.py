"""dmlviz.cost: FLOPs against hand counts, parameters, throughput, peak memory, tables."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dmlviz.cost import (
    ModuleCost,
    _make_inputs,
    cost_table,
    count_flops,
    count_macs,
    count_parameters,
    flops_by_operator,
    format_cost_table,
    images_per_second,
    measure_cost,
    module_cost,
    peak_memory,
)


class Double(nn.Module):
    """One allocation of the input's size: ``2·x``."""

    def forward(self, x):
        return 2 * x


@pytest.mark.parametrize("bias", [False, True])
def test_flops_of_1x1_conv_match_hand_count(bias):
    # a 1×1 conv is a (Cout × Cin) matrix applied at H·W positions: Cin·Cout·H·W
    # multiply-accumulates = 2·Cin·Cout·H·W FLOPs per image (the bias add is element-wise)
    cin, cout, h, w = 16, 8, 5, 7
    conv = nn.Conv2d(cin, cout, 1, bias=bias)
    assert count_flops(conv, (cin, h, w)) == 2 * cin * cout * h * w
    assert count_flops(conv, (cin, h, w), batch_size=3) == 2 * cin * cout * h * w
    assert count_flops(conv, (cin, h, w), batch_size=3, per_image=False) == 3 * 2 * cin * cout * h * w
    assert flops_by_operator(conv, (cin, h, w), batch_size=2) == {
        "aten.convolution": 2 * 2 * cin * cout * h * w}


def test_flops_of_3x3_conv_linear_and_matmul():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    assert count_flops(conv, (4, 8, 8)) == 2 * 4 * 6 * 9 * 64
    assert count_flops(nn.Linear(10, 3), (10,)) == 2 * 10 * 3

    class Gram(nn.Module):
        def forward(self, x):  # (B, N, C) -> (B, N, N)
            return x @ x.transpose(1, 2)

    assert count_flops(Gram(), (12, 5)) == 2 * 12 * 12 * 5
    # element-wise work is not counted (module docstring)
    assert count_flops(nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.Sigmoid()), (4, 8, 8)) == 0


def test_macs_are_multiply_accumulates_of_a_hand_count():
    """AiA's Table 8 counts a 1×1 convolution ``c_in → c_out`` at ``h·w`` positions as
    ``c_in · c_out · h · w`` "FLOPs" — multiply-accumulates. Hand counts, not the counter."""
    cin, cout, h, w = 16, 8, 5, 7
    conv = nn.Conv2d(cin, cout, 1)
    assert count_macs(conv, (cin, h, w)) == cin * cout * h * w
    assert count_macs(conv, (cin, h, w), batch_size=3, per_image=False) == 3 * cin * cout * h * w
    assert count_macs(nn.Linear(10, 3), (10,)) == 10 * 3
    c = module_cost(conv, (cin, h, w), batch_size=2, time_it=False, memory=False)
    assert c.macs == cin * cout * h * w and c.flops == 2 * c.macs
    text = format_cost_table({"conv": c}, macs=True)
    assert text.splitlines()[0].split()[:4] == ["module", "params", "MFLOPs", "MMACs"]
    assert text.splitlines()[1].split()[2:4] == [f"{2 * cin * cout * h * w / 1e6:.3f}",
                                                 f"{cin * cout * h * w / 1e6:.3f}"]
    assert "MMACs" not in format_cost_table({"conv": c})  # unchanged by default


def test_count_parameters():
    m = nn.Sequential(nn.Conv2d(3, 5, 1), nn.BatchNorm2d(5), nn.Linear(5, 2))
    assert count_parameters(m) == (3 * 5 + 5) + (5 + 5) + (5 * 2 + 2)
    m[0].weight.requires_grad_(False)
    assert count_parameters(m, trainable_only=True) == count_parameters(m) - 15


def test_peak_memory_counts_what_the_forward_allocates():
    x_shape = (3, 8, 8)
    # one float32 output of the input's size
    assert peak_memory(Double(), x_shape, batch_size=4) == 4 * 3 * 8 * 8 * 4
    # conv → BN → ReLU: at most two maps of the output's size are alive at once
    seq = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
    assert peak_memory(seq, x_shape, batch_size=4) == 2 * 4 * 8 * 8 * 8 * 4


def test_measurements_restore_training_mode_and_are_positive():
    seq = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    seq.train()
    assert images_per_second(seq, (3, 8, 8), batch_size=2, repeats=2, warmup=0) > 0
    assert seq.training
    before = seq[1].running_mean.clone()
    count_flops(seq, (3, 8, 8))
    peak_memory(seq, (3, 8, 8), batch_size=2)
    assert torch.equal(seq[1].running_mean, before)  # eval mode: BN statistics untouched


def test_module_cost_and_table():
    conv = nn.Conv2d(4, 4, 1, bias=False)
    c = module_cost(conv, (4, 6, 6), batch_size=2, repeats=1, warmup=0)
    assert isinstance(c, ModuleCost)
    assert (c.parameters, c.flops, c.input_shape, c.batch_size) == (16, 2 * 16 * 36, (4, 6, 6), 2)
    assert c.images_per_second > 0 and c.peak_memory_bytes == 2 * 4 * 36 * 4
    table = cost_table({"conv": conv, "double": Double()}, (4, 6, 6), batch_size=2,
                       time_it=False, memory=False)
    assert math.isnan(table["double"].images_per_second) and table["double"].peak_memory_bytes == -1
    text = format_cost_table(table)
    assert text.splitlines()[1].split()[:3] == ["conv", "16", "0.001"] and "—" in text
    assert format_cost_table(table, names=["double"]).count("\n") == 1
    assert set(c.to_dict()) >= {"parameters", "flops", "images_per_second"}


def test_several_inputs():
    class Add(nn.Module):
        def forward(self, a, b):
            return a @ b

    assert count_flops(Add(), ((3, 4), (4, 5))) == 2 * 3 * 4 * 5
    xs = _make_inputs(((3, 4), (4, 5)), batch_size=2)
    assert [tuple(x.shape) for x in xs] == [(2, 3, 4), (2, 4, 5)]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="module must be a torch.nn.Module"):
        count_parameters("conv")
    with pytest.raises(ValueError, match="inputs must be"):
        _make_inputs("x")
    with pytest.raises(ValueError, match="sizes >= 1"):
        _make_inputs((3, 0, 4))
    with pytest.raises(ValueError, match="batch_size"):
        _make_inputs((3, 4), batch_size=0)
    with pytest.raises(ValueError, match="repeats"):
        images_per_second(Double(), (3,), repeats=0)
    with pytest.raises(ValueError, match="modules must be a non-empty mapping"):
        cost_table({}, (3,))
    with pytest.raises(ValueError, match="not in the table"):
        format_cost_table({}, names=["x"])


def test_measure_cost_rows():
    """Exact softmax attention vs CSALR's factors W (B v): sizes of the N × N map and the
    factors (N×M + M×M + M×N), and positive timings."""
    rows = measure_cost([64, 128], m=8, channels=4, repeats=1)
    assert [r["n"] for r in rows] == [64, 128]
    assert measure_cost([64], m=8, channels=4, repeats=1, inverse="iterative")[0]["nystrom_s"] > 0
    assert rows[1]["exact_bytes"] == 128 * 128 * 4 and rows[1]["nystrom_bytes"] == (2 * 128 * 8 + 64) * 4
    assert all(r["exact_s"] > 0 and r["nystrom_s"] > 0 for r in rows)


@pytest.mark.gpu
def test_cuda_peak_memory_and_flops_match_cpu():
    seq = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
    assert count_flops(seq.cuda(), (3, 8, 8)) == count_flops(seq.cpu(), (3, 8, 8))
    cuda_bytes = peak_memory(seq, (3, 8, 8), batch_size=64, device="cuda")
    cpu_bytes = peak_memory(seq, (3, 8, 8), batch_size=64, device="cpu")
    assert cpu_bytes <= cuda_bytes <= 2 * cpu_bytes  # allocator rounding, same tensors
    assert next(seq.parameters()).device.type == "cpu"  # moved back


@pytest.mark.gpu
def test_measure_cost_on_cuda_reports_peak_memory():
    assert measure_cost([256], m=16, device="cuda", repeats=1)[0]["peak_exact_bytes"] > 0
