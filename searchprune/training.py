"""Tasks (datasets) and the train / fine-tune / evaluate loops of a trial."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from .errors import SearchpruneError, UnknownNameError


@dataclass
class Task:
    """A classification task: train and test sets of (x, label) with ``num_classes`` classes.

    ``train`` / ``test`` are torch Datasets or ``(x, y)`` tensor pairs; ``input_shape`` is one
    sample's shape without the batch dimension (taken from the data when omitted).
    """

    train: Dataset | tuple
    test: Dataset | tuple
    num_classes: int
    name: str = "custom"
    input_shape: tuple | None = None

    def __post_init__(self):
        self.train = _as_dataset(self.train, "train")
        self.test = _as_dataset(self.test, "test")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise SearchpruneError(f"Task: num_classes = {self.num_classes!r}: must be an int >= 2")
        x0, _ = self.train[0]
        shape = tuple(x0.shape)
        if self.input_shape is None:
            self.input_shape = shape
        xt, _ = self.test[0]
        if tuple(xt.shape) != shape:
            raise SearchpruneError(f"Task: test samples have shape {tuple(xt.shape)} but train "
                                   f"samples {shape}")
        self._tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._resized: dict[tuple, Task] = {}

    def resized(self, size: tuple[int, int]) -> "Task":
        """This task with images bilinearly resized to ``size`` (H, W); cached."""
        size = tuple(int(v) for v in size)
        if size not in self._resized:
            def resize(x):
                return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            (xtr, ytr), (xte, yte) = self.tensors("train"), self.tensors("test")
            self._resized[size] = Task((resize(xtr), ytr), (resize(xte), yte), self.num_classes,
                                       name=f"{self.name}@{size[0]}x{size[1]}")
        return self._resized[size]

    def for_input(self, shape: tuple) -> "Task":
        """This task for a model whose input sample is ``shape`` ((C, H, W) or features):
        itself, or with images resized to that resolution."""
        shape = tuple(shape)
        if len(shape) != 3 or shape == tuple(self.input_shape):
            return self
        return self.resized(shape[1:])

    @classmethod
    def from_npz(cls, path, num_classes: int | None = None) -> "Task":
        """A task from an .npz file with arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``
        (images as N x C x H x W or N x H x W, tabular as N x F; integer labels)."""
        from pathlib import Path
        src = str(path)
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SearchpruneError(f"{src}: cannot be read as .npz: {e}") from None
        arrays = {}
        for key in ("x_train", "y_train", "x_test", "y_test"):
            if key not in data.files:
                raise SearchpruneError(f"{src}: array {key!r} is missing (found: "
                                       f"{', '.join(data.files) or 'none'})")
            arrays[key] = data[key]
        for split in ("train", "test"):
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
            if len(x) != len(y):
                raise SearchpruneError(f"{src}: x_{split} has {len(x)} samples but y_{split} "
                                       f"has {len(y)} labels")
            if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
                raise SearchpruneError(f"{src}: y_{split} must be a 1-D integer array, got "
                                       f"shape {y.shape} dtype {y.dtype}")
        if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
            raise SearchpruneError(f"{src}: x_train samples have shape "
                                   f"{arrays['x_train'].shape[1:]} but x_test samples "
                                   f"{arrays['x_test'].shape[1:]}")
        xs = {k: arrays[k][:, None] if arrays[k].ndim == 3 else arrays[k]
              for k in ("x_train", "x_test")}
        labels = np.concatenate([arrays["y_train"], arrays["y_test"]])
        n = int(num_classes or labels.max() + 1)
        if labels.min() < 0 or labels.max() >= n:
            raise SearchpruneError(f"{src}: labels must be in [0, {n}), found "
                                   f"{labels.min()}..{labels.max()}")
        return cls((xs["x_train"].astype(np.float32), arrays["y_train"].astype(np.int64)),
                   (xs["x_test"].astype(np.float32), arrays["y_test"].astype(np.int64)),
                   num_classes=n, name=Path(src).stem)

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as (x float32, y int64) tensors, cached."""
        if split not in self._tensors:
            ds = self.train if split == "train" else self.test
            if isinstance(ds, TensorDataset):
                x, y = ds.tensors[0], ds.tensors[1]
            else:
                xs, ys = zip(*(ds[i] for i in range(len(ds))))
                x, y = torch.stack([torch.as_tensor(v) for v in xs]), torch.as_tensor(ys)
            x, y = x.float(), y.long()
            if y.min() < 0 or y.max() >= self.num_classes:
                raise SearchpruneError(f"Task: {split} labels must be in [0, {self.num_classes}), "
                                       f"found {int(y.min())}..{int(y.max())}")
            self._tensors[split] = (x, y)
        return self._tensors[split]


def _as_dataset(data, which: str) -> Dataset:
    if isinstance(data, Dataset):
        if len(data) == 0:
            raise SearchpruneError(f"Task: the {which} set is empty")
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (torch.as_tensor(np.asarray(v)) for v in data)
        if len(x) != len(y):
            raise SearchpruneError(f"Task: {which} has {len(x)} samples but {len(y)} labels")
        if len(x) == 0:
            raise SearchpruneError(f"Task: the {which} set is empty")
        return TensorDataset(x, y)
    raise SearchpruneError(f"Task: {which} must be a torch Dataset or an (x, y) pair")


def digits_task(test_fraction: float = 0.25, seed: int = 0) -> Task:
    """scikit-learn's 8x8 handwritten digits (ships with scikit-learn, no download):
    1797 images scaled to [0, 1], shape (1, 8, 8), stratified train / test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=test_fraction,
                                          random_state=seed, stratify=d.target)
    return Task((torch.from_numpy(xtr), torch.from_numpy(ytr)),
                (torch.from_numpy(xte), torch.from_numpy(yte)), num_classes=10, name="digits")


TASKS: dict[str, Callable[[], Task]] = {"digits": digits_task}


def load_task(name: str | Task) -> Task:
    """A bundled task by name (``digits``), a ``.npz`` file path, or a Task as is."""
    if isinstance(name, Task):
        return name
    if str(name).endswith(".npz"):
        return Task.from_npz(name)
    if name not in TASKS:
        raise UnknownNameError("task", name, TASKS)
    return TASKS[name]()


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None):
    order = torch.randperm(len(x), generator=generator) if generator is not None else \
        torch.arange(len(x))
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


def train(model: nn.Module, task: Task, epochs: int, batch_size: int = 64, lr: float = 0.01,
          seed: int = 0, after_step: Callable[[nn.Module], None] | None = None,
          teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.5,
          on_epoch: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """Adam + cross-entropy for ``epochs`` epochs. ``after_step`` runs after every optimiser
    step (pruning masks use it to keep zeros at zero). With a ``teacher``, the loss is
    ``(1 - alpha) * CE + alpha * T^2 * KL(student_T || teacher_T)`` (distillation).
    ``on_epoch(epoch, model)`` runs after each epoch; it may raise to stop early."""
    x, y = task.tensors("train")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        for xb, yb in batches(x, y, batch_size, gen):
            opt.zero_grad()
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(xb)
                kl = F.kl_div(F.log_softmax(out / temperature, 1), F.softmax(t_out / temperature, 1),
                              reduction="batchmean")
                loss = (1 - alpha) * loss + alpha * temperature ** 2 * kl
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch}")
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step(model)
        if on_epoch is not None:
            on_epoch(epoch, model)
    model.eval()
    return model


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, batch_size: int = 512) -> float:
    """Top-1 accuracy on the test split, in [0, 1]."""
    model.eval()
    x, y = task.tensors("test")
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches(x, y, batch_size, None))
    return correct / len(x)
