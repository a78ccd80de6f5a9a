"""Read-only dict and list, so parsed registry data can be shared without copying."""

from __future__ import annotations

import json
from typing import Any, NoReturn


def _read_only(*args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError("registry data is read-only: change it through PluginRegistry methods")


class FrozenDict(dict[str, Any]):
    """A dict whose mutators raise TypeError; ``copy()`` gives a plain (mutable) dict.

    A dict subclass, so ``json.dumps``, ``==`` and ``isinstance(x, dict)`` work unchanged.
    """

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def copy(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return thaw(self)  # type: ignore[no-any-return]

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))


class FrozenList(list[Any]):
    """A list whose mutators raise TypeError; ``copy()`` gives a plain (mutable) list."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only

    def copy(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return thaw(self)  # type: ignore[no-any-return]

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenList, (list(self),))


_PLAIN = (dict, list)


def freeze(value: Any) -> Any:
    """A read-only copy of JSON-shaped data (already frozen parts are reused as they are)."""
    kind = type(value)
    # Scalars are returned inline, not through a call: listing a large registry freezes
    # hundreds of thousands of values.
    if kind is dict:
        return FrozenDict({k: freeze(v) if type(v) in _PLAIN else v for k, v in value.items()})
    if kind is list:
        return FrozenList([freeze(v) if type(v) in _PLAIN else v for v in value])
    return value


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A key twice: which one counts is up to the reader (json.loads keeps the last, a
    # line-by-line reader the first), so no reader takes it (as aurora_common.structured).
    obj = dict(pairs)
    if len(obj) != len(pairs):  # rare: only then find which key
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key[:80]!r}")
            seen.add(key)
    return obj


def _frozen_pairs(pairs: list[tuple[str, Any]]) -> FrozenDict:
    return _frozen_object(_unique_object(pairs))


def _frozen_object(obj: dict[str, Any]) -> FrozenDict:
    # Called by the JSON decoder for each object, innermost first: nested objects are
    # already frozen, only list values (and lists inside them) remain to wrap.
    for key, value in obj.items():
        if type(value) is list:
            obj[key] = FrozenList([freeze(v) if type(v) is list else v for v in value])
    return FrozenDict(obj)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_strict(text: str | bytes) -> Any:
    """Parse JSON plainly, refusing a key twice in an object, NaN and Infinity."""
    return json.loads(text, object_pairs_hook=_unique_object, parse_constant=_no_constant)


def loads_frozen(text: str | bytes, *, strict: bool = True) -> Any:
    """Parse JSON straight into read-only containers; ``strict``: refused as
    ``loads_strict`` refuses (about 20% slower: the decoder hands each object's pairs to
    Python instead of building the dict itself).

    One pass and one copy of the data: parsing plainly and then freezing built the tree
    twice.
    """
    # Pausing the garbage collector here gained nothing measurable (a fresh list(): 8.4 ms
    # at 1,000 plugins and 144 ms at 10,000 either way), so the process-wide switch is gone.
    if strict:
        value = json.loads(text, object_pairs_hook=_frozen_pairs, parse_constant=_no_constant)
    else:
        value = json.loads(text, object_hook=_frozen_object)
    return freeze(value)


def thaw(value: Any) -> Any:
    """A plain, mutable deep copy of JSON-shaped data (frozen or not)."""
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    return value
