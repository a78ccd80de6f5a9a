"""JSON and YAML reading with limits applied before parsing.

Order: the size cap (bounded read: regular files only), strict UTF-8 (which also
refuses encoded surrogates), then the nesting depth (JSON: a pre-scan of the
brackets outside strings; YAML: counted while composing, before any object is
built), YAML aliases refused (or capped), then parsing. Parsed strings holding a
lone surrogate (JSON ``\\ud800``) are refused too. Every refusal is an
``InputRefused`` naming the file and, for syntax errors, the line and column.

PyYAML is imported only by the YAML functions: the JSON half is standard
library only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aurora_common.bounded import decode_utf8, read_bytes
from aurora_common.errors import InputRefused

DEFAULT_LIMIT = 64 * 1024
DEFAULT_DEPTH = 32


def _check_json_depth(text: str, where: str, max_depth: int) -> None:
    depth = 0
    in_string = False
    escaped = False
    line = 1
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                raise InputRefused(f"{where}: line {line}: nested deeper than {max_depth}", where)
        elif ch in "]}":
            depth -= 1
        elif ch == "\n":
            line += 1


def check_strings(value: Any, where: str) -> None:
    """Refuse lone surrogates anywhere in a parsed document (keys and values)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise InputRefused(
                    f"{where}: string {item!r} holds a lone surrogate", where
                ) from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:80]!r}")
        out[key] = value
    return out


def loads_json(data: bytes, where: str, max_depth: int = DEFAULT_DEPTH) -> Any:
    """Parse JSON bytes within the limits (NaN and Infinity refused, and an object with
    a key twice: which one counts is up to the reader, so no reader takes it)."""
    text = decode_utf8(data, where)
    _check_json_depth(text, where, max_depth)
    try:
        value = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique)
    except json.JSONDecodeError as exc:
        at = f"line {exc.lineno}, column {exc.colno}"
        detail = f"{at}: JSON error: {exc.msg}"
        raise InputRefused(f"{where}: not valid JSON ({at}): {exc.msg}", where, [detail]) from None
    except ValueError as exc:
        raise InputRefused(f"{where}: {exc}", where, [str(exc)]) from None
    check_strings(value, where)
    return value


def read_json(path: Path, limit: int = DEFAULT_LIMIT, max_depth: int = DEFAULT_DEPTH) -> Any:
    """Read and parse a JSON file within the limits (FileNotFoundError if missing)."""
    return loads_json(read_bytes(path, limit), str(path), max_depth)


def _line_col(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


# PyYAML's words for the common mistakes, in an operator's words (issue 10).
_PLAIN_CONTEXT = {
    "while scanning a quoted scalar": "a quoted string is never closed",
    "while scanning a simple key": "a line that is not 'key: value' (no ':' after the key)",
    "while parsing a block mapping": "the indentation does not line up with the keys above",
}
_PLAIN_PROBLEM = {
    "mapping values are not allowed here": (
        "unexpected ':' (a key above lacks its ':', or a value holding ': ' needs quotes)"
    ),
    "found character '\\t' that cannot start any token": "a tab (indent with spaces)",
}


def _yaml_problem(exc: Any) -> str:
    """Where PyYAML stopped and what it found, in plain words where the mistake is a
    common one; also where the construct it was reading began (an unclosed quote is
    found at the end of the file, but starts where the operator must look)."""
    mark = exc.problem_mark or exc.context_mark
    context = exc.context_mark
    plain = _PLAIN_CONTEXT.get(exc.context or "")
    if plain and context is not None:
        return f"{_line_col(context)}: {plain}"
    problem = _PLAIN_PROBLEM.get(exc.problem or "", exc.problem) or exc.context or "malformed YAML"
    text = f"{_line_col(mark)}: {problem}" if mark else str(problem)
    if exc.problem and exc.context and context and mark and context.index != mark.index:
        text += f" ({exc.context} that began at {_line_col(context)})"
    return text


def _limited_loader(text: str, where: str, max_depth: int, max_aliases: int) -> Any:
    import yaml  # PyYAML: only the YAML half of this module needs it

    def refuse(problem: str, mark: Any) -> InputRefused:
        detail = f"{_line_col(mark)}: {problem}"
        return InputRefused(f"{where}: {detail}", where, [detail])

    class Loader(yaml.SafeLoader):
        depth = 0
        aliases = 0
        duplicates: list[str]

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > max_aliases:
                    allowed = "not allowed" if max_aliases == 0 else f"more than {max_aliases}"
                    mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                    raise refuse(f"YAML aliases are {allowed}", mark)
            if self.check_event(yaml.ScalarEvent, yaml.AliasEvent):
                return super().compose_node(parent, index)
            self.depth += 1  # a sequence or mapping: one level deeper
            try:
                if self.depth > max_depth:
                    mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                    raise refuse(f"nested deeper than {max_depth}", mark)
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if duplicate:
                    self.duplicates.append(
                        f"{_line_col(key_node.start_mark)}: duplicate key {key!r}"
                    )
            return super().construct_mapping(node, deep=True)

    loader = Loader(text)
    loader.duplicates = []
    return loader


def loads_yaml(
    data: bytes,
    where: str,
    max_depth: int = DEFAULT_DEPTH,
    max_aliases: int = 0,
) -> Any:
    """Parse one YAML document within the limits (SafeLoader; aliases refused by default;
    duplicate keys refused, every one listed in ``problems``)."""
    import yaml

    text = decode_utf8(data, where)
    loader = None
    try:
        loader = _limited_loader(text, where, max_depth, max_aliases)
        value = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        detail = _yaml_problem(exc)
        raise InputRefused(f"{where}: not valid YAML ({detail})", where, [detail]) from None
    except yaml.YAMLError as exc:
        detail = str(exc).replace("\n", " ")
        raise InputRefused(f"{where}: not valid YAML ({detail})", where, [detail]) from None
    except RecursionError:
        raise InputRefused(f"{where}: nested too deeply", where, ["nested too deeply"]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if loader.duplicates:
        raise InputRefused(
            f"{where}: not valid YAML (duplicate keys)", where, list(loader.duplicates)
        )
    check_strings(value, where)
    return value


def read_yaml(
    path: Path,
    limit: int = DEFAULT_LIMIT,
    max_depth: int = DEFAULT_DEPTH,
    max_aliases: int = 0,
) -> Any:
    """Read and parse a YAML file within the limits (FileNotFoundError if missing)."""
    return loads_yaml(read_bytes(path, limit), str(path), max_depth, max_aliases)
