"""Dependency resolution: what `install --with-deps` would do, in order."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from aurora.manifest import Dependency, Manifest


@dataclass(frozen=True)
class Step:
    """One pack to install, from the packs directory, with why."""

    pack_id: str
    version: str
    action: str  # "install", "upgrade" (another version is active) or "reinstall"
    reason: str


@dataclass
class Plan:
    """The ordered steps (dependencies first, the target last) and every problem found."""

    target: str
    steps: list[Step] = field(default_factory=list)
    satisfied: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def dependency_steps(self) -> list[Step]:
        return [s for s in self.steps if s.pack_id != self.target]

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "steps": [
                {"pack": s.pack_id, "version": s.version, "action": s.action, "reason": s.reason}
                for s in self.steps
            ],
            "satisfied": list(self.satisfied),
            "problems": list(self.problems),
        }


def _action(pack_id: str, version: str, installed: Mapping[str, str]) -> str:
    active = installed.get(pack_id)
    if active is None:
        return "install"
    return "reinstall" if active == version else "upgrade"


def resolve(
    target: Manifest,
    available: Mapping[str, Manifest],
    installed: Mapping[str, str],
    installed_deps: Mapping[str, tuple[Dependency, ...]],
    invalid: Collection[str] = (),
) -> Plan:
    """Plan the installation of ``target`` and of whatever it needs.

    ``available`` are the packs found in the packs directory, ``installed`` the
    active version of each installed pack and ``installed_deps`` the
    dependencies each installed pack declared. A dependency already installed
    in a satisfying version is left alone; otherwise the version found in the
    packs directory is planned if it satisfies the constraint. Cycles, missing
    and unsatisfiable dependencies, and upgrades that would break an installed
    pack, are problems. ``invalid`` names packs present but failing validation.
    """
    plan = Plan(target=target.id)
    done: set[str] = set()

    def visit(manifest: Manifest, stack: list[str]) -> None:
        for dep in manifest.dependencies:
            need = f"{manifest.id} needs {dep.pack_id} {dep.constraint or '(any version)'}"
            if dep.pack_id in stack:
                cycle = [*stack[stack.index(dep.pack_id) :], dep.pack_id]
                plan.problems.append("dependency cycle: " + " -> ".join(cycle))
                continue
            active = installed.get(dep.pack_id)
            if active is not None and dep.allows(active) and dep.pack_id not in done:
                if dep.pack_id not in plan.satisfied:
                    plan.satisfied.append(dep.pack_id)
                continue
            if dep.pack_id in done:
                step = next(s for s in plan.steps if s.pack_id == dep.pack_id)
                if not dep.allows(step.version):
                    plan.problems.append(f"{need}: the plan installs {step.version}")
                continue
            source = available.get(dep.pack_id)
            if source is None:
                where = f"installed {active} does not satisfy it and " if active else ""
                if dep.pack_id in invalid:
                    plan.problems.append(
                        f"{need}: {where}its pack in the packs directory is invalid "
                        f"(validate --pack {dep.pack_id})"
                    )
                else:
                    plan.problems.append(f"{need}: {where}not found in the packs directory")
                continue
            if not dep.allows(source.version):
                where = f"installed {active}, " if active else ""
                plan.problems.append(
                    f"{need}: {where}the packs directory has {source.version}, which does not "
                    "satisfy it"
                )
                continue
            visit(source, [*stack, dep.pack_id])
            if dep.pack_id not in done:
                done.add(dep.pack_id)
                action = _action(dep.pack_id, source.version, installed)
                plan.steps.append(Step(dep.pack_id, source.version, action, need))

    visit(target, [target.id])
    done.add(target.id)
    plan.steps.append(
        Step(target.id, target.version, _action(target.id, target.version, installed), "requested")
    )
    # A version change must not break an installed pack that stays as it is.
    new_versions = {s.pack_id: s.version for s in plan.steps}
    for pack_id, deps in installed_deps.items():
        if pack_id in new_versions:
            continue
        for dep in deps:
            new = new_versions.get(dep.pack_id)
            if new is not None and not dep.allows(new):
                plan.problems.append(
                    f"installed {pack_id} needs {dep.pack_id} {dep.constraint}: the plan "
                    f"installs {new}"
                )
    return plan
