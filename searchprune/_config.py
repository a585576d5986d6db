"""Reading YAML configuration files and checking their fields (private helpers)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .errors import ConfigError, UnknownNameError, suggest


def read_yaml(path: str | Path) -> dict:
    """Parse a YAML file (safe loader only) that must hold a mapping."""
    path = Path(path)
    src = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(src, "<file>", str(path), "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(src, "<file>", str(path), f"cannot be read: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(src, "<file>", text[:40], f"not valid YAML{at}: {problem}") from None
    if data is None:
        raise ConfigError(src, "<file>", "", "the file is empty")
    if not isinstance(data, dict):
        raise ConfigError(src, "<file>", data if not isinstance(data, str) else data[:40],
                          f"must be a YAML mapping of fields, got {type(data).__name__}")
    return data


def bundled_dir(name: str) -> Path:
    """Where the bundled ``name`` YAML files are: inside the installed package (a wheel ships
    them as ``searchprune/<name>``), else at the top of the source checkout (editable install)."""
    package = Path(__file__).resolve().parent
    packaged = package / name
    return packaged if packaged.is_dir() else package.parent / name


def bundled(folder: Path) -> dict[str, Path]:
    """Names -> paths of the YAML files shipped in ``folder``."""
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def find_yaml(name_or_path: str | Path, folder: Path, kind: str) -> Path:
    """A bundled file by name, or a path to the user's own YAML file."""
    text = str(name_or_path)
    known = bundled(folder)
    if text in known:
        return known[text]
    if text.endswith((".yaml", ".yml")) or "/" in text or Path(text).is_file():
        return Path(text)
    raise UnknownNameError(kind, text, known)


def check_keys(data: Mapping, source: str, prefix: str, required: Iterable[str],
               optional: Iterable[str] = ()) -> None:
    """Unknown keys (with the closest valid one suggested) and missing required keys."""
    required, optional = list(required), list(optional)
    valid = required + optional
    for key in data:
        if key not in valid:
            raise ConfigError(source, _join(prefix, str(key)), data[key], "unknown field",
                              suggest(str(key), valid) or f"valid fields: {', '.join(valid)}")
    for key in required:
        if key not in data:
            raise ConfigError(source, _join(prefix, key), None, "required field is missing")


def mapping(data: Mapping, key: str, source: str, prefix: str = "", required: bool = True) -> dict:
    value = data.get(key, None if required else {})
    if not isinstance(value, dict):
        raise ConfigError(source, _join(prefix, key), value, "must be a mapping of fields")
    return value


def string(data: Mapping, key: str, source: str, prefix: str = "", default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(source, _join(prefix, key), value, "must be a non-empty string")
    return value


def number(data: Mapping, key: str, source: str, prefix: str = "", *, integer: bool = False,
           positive: bool = True, allow_zero: bool = False, maximum: float | None = None,
           default: Any = None) -> float | int:
    """A finite number; ``positive`` rejects negatives (and zero unless ``allow_zero``)."""
    value = data.get(key, default)
    field = _join(prefix, key)
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(source, field, value, f"must be {kind}")
    if integer and not float(value).is_integer():
        raise ConfigError(source, field, value, "must be an integer")
    if not math.isfinite(value):
        raise ConfigError(source, field, value, "must be finite")
    if positive and (value < 0 or (value == 0 and not allow_zero)):
        raise ConfigError(source, field, value, "must be > 0" if not allow_zero else "must be >= 0")
    if maximum is not None and value > maximum:
        raise ConfigError(source, field, value, f"is implausibly large (limit {maximum:g})")
    return int(value) if integer else float(value)


def boolean(data: Mapping, key: str, source: str, prefix: str = "", default: bool = False) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(source, _join(prefix, key), value, "must be true or false")
    return value


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key
