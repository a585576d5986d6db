"""Reference models of MLPerf Tiny, rebuilt in PyTorch from the published int8 graphs.

They calibrate and check the cost model (``shared/calibration/architectures.md``). Each
factory returns ``(model, input_shape)``; BatchNorm is folded in the int8 files, so the
convs carry biases here. Parameter and MAC counts equal the published ones.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.relu1(self.conv1(x)))
        s = x if self.shortcut is None else self.shortcut(x)
        return self.relu2(s + y)


def resnet8() -> tuple[nn.Module, tuple]:
    """MLPerf Tiny IC: ResNet-8 on 32x32x3 CIFAR-10 (77,706 params, 12,501,632 MACs)."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), _ResBlock(16, 16, 1),
                          _ResBlock(16, 32, 2), _ResBlock(32, 64, 2), nn.AvgPool2d(8),
                          nn.Flatten(), nn.Linear(64, 10), nn.Softmax(dim=1))
    return model, (1, 3, 32, 32)


def dscnn_kws() -> tuple[nn.Module, tuple]:
    """MLPerf Tiny KWS: DS-CNN on 49x10 MFCC (22,604 params, 2,656,768 MACs).

    TF's SAME padding of the 10x4 stride-2 stem (H 4/5, W 1/1) is ``padding=(5, 1)`` here:
    the same 25x5 output and cost."""
    layers: list[nn.Module] = [nn.Conv2d(1, 64, (10, 4), 2, (5, 1)), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Conv2d(64, 64, 3, 1, 1, groups=64), nn.ReLU(), nn.Conv2d(64, 64, 1), nn.ReLU()]
    layers += [nn.AvgPool2d((25, 5)), nn.Flatten(), nn.Linear(64, 12), nn.Softmax(dim=1)]
    return nn.Sequential(*layers), (1, 1, 49, 10)


def fc_autoencoder() -> tuple[nn.Module, tuple]:
    """MLPerf Tiny AD: dense autoencoder 640-128x4-8-128x4-640 (265,864 params, 264,192 MACs)."""
    widths = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers), (1, 640)


MODELS = {"resnet8": resnet8, "dscnn_kws": dscnn_kws, "fc_autoencoder": fc_autoencoder}

# model_name prefixes of shared/calibration/measurements.csv -> factory names above
CALIBRATION_NAMES = {"MLPerfTiny-IC ResNet-8": "resnet8", "MLPerfTiny-KWS DS-CNN": "dscnn_kws",
                     "MLPerfTiny-AD FC-AutoEncoder": "fc_autoencoder"}
