"""Model families used by the tests (a space YAML names them as ``helpers:<function>``)."""
import os
from pathlib import Path

import torch.nn as nn

from searchprune.spaces.families import plain


def broken(params, input_shape, num_classes):
    """Always fails: a builder bug or an impossible combination."""
    raise ValueError(f"cannot build width {params['width']}")


def flaky(params, input_shape, num_classes):
    """Fails for one width only; the others build a small plain net."""
    if params["width"] == 16:
        raise RuntimeError("shape mismatch for width 16")
    return plain({"n_blocks": 1, "channels": [params["width"]], "block": ["conv"],
                  "kernel_size": 3}, input_shape, num_classes)


def dies_once_in_ray_worker(params, input_shape, num_classes):
    """Kills its own process the first time it is built inside a Ray worker."""
    marker = Path(os.environ["SEARCHPRUNE_TEST_MARKER"])
    import ray
    in_worker = ray.is_initialized() and ray.get_runtime_context().worker.mode == 1
    if in_worker and not marker.exists():
        marker.write_text("died")
        os._exit(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, params["width"]), nn.ReLU(),
                         nn.Linear(params["width"], num_classes))


def wait_for_peer(params, input_shape, num_classes):
    """tiny_cnn, but each process's first build waits (up to 120 s) until another process has
    built one too: both workers of a study surely run trials, however slow one starts."""
    import time
    folder = Path(os.environ["SEARCHPRUNE_TEST_PEERS"])
    mine = folder / str(os.getpid())
    if not mine.exists():
        mine.touch()
        deadline = time.time() + 120
        while len(list(folder.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.05)
    return tiny_cnn(params, input_shape, num_classes)


def tiny_cnn(params, input_shape, num_classes):
    """A user's own family: conv(width) -> global pool -> linear."""
    return nn.Sequential(nn.Conv2d(input_shape[0], params["width"], 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(params["width"], num_classes))


def trained_factory():
    """The model class a user would name with --model for a pruning search."""
    from searchprune.spaces.families import plain
    return plain({"n_blocks": 2, "channels": [32, 64], "block": ["conv", "dwsep"],
                  "kernel_size": 3}, (1, 8, 8), 10)


def pointwise_stack():
    """A calibration row dominated by 1x1 convolutions: (model, input shape)."""
    return nn.Sequential(*[m for _ in range(3) for m in (nn.Conv2d(64, 64, 1), nn.ReLU())]), \
        (1, 64, 16, 16)


def depthwise_stack():
    """A calibration row dominated by depthwise convolutions: (model, input shape)."""
    return nn.Sequential(*[m for _ in range(3)
                           for m in (nn.Conv2d(64, 64, 5, padding=2, groups=64), nn.ReLU())]), \
        (1, 64, 16, 16)
