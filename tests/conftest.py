import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
torch.set_num_threads(1)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

TINY_SPACE = """
name: tiny
task: digits
family: plain
arch:
  n_blocks: {choices: [1, 2]}
  channels: {choices: [8, 16, 128], per: n_blocks}
  block: {choices: [conv, dwsep], per: n_blocks}
  kernel_size: 3
pruning:
  granularity: structured
  criterion: {choices: [l1, taylor]}
  ratio: {low: 0.0, high: 0.5}
training: {epochs: 1, finetune_epochs: 1, batch_size: 64, lr: 0.01}
"""


@pytest.fixture
def tiny_space(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return path


@pytest.fixture(scope="session")
def digits():
    from searchprune.training import digits_task
    return digits_task()
