"""What a plugin manifest is: its schema, how it is read, and how it is validated."""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
from aurora_common import fnschema, structured
from packaging.version import InvalidVersion, Version

from .capabilities import CALL_TARGET, known_capabilities
from .errors import ManifestError
from .paths import schemas_dir
from .storage import InputRefused, is_io_failure, read_bytes, refusal_reason

__all__ = [
    "MANIFEST_NAMES",
    "MAX_MANIFEST_BYTES",
    "load_manifest",
    "manifest_problems",
    "validate_manifest",
]

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 64 * 1024
MANIFEST_NAMES = ("manifest.json", "manifest.yaml", "manifest.yml")
MANIFEST_SCHEMA = "plugin-manifest-v1.json"
# A manifest is small and flat; deeper or larger values are refused before validation.
_MAX_DEPTH = 16
_MAX_NODES = 10_000
_SHOWN = 60  # characters of a bad value quoted back in a message


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    """The manifest schema shipped in the pack, compiled once per process on first use."""
    path = schemas_dir() / MANIFEST_SCHEMA
    schema = json.loads(path.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


def manifest_schema() -> dict[str, Any]:
    """The manifest JSON Schema as a dict (for tools and documentation)."""
    schema: dict[str, Any] = _validator().schema  # type: ignore[assignment]
    return schema


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _place(path: Iterator[object] | Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(manifest)"


def _shape_problems(data: object) -> list[str]:
    """Refuse what JSON Schema cannot judge safely: non-string keys, huge or deep values."""
    problems: list[str] = []
    stack: list[tuple[object, str, int]] = [(data, "(manifest)", 0)]
    nodes = 0
    while stack:
        value, place, depth = stack.pop()
        nodes += 1
        if nodes > _MAX_NODES:
            return [f"(manifest): more than {_MAX_NODES} values"]
        if depth > _MAX_DEPTH:
            return [f"{place}: nested deeper than {_MAX_DEPTH} levels"]
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{place}: {value} is not a valid JSON number")
        elif isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    problems.append(f"{place}: key {_show(key)} is not a string")
                    continue
                sub = key if place == "(manifest)" else f"{place}.{key}"
                stack.append((item, sub, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{place}[{i}]", depth + 1) for i, item in enumerate(value))
        elif not isinstance(value, str | int | float | bool) and value is not None:
            problems.append(f"{place}: {_type_name(value)} is not a JSON value ({_show(value)})")
    return problems


_PATTERN_WORDS = {
    "id": "must be publisher.name: lowercase letters, digits, '-', '_', "
    "dot-separated, no '/', '..' or leading dot",
    "version": "must be a version such as 1.0.0",
    "entrypoint": "must be a relative path inside the package",
    "name": "must not contain control characters",
}


def _pattern_message(place: str, value: object, pattern: str) -> str:
    return f"{place}: {_show(value)} {_PATTERN_WORDS.get(place, f'must match {pattern}')}"


def _schema_message(error: jsonschema.ValidationError) -> str:
    """One problem from the schema, worded for a person and never quoting a huge value."""
    place = _place(error.absolute_path)
    value = error.instance
    kind = error.validator
    if kind == "type":
        hint = ""
        if error.validator_value == "string" and isinstance(value, int | float):
            hint = " (quote it in YAML)"
        found = f"{_type_name(value)} {_show(value)}"
        return f"{place}: expected {error.validator_value}, found {found}{hint}"
    if kind == "enum" and place.startswith("permissions"):
        return f"{place}: unknown capability {_show(value)} (known: {known_capabilities()})"
    if kind == "enum":
        choices: list[Any] = list(error.validator_value)  # type: ignore[arg-type]
        known = ", ".join(str(v) for v in choices)
        return f"{place}: {_show(value)} is not one of {known}"
    if kind == "additionalProperties" and isinstance(value, Mapping):
        schema = error.schema if isinstance(error.schema, Mapping) else {}
        allowed = schema.get("properties", {})
        extra = sorted(k for k in value if k not in allowed)
        return f"{place}: unknown key {_show(extra[0] if extra else '?')} (known: " + (
            ", ".join(allowed) + ")"
        )
    if kind == "pattern":
        return _pattern_message(place, value, str(error.validator_value))
    if kind == "maxLength":
        return f"{place}: longer than {error.validator_value} characters"
    if kind == "minLength":
        if error.validator_value == 1:
            return f"{place}: must not be empty"
        return f"{place}: shorter than {error.validator_value} characters"
    if kind == "maxItems":
        return f"{place}: more than {error.validator_value} items"
    if kind == "uniqueItems":
        return f"{place}: contains duplicates"
    return f"{place}: {error.message[:200]}"


def _entrypoint_problem(entrypoint: str) -> str | None:
    parts = PurePosixPath(entrypoint).parts
    if entrypoint.startswith("/") or not parts:
        return "must be a relative path inside the package"
    if any(p in ("..", "") for p in entrypoint.split("/")):
        return "must not contain '..' or empty path segments"
    return None


def manifest_problems(data: object) -> list[str]:
    """Every problem of a manifest, each with its place; empty when it is valid."""
    if not isinstance(data, Mapping):
        return [f"(manifest): expected an object (mapping), found {_type_name(data)}"]
    problems = _shape_problems(dict(data))
    if problems:
        return problems
    known = list(manifest_schema()["properties"])
    for key in data:
        if key not in known:
            shown = key if key.isprintable() and len(key) <= _SHOWN else _show(key)
            problems.append(f"{shown}: unknown key (known: {', '.join(known)})")
    for error in sorted(
        _validator().iter_errors(dict(data)), key=lambda e: _place(e.absolute_path)
    ):
        if error.validator == "additionalProperties" and not error.absolute_path:
            continue  # top-level unknown keys: reported above, one line per key
        if error.validator == "required":
            missing = re.findall(r"'([^']+)' is a required property", error.message)
            problems.extend(f"{m}: missing (required)" for m in missing)
            continue
        message = _schema_message(error)
        place = message.split(": ", 1)[0]
        if not any(p.startswith(place + ": ") for p in problems):  # one problem per place
            problems.append(message)
    # JSON Schema patterns go through re.search, where '$' also matches before a final
    # newline: match the whole string again so "acme.echo\n" cannot pass.
    for key, prop in manifest_schema()["properties"].items():
        value, pattern = data.get(key), prop.get("pattern")
        if (
            isinstance(value, str)
            and pattern
            and not re.fullmatch(pattern.rstrip("$"), value)
            and not any(p.startswith(f"{key}:") for p in problems)
        ):
            problems.append(_pattern_message(key, value, pattern))
    version = data.get("version")
    if isinstance(version, str) and not any(p.startswith("version:") for p in problems):
        try:
            Version(version)
        except InvalidVersion:
            problems.append(f"version: {_show(version)} is not a PEP 440 version")
    entry = data.get("entrypoint")
    if isinstance(entry, str) and not any(p.startswith("entrypoint:") for p in problems):
        problem = _entrypoint_problem(entry)
        if problem:
            problems.append(f"entrypoint: {_show(entry)} {problem}")
    problems.extend(_protocol_problems(data, problems))
    return problems


_FUNCTION_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_CALL = CALL_TARGET  # the registry checks call grants in `granted` with the same pattern


def _protocol_problems(data: Mapping[str, Any], found: list[str]) -> list[str]:
    """What the protocol keys need beyond the schema: whole-string names (see the
    newline note above) and function schemas that are JSON Schemas themselves."""
    problems: list[str] = []
    functions = data.get("functions")
    if isinstance(functions, Mapping) and not any(p.startswith("functions") for p in found):
        for name, spec in functions.items():
            if not _FUNCTION_NAME.fullmatch(name):
                problems.append(f"functions.{_show(name)}: not a function name ([a-z][a-z0-9_-]*)")
                continue
            for part in ("parameters", "result"):
                schema = spec.get(part) if isinstance(spec, Mapping) else None
                if schema is None:
                    continue
                try:
                    jsonschema.Draft202012Validator.check_schema(schema)
                except jsonschema.SchemaError as exc:
                    problems.append(
                        f"functions.{name}.{part}: not a valid JSON Schema: {exc.message[:120]}"
                    )
                    continue
                # What of JSON Schema a function may use: the launcher evaluates it as root.
                problems += fnschema.problems(schema, f"functions.{name}.{part}")
    calls = data.get("calls")
    if isinstance(calls, list) and not any(p.startswith("calls") for p in found):
        for i, target in enumerate(calls):
            if isinstance(target, str) and not _CALL.fullmatch(target):
                problems.append(f"calls[{i}]: {_show(target)} is not <plugin id>/<function>")
    return problems


def validate_manifest(d: object) -> bool:
    """Return True for a valid manifest; raise ManifestError listing every problem."""
    problems = manifest_problems(d)
    if problems:
        raise ManifestError(problems)
    return True


def parse_manifest_text(text: str, *, yaml_format: bool, source: str | None = None) -> object:
    """Parse manifest text as YAML or JSON with pack01's limits (``aurora_common.structured``:
    depth, no YAML aliases, no duplicate keys); errors name line and column."""
    where = source or "(manifest)"
    data = text.encode("utf-8", "surrogatepass")
    try:
        if yaml_format:
            return structured.loads_yaml(data, where, max_depth=_MAX_DEPTH)
        return structured.loads_json(data, where, max_depth=_MAX_DEPTH)
    except InputRefused as exc:
        prefix = f"{where}: "
        problems = exc.problems or [str(exc).removeprefix(prefix)]
        raise ManifestError(problems, source=source) from None


def load_manifest(path: Path | str) -> dict[str, Any]:
    """Read a manifest file (YAML for .yaml/.yml, else JSON), at most 64 KiB; not validated."""
    path = Path(path)
    source = str(path)
    try:
        raw = read_bytes(path, MAX_MANIFEST_BYTES)  # no FIFO, device or symlink
    except InputRefused as exc:
        raise ManifestError([refusal_reason(exc, path)], source=source) from None
    except OSError as exc:
        if is_io_failure(exc):
            raise  # the machine's failure, not the manifest's
        raise ManifestError([f"cannot read: {exc.strerror or exc}"], source=source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError([f"not UTF-8 (byte {exc.start})"], source=source) from None
    data = parse_manifest_text(
        text, yaml_format=path.suffix.lower() in (".yaml", ".yml"), source=source
    )
    if not isinstance(data, dict):
        raise ManifestError(
            [f"(manifest): expected an object (mapping), found {_type_name(data)}"], source=source
        )
    return data
