"""Trained trial models rebuilt from their configuration, exported for deployment (int8
TFLite, a C array for TFLM) and verified in the TFLM interpreter.

A trial's pruned model is stored as a plain state dict (``runs/NAME/models/<trial>.pt``).
Loading never unpickles code: :func:`rebuild` builds the dense architecture from the space
and the trial's parameters, shrinks each layer to the shapes of the saved tensors (structured
pruning removed channels), and loads the tensors with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from .errors import SearchpruneError
from .io import atomic_write_bytes, atomic_write_text, load_state, save_state
from .quantize import QAT, litert_modules, quantize_int8, to_nhwc


def shrink_to(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Resize every conv / linear / BatchNorm to the shapes in ``state`` (what structured
    pruning left), so that ``load_state_dict`` fits."""
    for name, m in model.named_modules():
        w = state.get(f"{name}.weight")
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and w is not None:
            depthwise = m.groups > 1 and m.groups == m.in_channels
            m.out_channels = w.shape[0]
            if depthwise:  # channel multiplier 1: groups follow the channels
                m.groups = m.in_channels = w.shape[0]
            else:
                m.in_channels = w.shape[1] * m.groups
            m.weight = nn.Parameter(torch.empty_like(w))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(w.shape[0]))
        elif isinstance(m, nn.Linear) and w is not None:
            m.out_features, m.in_features = w.shape
            m.weight = nn.Parameter(torch.empty_like(w))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(w.shape[0]))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            rm = state.get(f"{name}.running_mean")
            if rm is not None:
                n = rm.shape[0]
                m.num_features = n
                if m.affine:
                    m.weight = nn.Parameter(torch.empty(n))
                    m.bias = nn.Parameter(torch.empty(n))
                m.running_mean = torch.empty(n)
                m.running_var = torch.empty(n)
    return model


def rebuild(config: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """The trained model from ``config`` (family, arch, input_shape, num_classes; or the
    ``model_factory`` of a pruning search) and its tensors. The family or factory is imported
    by name, like the space or the ``--model`` that named it."""
    if config.get("model_factory"):
        from .calibration import resolve_model
        out = resolve_model(config["model_factory"])()
        model = out[0] if isinstance(out, tuple) else out
    else:
        from .spaces.families import resolve_family
        builder = resolve_family(config["family"], "config.json")
        model = builder(config["arch"], tuple(config["input_shape"]), int(config["num_classes"]))
    shrink_to(model, state)
    model.load_state_dict(state)
    return model.eval()


def load_model(folder: str | Path) -> nn.Module:
    """Reload an exported model: ``folder/config.json`` + ``folder/model.pt`` (tensors only).

    >>> # model = searchprune.export.load_model("deploy/")  # doctest: +SKIP
    """
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise SearchpruneError(f"{folder / 'config.json'}: cannot be read: {e}") from None
    return rebuild(config, load_state(folder / "model.pt"))


# --------------------------------------------------------------------------- deployment

def to_tflite(model: nn.Module, input_shape: tuple, calibration: torch.Tensor,
              qat: QAT | None = None) -> bytes:
    """Full-int8 TFLite flatbuffer (int8 input and output, NHWC input: no TRANSPOSE at the
    input), converted with litert-torch, tensor names stripped. ``qat``: quantisation-aware
    fine-tuning instead of post-training calibration."""
    import tempfile
    litert_torch, _, _, QuantConfig, _, _ = litert_modules()
    converted, quantizer, sample = quantize_int8(model, input_shape, calibration, qat)
    edge = litert_torch.convert(converted, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        edge.export(str(path))
        return strip_names(path.read_bytes())


def strip_names(flatbuffer: bytes) -> bytes:
    """The same model without tensor names, signature and metadata: litert-torch writes long
    names that cost flash on the MCU (a 8.6 KB model shrinks to 4.5 KB) and TFLM never reads."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    for graph in model.subgraphs:
        graph.name = b""
        for tensor in graph.tensors:
            tensor.name = b""
    model.description = b""
    model.signatureDefs = None
    model.metadata = None
    model.metadataBuffer = None
    builder = flatbuffers.Builder(len(flatbuffer))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def tflite_ops(flatbuffer: bytes) -> list[dict]:
    """The operators of a .tflite flatbuffer in execution order: builtin name, the shapes of
    its non-constant inputs and of its outputs (NHWC)."""
    from ai_edge_litert import schema_py_generated as schema
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.Subgraphs(0)

    def shape(t):
        tensor = graph.Tensors(t)
        return tuple(int(tensor.Shape(i)) for i in range(tensor.ShapeLength()))

    def constant(t):
        return model.Buffers(graph.Tensors(t).Buffer()).DataLength() > 0

    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        ins = [op.Inputs(j) for j in range(op.InputsLength())]
        ops.append({"op": names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())],
                    "inputs": [shape(t) for t in ins if t >= 0 and not constant(t)],
                    "weights": [shape(t) for t in ins if t >= 0 and constant(t)],
                    "outputs": [shape(op.Outputs(j)) for j in range(op.OutputsLength())]})
    return ops


class TFLMRunner:
    """The real TFLM interpreter (tflite-micro, reference kernels) on one flatbuffer."""

    def __init__(self, flatbuffer: bytes, arena_size: int = 1 << 22):
        try:
            from tflite_micro.python.tflite_micro import runtime
        except ImportError:
            raise SearchpruneError('verification needs tflite-micro: pip install -e ".[tflite]"') \
                from None
        self.interpreter = runtime.Interpreter.from_bytes(flatbuffer, arena_size=arena_size)
        inp = self.interpreter.get_input_details(0)
        self.scale = float(inp["quantization_parameters"]["scales"][0])
        self.zero_point = int(inp["quantization_parameters"]["zero_points"][0])
        self.input_shape = tuple(int(v) for v in inp["shape"])

    def allocations(self) -> dict[str, int]:
        """Arena bytes the interpreter planned: total, head (activations + scratch), tail."""
        import os
        import re
        import tempfile
        with tempfile.TemporaryFile(mode="w+") as f:
            saved = os.dup(2)
            os.dup2(f.fileno(), 2)  # print_allocations writes to the C-level stderr
            try:
                self.interpreter.print_allocations()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            f.seek(0)
            text = f.read()
        return {k: int(re.search(rf"allocation {k} (\d+) bytes", text).group(1))
                for k in ("total", "head", "tail")}

    def predict(self, x: torch.Tensor):
        """Top-1 classes of NCHW float samples, through int8 in the interpreter."""
        import numpy as np
        out = []
        for sample in x:
            q = torch.round(to_nhwc(sample[None]) / self.scale + self.zero_point)
            q = q.clamp(-128, 127).to(torch.int8).numpy().reshape(self.input_shape)
            self.interpreter.set_input(q, 0)
            self.interpreter.invoke()
            out.append(int(np.argmax(self.interpreter.get_output(0))))
        return out


def verify_flatbuffer(flatbuffer: bytes, model: nn.Module, task, reports=(),
                      samples: int | None = None) -> dict:
    """Run ``flatbuffer`` in the TFLM interpreter on ``task``'s test set (the first
    ``samples``): arena head and total, file size, ops, top-1 agreement with ``model`` and
    int8 accuracy, next to the cost ``reports``' estimates (what ``verify.json`` holds)."""
    runner = TFLMRunner(flatbuffer)
    alloc = runner.allocations()
    x_test, y_test = task.tensors("test")
    if samples:
        x_test, y_test = x_test[:samples], y_test[:samples]
    with torch.no_grad():
        torch_top1 = model.eval()(x_test).argmax(1).tolist()
    tflm_top1 = runner.predict(x_test)
    truth = y_test.tolist()
    ops = [o["op"] for o in tflite_ops(flatbuffer)]
    n = len(tflm_top1)

    def share(a, b):
        return sum(int(i == j) for i, j in zip(a, b)) / n

    return {"samples": n,
            "full_int8": not any(o in ("DEQUANTIZE", "QUANTIZE") for o in ops),
            "ops": ops,
            "top1_agreement_tflm_vs_pytorch": share(torch_top1, tflm_top1),
            "accuracy_pytorch": share(torch_top1, truth),
            "accuracy_int8_tflm": share(tflm_top1, truth),
            "tflm_arena_head_bytes": alloc["head"], "tflm_arena_total_bytes": alloc["total"],
            "tflite_file_bytes": len(flatbuffer),
            "estimates": {r.profile: {"arena_bytes": r.arena_bytes, "model_bytes": r.model_bytes}
                          for r in reports}}


def check_architecture(space, arch: dict, task, seed: int = 0, epochs: int = 4,
                       profile: str = "stm32l4r5-tflm-ref") -> dict:
    """Build ``arch`` of ``space``, train it for ``epochs`` on ``task``, export it and run it in
    TFLM: the interpreter's arena head and file size next to the cost model's estimates on
    ``profile`` (default: TFLM with reference kernels, as in the interpreter) and the int8
    top-1 agreement with PyTorch. How to check a family or space of your own."""
    from .cost import estimate
    from .spaces import build_as_trained
    from .training import train
    shape = space.input_shape(arch, tuple(task.input_shape))
    task = task.for_input(shape)
    model = build_as_trained(space, arch, shape, task.num_classes, seed)
    train(model, task, epochs=epochs, batch_size=32, lr=0.01, seed=seed)
    model.eval()
    x_train, _ = task.tensors("train")
    flatbuffer = to_tflite(model, shape, x_train[:256])
    report = estimate(model, (1, *shape), profile)
    v = verify_flatbuffer(flatbuffer, model, task, [report])
    return {"space": space.name, "arch": arch, "input_shape": list(shape),
            "transpose_at_input": v["ops"][0] == "TRANSPOSE", "full_int8": v["full_int8"],
            "tflm_head_bytes": v["tflm_arena_head_bytes"],
            "arena_estimate_bytes": report.arena_bytes, "tflite_bytes": len(flatbuffer),
            "flash_estimate_bytes": report.model_bytes,
            "flash_error_pct": round(100 * (report.model_bytes / len(flatbuffer) - 1), 2),
            "top1_agreement": v["top1_agreement_tflm_vs_pytorch"],
            "accuracy_pytorch": v["accuracy_pytorch"], "accuracy_int8_tflm": v["accuracy_int8_tflm"]}


def c_array(flatbuffer: bytes, name: str, arena_bytes: int) -> tuple[str, str]:
    """``model_data.h`` / ``model_data.cc``: the flatbuffer as a 16-byte aligned array, its
    length and the tensor-arena size to give TFLM."""
    header = (f"// Generated by searchprune: int8 TFLite model for TFLM.\n#pragma once\n"
              f"#include <cstddef>\n\n"
              f"constexpr size_t {name}_arena_size = {arena_bytes};  // bytes for the tensor arena\n"
              f"extern const unsigned char {name}[];\nextern const size_t {name}_len;\n")
    rows = [", ".join(f"0x{b:02x}" for b in flatbuffer[i:i + 12])
            for i in range(0, len(flatbuffer), 12)]
    body = (f'#include "model_data.h"\n\nalignas(16) const unsigned char {name}[] = {{\n  '
            + ",\n  ".join(rows) + f"\n}};\nconst size_t {name}_len = {len(flatbuffer)};\n")
    return header, body


def export_trial(result, number: int, out: str | Path, runs_dir: str | Path = "runs",
                 verify_samples: int | None = None, qat_epochs: int | None = None,
                 task=None) -> Path:
    """Write ``model.pt``, ``config.json``, ``model_int8.tflite``, ``model_data.cc/.h`` and
    ``verify.json`` for trial ``number`` of a study (see the README). The int8 model is
    quantised as the trial was (post-training, or quantisation-aware fine-tuned when the
    search chose that); ``qat_epochs`` overrides it (0: post-training). ``task``: the Task,
    for studies searched on one built in Python."""
    from .cost import estimate
    from .hardware import load_profile
    from .pruning import sparsity
    from .search.optuna_backend import study_dir
    from .training import load_task
    if qat_epochs is not None and (isinstance(qat_epochs, bool) or not isinstance(qat_epochs, int)
                                   or qat_epochs < 0):
        from .errors import ConfigError
        raise ConfigError("argument", "qat_epochs", qat_epochs, "must be an integer >= 0")
    out = Path(out)
    study = result.study
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise SearchpruneError(f"study {result.name!r} has no trial {number}")
    trial = trials[number]
    if not trial.user_attrs.get("trained"):
        raise SearchpruneError(f"trial {number} was not trained (rejected or stopped): "
                               "nothing to export")
    attrs = study.user_attrs
    if attrs["family"].startswith("trained ") and not attrs.get("model_factory"):
        raise SearchpruneError(
            f"study {result.name!r} pruned a model object: its architecture cannot be rebuilt "
            "by name. Start the pruning search with factory='pkg.module:fn' (the CLI's --model "
            "does), or take the pruned model from runs/<name>/models/ yourself")
    config = {"study": result.name, "trial": number, "family": attrs["family"],
              "model_factory": attrs.get("model_factory"),
              "space": attrs["space"], "arch": trial.user_attrs["arch"],
              "input_shape": trial.user_attrs["input_shape"], "num_classes": attrs["num_classes"],
              "pruning": {**trial.user_attrs.get("pruning", {}),
                          "achieved_ratios": trial.user_attrs.get("achieved_ratios", {})},
              "metrics": trial.user_attrs.get("metrics", {}), "task": attrs["task"]}
    saved = study_dir(result.name, runs_dir) / "models" / f"{number}.pt"
    if not saved.is_file():
        raise SearchpruneError(f"{saved}: trial {number} has no saved model (models are saved "
                               "for studies stored under runs/)")
    state = load_state(saved)
    model = rebuild(config, state)
    config["sparsity"] = sparsity(model)
    if task is None:
        source = attrs.get("task_source", attrs["task"])
        if source is None:
            raise SearchpruneError(f"study {result.name!r} was searched on a Task built in "
                                   "Python: pass it to export (task=...)")
        task = load_task(source)
    shape = tuple(config["input_shape"])
    task = task.for_input(shape)
    x_train, _ = task.tensors("train")
    qat = None
    if qat_epochs is None and trial.user_attrs.get("int8_method") == "qat":
        qat = QAT(task, **trial.user_attrs["qat"])
    elif qat_epochs:
        qat = QAT(task, epochs=qat_epochs)
    config["quantization"] = {"method": "ptq", "calibration_samples": 256} if qat is None else \
        {"method": "qat", "epochs": qat.epochs, "lr": qat.lr, "batch_size": qat.batch_size}
    flatbuffer = to_tflite(model, shape, x_train[:256], qat)
    profiles = [load_profile(h) for h in attrs["hardware"]]
    reports = estimate(model, (1, *shape), profiles)
    config["costs"] = {r.profile: {**r.metrics(), "arena_bytes": r.arena_bytes,
                                   "model_bytes": r.model_bytes} for r in reports}
    verify = verify_flatbuffer(flatbuffer, model, task, reports, verify_samples)
    verify["quantization"] = config["quantization"]["method"]
    # measured on a 64-bit host: ample for a 32-bit MCU
    arena_for_c = verify["tflm_arena_total_bytes"] + 1024
    header, body = c_array(flatbuffer, "g_model", arena_for_c)
    out.mkdir(parents=True, exist_ok=True)
    save_state(model, out / "model.pt")
    atomic_write_text(out / "config.json", json.dumps(config, indent=2, default=float))
    atomic_write_bytes(out / "model_int8.tflite", flatbuffer)
    atomic_write_text(out / "model_data.h", header)
    atomic_write_text(out / "model_data.cc", body)
    atomic_write_text(out / "verify.json", json.dumps(verify, indent=2))
    return out
