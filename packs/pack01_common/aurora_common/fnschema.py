"""The JSON Schemas a plugin declares for its functions: what they may use, and how they run.

A function's ``parameters`` and ``result`` schemas come from the plugin's own
manifest and are evaluated by the launcher, as root, on every call: they are
hostile input. So they are JSON Schema (draft 2020-12) without the parts that
reach outside the schema or cost more than linear time in one step:

- no ``$ref`` but to the schema itself (``#...``), no ``$id``/``$schema``/
  ``$dynamicRef``: nothing is ever retrieved (a ``$ref`` to ``file://`` or
  ``http://`` would make root read a file or open a connection for the plugin);
- no ``pattern``/``patternProperties`` (a regular expression can backtrack for
  ever, and a running match cannot be interrupted) and no ``uniqueItems``
  (quadratic in the array);
- only the keywords below; at most ``MAX_NODES`` subschemas, ``MAX_DEPTH`` deep.

Evaluation itself is bounded too: checking one value may take at most
``BUDGET_S`` seconds of keyword evaluations (the launcher's loop waits for it); a
value that needs more (a large array against many alternatives, a chain of local
``$ref``s) is refused as too costly to check. A schema of ``{}`` or ``true`` costs
nothing.

Standard library only to check a schema (pack05 at staging, pack04 reading the
registry); ``Validator`` imports jsonschema when first used.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_NODES = 512
MAX_DEPTH = 32
BUDGET_S = 0.05  # time to check one value
#: Values with more JSON nodes are not checked (refused): one keyword's own loop over a
#: value (``contains``, ``items`` of boolean schemas) is not metered, only bounded by it.
MAX_VALUE_NODES = 20_000

#: Keywords whose value is a schema, a list of schemas, or a map of name -> schema.
_ONE = ("additionalProperties", "items", "not", "if", "then", "else", "propertyNames",
        "contains")  # fmt: skip
_MANY = ("allOf", "anyOf", "oneOf", "prefixItems")
_MAP = ("properties", "$defs", "dependentSchemas")
#: Keywords with plain values (numbers, strings, lists of names).
_PLAIN = ("type", "enum", "const", "required", "minItems", "maxItems", "minLength",
          "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
          "multipleOf", "minProperties", "maxProperties", "dependentRequired", "minContains",
          "maxContains", "format", "title", "description", "default", "examples",
          "deprecated", "readOnly", "writeOnly", "$comment", "$ref", "$anchor")  # fmt: skip
ALLOWED = frozenset(_ONE + _MANY + _MAP + _PLAIN)
_WHY = {
    "pattern": "a regular expression can take exponential time",
    "patternProperties": "a regular expression can take exponential time",
    "uniqueItems": "quadratic in the array",
    "$id": "it moves the base of $ref resolution",
    "$schema": "the dialect is fixed (draft 2020-12)",
    "$dynamicRef": "only local $ref is allowed",
    "$dynamicAnchor": "only local $ref is allowed",
    "unevaluatedProperties": "it re-walks every subschema unmetered (exponential with $ref)",
    "unevaluatedItems": "it re-walks every subschema unmetered (exponential with $ref)",
}


def problems(schema: object, where: str) -> list[str]:
    """Every way ``schema`` breaks the rules above, each with its place (empty: fine)."""
    found: list[str] = []
    count = [0]

    def walk(node: object, place: str, depth: int) -> None:
        if isinstance(node, bool):
            return  # true/false are schemas
        if not isinstance(node, dict):
            found.append(f"{place}: a schema is an object or a boolean")
            return
        count[0] += 1
        if count[0] > MAX_NODES:
            if count[0] == MAX_NODES + 1:
                found.append(f"{where}: more than {MAX_NODES} subschemas")
            return
        if depth > MAX_DEPTH:
            found.append(f"{place}: nested deeper than {MAX_DEPTH}")
            return
        for key, value in node.items():
            at = f"{place}.{key}"
            if key not in ALLOWED:
                why = _WHY.get(key, "not one of the keywords a function schema may use")
                found.append(f"{at}: not allowed ({why})")
            elif key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
                found.append(f"{at}: only a reference within the schema ('#...') is allowed")
            elif key in _ONE:
                walk(value, at, depth + 1)
            elif key in _MANY:
                if not isinstance(value, list):
                    found.append(f"{at}: expected a list of schemas")
                    continue
                for i, item in enumerate(value):
                    walk(item, f"{at}[{i}]", depth + 1)
            elif key in _MAP:
                if not isinstance(value, dict):
                    found.append(f"{at}: expected an object of schemas")
                    continue
                for name, item in value.items():
                    walk(item, f"{at}.{name}", depth + 1)

    walk(schema, where, 0)
    return found


def _more_nodes_than(value: object, limit: int) -> bool:
    """True when ``value`` holds more than ``limit`` JSON values (stops counting there)."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class OverBudget(Exception):
    """Checking one value took longer than allowed."""


class Validator:
    """Checks values against one function schema (``problems`` must be empty)."""

    def __init__(self, schema: dict[str, Any] | bool, budget_s: float = BUDGET_S) -> None:
        self.schema = schema
        self.budget_s = budget_s
        self._validator: Any = None
        self._steps = 0
        self._deadline = 0.0

    def first_problem(self, value: object) -> str | None:
        """The first way ``value`` breaks the schema, with its place; None when it fits."""
        if self.schema is True or self.schema == {}:
            return None
        if _more_nodes_than(value, MAX_VALUE_NODES):
            return (
                f"(top): too large to check against its schema (more than {MAX_VALUE_NODES} "
                "JSON values; a function passing more declares no schema for it)"
            )
        if self._validator is None:
            self._validator = self._build()
        self._steps, self._deadline = 0, time.monotonic() + self.budget_s
        try:
            error = next(iter(self._validator.iter_errors(value)), None)
        except OverBudget:
            return f"(top): too costly to check against its schema (over {self.budget_s:g} s)"
        except RecursionError:
            return "(top): nested too deeply to check"
        except Exception as exc:  # an unresolvable $ref and the like: never raised on
            return f"(top): cannot be checked against its schema ({type(exc).__name__})"
        if error is None:
            return None
        where = "/".join(str(part) for part in error.absolute_path) or "(top)"
        return f"{where}: {error.message[:200]}"

    def _build(self) -> Any:
        import jsonschema
        import referencing.exceptions
        import referencing.jsonschema

        ref: Any = referencing  # attrs classes: their signatures are not for mypy
        checks: Any = jsonschema.validators

        def refuse(uri: str) -> Any:
            raise ref.exceptions.NoSuchResource(ref=uri)

        base = jsonschema.Draft202012Validator
        metered = {key: self._metered(fn) for key, fn in base.VALIDATORS.items()}
        cls = checks.extend(base, validators=metered)
        resource = ref.Resource.from_contents(
            self.schema, default_specification=ref.jsonschema.DRAFT202012
        )
        registry = ref.Registry(retrieve=refuse).with_resource("", resource)
        return cls(self.schema, registry=registry)

    def _metered(self, fn: Any) -> Any:
        def step(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
            self._steps += 1
            if time.monotonic() > self._deadline:
                raise OverBudget
            return fn(validator, value, instance, schema)

        return step


__all__ = [
    "ALLOWED",
    "BUDGET_S",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_VALUE_NODES",
    "OverBudget",
    "Validator",
    "problems",
]
