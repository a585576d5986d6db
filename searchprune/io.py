"""Files: user-facing ones written atomically (a crash never leaves a half-written file), and
models saved and loaded as tensors only."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # what open() would have given, not mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_rows_csv(path: str | Path, rows: list[dict]) -> Path:
    """Rows of dicts (same keys) as a CSV file, written atomically."""
    import csv
    import io
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def save_state(model, path: str | Path) -> Path:
    """The model's tensors (parameters and buffers), written atomically."""
    import io
    import torch
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | Path) -> dict:
    """Tensors only: ``torch.load(weights_only=True)`` runs no code from the file."""
    import torch
    from .errors import SearchpruneError
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SearchpruneError(f"{path}: file not found") from None
    except Exception as e:
        raise SearchpruneError(f"{path}: not a file of tensors: {e}") from None
