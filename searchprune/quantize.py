"""Int8 quantisation as the deployed model runs it: PT2E post-training quantisation with
per-channel symmetric weights and NHWC input (litert-torch's quantizer, made to annotate every
residual add), or quantisation-aware fine-tuning; and the int8 accuracy a search can use as an
objective. Needs ``pip install -e ".[tflite]"``."""
from __future__ import annotations

import copy
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .errors import SearchpruneError


def litert_modules():
    # litert-torch prints a progress line per conversion stage on stdout, which would mix
    # with our own output; a user who wants it sets LITERT_TORCH_SHOW_PROGRESS=y
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    # and the converter stack logs about itself (TensorFlow's C++ INFO lines, torchao's
    # optional CUDA kernels, torch pytree deprecations): nothing about the user's model;
    # TF_CPP_MIN_LOG_LEVEL=0 brings TensorFlow's back
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    try:
        import litert_torch
        from litert_torch.quantize.pt2e_quantizer import (PT2EQuantizer,
                                                          get_symmetric_quantization_config)
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as e:
        raise SearchpruneError('export needs the converter: pip install -e ".[tflite]" '
                               f"({e})") from None
    return litert_torch, PT2EQuantizer, get_symmetric_quantization_config, QuantConfig, \
        prepare_pt2e, convert_pt2e


@dataclass(frozen=True)
class QAT:
    """Quantisation-aware fine-tuning: ``epochs`` epochs of Adam at ``lr`` on ``task``'s
    training split through int8 fake quantisation (BatchNorm folded into the convs first)."""

    task: Any
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0


def quantize_int8(model: nn.Module, input_shape: tuple, calibration: torch.Tensor,
                  qat: QAT | None = None):
    """Int8 quantisation (PT2E, per-channel symmetric weights) of ``model`` with NHWC input:
    post-training, calibrated on ``calibration`` (NCHW samples), or quantisation-aware
    fine-tuning with ``qat``. ``model`` is not changed. Returns (quantised module, quantizer,
    sample input)."""
    litert_torch, PT2EQuantizer, config, _, prepare_pt2e, convert_pt2e = litert_modules()
    source = model.eval()
    if qat is not None:
        from torch.fx.experimental.optimization import fuse
        source = fuse(copy.deepcopy(model).eval())  # BN folded: what runs on the MCU
    image = len(input_shape) == 3
    nhwc = litert_torch.to_channel_last_io(source, args=[0]) if image else source
    sample = (torch.zeros(1, *nhwc_shape(input_shape)),)
    quantizer = _add_aware(PT2EQuantizer)().set_global(config(
        is_per_channel=True, is_dynamic=False, is_qat=qat is not None))
    if qat is None:
        prepared = prepare_pt2e(torch.export.export(nhwc, sample).module(), quantizer)
        with torch.no_grad():
            for x in calibration:
                prepared(to_nhwc(x[None]))
    else:
        prepared = _qat_finetune(nhwc, input_shape, quantizer, qat, image)
    converted = convert_pt2e(prepared, fold_quantize=False)
    converted.training = False
    return converted, quantizer, sample


def _qat_finetune(nhwc: nn.Module, input_shape: tuple, quantizer, qat: QAT, image: bool):
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from .training import train
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    dims = (({0: batch},),) if image else ({0: batch},)  # the NHWC wrapper takes *args
    exported = torch.export.export(nhwc, (torch.zeros(2, *nhwc_shape(input_shape)),),
                                   dynamic_shapes=dims).module()
    prepared = prepare_qat_pt2e(exported, quantizer)
    train(_ExportedForTraining(prepared), qat.task, qat.epochs, qat.batch_size, qat.lr, qat.seed)
    return prepared


class _ExportedForTraining(nn.Module):
    """An exported (PT2E) graph as ``training.train`` drives it: NCHW batches in, and
    ``train()`` / ``eval()`` switch the graph's fake-quant and BN ops the way torchao
    allows (an exported graph refuses ``.train()`` itself)."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(to_nhwc(x))

    def train(self, mode: bool = True):
        from torchao.quantization.pt2e import (move_exported_model_to_eval,
                                               move_exported_model_to_train)
        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.graph)
        self.training = mode
        return self


def _add_aware(base):
    """litert-torch's quantizer leaves an ADD unannotated when no ReLU follows it (chained
    inverted-residual blocks): the converter then emits DEQUANTIZE / float ADD / QUANTIZE.
    This subclass annotates every remaining tensor add like litert's own add annotator."""
    from litert_torch.quantize.pt2e_quantizer_utils import (QuantizationAnnotation,
                                                            get_input_act_qspec,
                                                            get_output_act_qspec)

    class AddAwareQuantizer(base):
        # BatchNorm is folded before quantisation (QAT too): no conv-bn patterns to annotate,
        # and litert's conv-bn annotators fail on torch 2.13
        STATIC_QAT_ONLY_OPS: list = []

        def annotate(self, model):
            model = super().annotate(model)
            cfg = self.global_config
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target != torch.ops.aten.add.Tensor or \
                        "quantization_annotation" in node.meta:
                    continue
                inputs = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
                if len(inputs) != 2:
                    continue
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={a: get_input_act_qspec(cfg) for a in inputs},
                    output_qspec=get_output_act_qspec(cfg), _annotated=True)
            return model

    return AddAwareQuantizer


def int8_accuracy(model: nn.Module, task, calibration_samples: int = 64,
                  qat: QAT | None = None) -> float:
    """Test accuracy of ``model`` after the int8 quantisation the export uses (PT2E q/dq
    graph, evaluated in PyTorch, one sample at a time as on the MCU): post-training, or
    quantisation-aware fine-tuned with ``qat``."""
    shape = tuple(task.input_shape)
    x_train, _ = task.tensors("train")
    quantized, _, _ = quantize_int8(model, shape, x_train[:calibration_samples], qat)
    x, y = task.tensors("test")
    with torch.no_grad():
        correct = sum(int(quantized(to_nhwc(x[i:i + 1])).argmax(-1).item() == int(y[i]))
                      for i in range(len(x)))
    return correct / len(x)


def nhwc_shape(shape: tuple) -> tuple:
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else tuple(shape)


def to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1) if x.dim() == 4 else x
