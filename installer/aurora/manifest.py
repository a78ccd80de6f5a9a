"""The pack manifest (aurora-manifest-v1): parse, validate against the JSON Schema, model."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
from aurora_common import bounded, structured
from aurora_common.errors import InputRefused
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from aurora.errors import ManifestError
from aurora.tree import is_excluded, walk

MANIFEST_NAME = "manifest.yaml"
# The same cap as pack05's plugin manifests; the depth is far above any real manifest.
MANIFEST_LIMIT = 64 * 1024
MANIFEST_DEPTH = 16
SCHEMA_VERSION = "aurora-manifest-v1"
ENTRYPOINTS = ("install", "start", "stop", "health")


def schemas_dir() -> Path:
    """The repository's schemas/ directory (the installer runs from the repo)."""
    return Path(__file__).resolve().parents[2] / "schemas"


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """Read one of the JSON Schemas shipped in schemas/."""
    with open(schemas_dir() / name, encoding="utf-8") as handle:
        schema: dict[str, Any] = json.load(handle)
    return schema


@dataclass(frozen=True)
class Dependency:
    """A dependency on another pack, with a PEP 440 specifier set."""

    pack_id: str
    constraint: str

    @property
    def specifier(self) -> SpecifierSet:
        return SpecifierSet(self.constraint)

    def allows(self, version: str) -> bool:
        """Whether ``version`` satisfies the constraint (pre-releases count as versions)."""
        return self.specifier.contains(Version(version), prereleases=True)


@dataclass(frozen=True)
class Artifact:
    """A file whose sha256 the manifest pins (empty until sealed)."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A validated pack manifest, bound to the directory it was read from."""

    root: Path
    id: str
    name: str
    version: str
    description: str
    entrypoints: dict[str, str]
    dependencies: tuple[Dependency, ...]
    artifacts: tuple[Artifact, ...]
    dry_run_supported: bool
    approval_required: bool
    health_check_timeout: int

    @property
    def path(self) -> Path:
        return self.root / MANIFEST_NAME

    def script(self, name: str) -> Path:
        """Absolute path of an entrypoint script inside this copy of the pack."""
        return self.root / self.entrypoints[name]

    def summary(self) -> dict[str, Any]:
        """The manifest as plain data, for --json output."""
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "entrypoint": dict(self.entrypoints),
            "dependencies": [
                {"pack_id": d.pack_id, "version_constraint": d.constraint}
                for d in self.dependencies
            ],
            "artifacts": [{"path": a.path, "sha256": a.sha256} for a in self.artifacts],
            "safety": {
                "dry_run_supported": self.dry_run_supported,
                "operator_approval_required": self.approval_required,
                "health_check_timeout_seconds": self.health_check_timeout,
            },
        }


def parse_yaml(text: str | bytes, source: str) -> Any:
    """Parse YAML strictly (pack01_common's ``structured``: size cap, no aliases, depth
    capped, duplicate keys refused); errors name the file, line and column."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if len(data) > MANIFEST_LIMIT:
        raise ManifestError(
            f"{source}: {len(data)} bytes exceeds the manifest limit of {MANIFEST_LIMIT}"
        )
    try:
        return structured.loads_yaml(data, source, max_depth=MANIFEST_DEPTH)
    except InputRefused as exc:
        raise ManifestError(f"{source}: malformed YAML", exc.problems or [str(exc)]) from None


def _place(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _join(place: str, key: str) -> str:
    return f"{place}.{key}" if place else key


def _type_name(value: Any) -> str:
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
        return "mapping"
    return type(value).__name__


def _schema_problems(document: Any) -> list[str]:
    """Every JSON Schema violation as `place: what is wrong`."""
    if document is None:
        return ["(document): the manifest is empty (expected schema_version and pack)"]
    schema = load_schema("pack-manifest-v1.json")
    validator = jsonschema.Draft202012Validator(schema)
    problems: list[str] = []
    for error in validator.iter_errors(document):
        place = _place(error.absolute_path)
        kind = error.validator
        if kind == "required":
            for key in error.validator_value:
                if isinstance(error.instance, dict) and key not in error.instance:
                    problems.append(f"{_join(place, key)}: required")
        elif kind == "additionalProperties":
            known = sorted(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - set(known), key=str):
                problems.append(
                    f"{_join(place, str(key))}: unknown key (known: {', '.join(known)})"
                )
        elif kind == "type":
            hint = ""
            if error.validator_value == "string" and isinstance(error.instance, int | float):
                hint = " (quote it in YAML)"
            found = _type_name(error.instance)
            if error.instance is not None:
                found += f" {error.instance!r}"
            problems.append(
                f"{place or '(document)'}: expected {error.validator_value}, found {found}{hint}"
            )
        elif kind == "const":
            problems.append(f"{place}: must be {error.validator_value!r}, found {error.instance!r}")
        elif kind == "pattern":
            what = error.schema.get("description") or f"pattern {error.validator_value}"
            problems.append(f"{place}: {error.instance!r} is not valid ({what})")
        else:
            problems.append(f"{place or '(document)'}: {error.message}")
    return list(dict.fromkeys(problems))  # one "required" error per missing key lists them all


def _path_problem(root: Path, rel: str, *, executable: bool) -> str | None:
    """Why a manifest path is unacceptable, or None if it is a file inside the pack.

    Only one spelling of each path is accepted (no ``./``, ``//``, trailing ``/``): the
    installer compares paths as strings (duplicates, tree records), so two spellings of
    one file would slip past those checks. Nothing here raises: a path the OS refuses
    (too long, a loop) is a problem of the manifest, not a crash.
    """
    if any(ord(c) < 32 or ord(c) == 127 for c in rel):
        return f"{rel!r} contains a control character (NUL, newline, ...)"
    if rel.startswith("/") or os.path.isabs(rel):
        return f"{rel!r} is an absolute path (paths are relative to the pack)"
    pure = PurePosixPath(rel)
    if ".." in pure.parts:
        return f"{rel!r} contains '..' (paths must stay inside the pack)"
    if not pure.parts:
        return f"{rel!r} names the pack root, not a file in it"
    if str(pure) != rel:
        return f"{rel!r} is not in canonical form (write it {str(pure)!r})"
    if is_excluded(pure.parts):
        return f"{rel!r} is in a runtime or cache directory the installer does not copy"
    path = root / rel
    try:
        if not path.resolve().is_relative_to(root.resolve()):
            return f"{rel!r} is a symlink leading out of the pack"
        if not path.exists():
            return f"{rel!r} not found in the pack"
        if not path.is_file():
            return f"{rel!r} is not a file"
    except (OSError, RuntimeError) as exc:  # ENAMETOOLONG, ELOOP, ...
        return f"{rel!r} cannot be looked up: {getattr(exc, 'strerror', None) or exc}"
    if executable and not os.access(path, os.X_OK):
        return f"{rel!r} is not executable (chmod +x)"
    return None


def _semantic_problems(data: dict[str, Any], root: Path, expected_id: str | None) -> list[str]:
    """Checks the schema cannot express: PEP 440, paths, duplicates, the directory name."""
    problems: list[str] = []
    pack = data.get("pack")
    if not isinstance(pack, dict):
        return problems
    pack_id = pack.get("id")
    if expected_id is not None and isinstance(pack_id, str) and pack_id != expected_id:
        problems.append(f"pack.id: {pack_id!r} differs from the directory name {expected_id!r}")
    version = pack.get("version")
    if isinstance(version, str) and version:
        try:
            Version(version)
        except ValueError:  # InvalidVersion, or a number part beyond int()'s digit limit
            shown = repr(version) if len(version) <= 64 else repr(version[:60]) + "..."
            problems.append(f"pack.version: {shown} is not a PEP 440 version (e.g. 0.1.0)")
    entrypoint = pack.get("entrypoint")
    if isinstance(entrypoint, dict):
        for name in ENTRYPOINTS:
            rel = entrypoint.get(name)
            if isinstance(rel, str) and rel:
                why = _path_problem(root, rel, executable=True)
                if why:
                    problems.append(f"pack.entrypoint.{name}: {why}")
    deps = pack.get("dependencies")
    if isinstance(deps, list):
        seen: set[str] = set()
        for i, dep in enumerate(deps):
            if not isinstance(dep, dict):
                continue
            dep_id = dep.get("pack_id")
            if isinstance(dep_id, str):
                if dep_id == pack_id:
                    problems.append(
                        f"pack.dependencies[{i}].pack_id: a pack cannot depend on itself"
                    )
                if dep_id in seen:
                    problems.append(f"pack.dependencies[{i}].pack_id: {dep_id!r} listed twice")
                seen.add(dep_id)
            constraint = dep.get("version_constraint")
            if isinstance(constraint, str):
                try:
                    SpecifierSet(constraint)
                except InvalidSpecifier:
                    problems.append(
                        f"pack.dependencies[{i}].version_constraint: {constraint!r} is not a "
                        "PEP 440 specifier (e.g. >=0.1.0, ~=1.2, !=0.3.1, >=1,<2)"
                    )
    artifacts = pack.get("artifacts")
    if isinstance(artifacts, list):
        seen_paths: set[str] = set()
        for i, art in enumerate(artifacts):
            if not isinstance(art, dict):
                continue
            rel = art.get("path")
            if isinstance(rel, str) and rel:
                why = _path_problem(root, rel, executable=False)
                if why:
                    problems.append(f"pack.artifacts[{i}].path: {why}")
                if rel in seen_paths:
                    problems.append(f"pack.artifacts[{i}].path: {rel!r} listed twice")
                seen_paths.add(rel)
    return problems


def read_manifest_document(root: Path) -> Any:
    """Read and parse ``root/manifest.yaml`` within the limits (a regular file of at most
    64 KiB, like pack05's; YAML errors name line and column)."""
    path = root / MANIFEST_NAME
    try:
        data = bounded.read_bytes(path, MANIFEST_LIMIT)
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: no {MANIFEST_NAME} in the pack") from exc
    except InputRefused as exc:
        raise ManifestError(f"{path}: refused: {exc}") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc}") from exc
    return parse_yaml(data, str(path))


def load_manifest(root: Path, *, expected_id: str | None = None) -> Manifest:
    """Validate the pack at ``root`` and return its manifest.

    Raises ManifestError listing every problem at once: schema violations,
    PEP 440 errors, paths leaving the pack, symlinks in the tree leading out.
    """
    document = read_manifest_document(root)
    problems = _schema_problems(document)
    if isinstance(document, dict):
        problems += _semantic_problems(document, root, expected_id)
    try:
        _, tree_problems = walk(root)
    except (OSError, RuntimeError, RecursionError) as exc:
        tree_problems = [f"cannot walk the tree: {exc}"]
    problems += [f"(pack tree) {p}" for p in tree_problems]
    if problems:
        raise ManifestError(f"{root / MANIFEST_NAME}: invalid manifest", problems)
    pack = document["pack"]
    safety = pack["safety"]
    return Manifest(
        root=root,
        id=pack["id"],
        name=pack["name"],
        version=pack["version"],
        description=pack["description"],
        entrypoints={name: pack["entrypoint"][name] for name in ENTRYPOINTS},
        dependencies=tuple(
            Dependency(d["pack_id"], d["version_constraint"]) for d in pack["dependencies"]
        ),
        artifacts=tuple(Artifact(a["path"], a["sha256"]) for a in pack["artifacts"]),
        dry_run_supported=safety["dry_run_supported"],
        approval_required=safety["operator_approval_required"],
        health_check_timeout=safety["health_check_timeout_seconds"],
    )
