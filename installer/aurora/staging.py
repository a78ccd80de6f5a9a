"""Staging: copy a pack into staging/<id>/<version>/, check its artifacts, record its digest."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from aurora.audit import AuditLog
from aurora.errors import IntegrityError, ManifestError, StateError
from aurora.fsutil import atomic_write_json, crash_point, fsync_dir, remove_tree
from aurora.home import Home
from aurora.manifest import Manifest, load_manifest
from aurora.recovery import begin, commit, settle, temp_name
from aurora.state import State
from aurora.timeutil import now_iso
from aurora.tree import ProgressSink, TreeDigest, copy_tree, digest_tree

log = logging.getLogger(__name__)


def check_artifacts(
    manifest: Manifest, sha256_of: Callable[[str], str | None], *, require_hashes: bool
) -> list[str]:
    """Compare each artifact's sha256 (``sha256_of`` its path) with the pinned one.

    Raises IntegrityError on any mismatch, and on an unpinned artifact when
    ``require_hashes``; otherwise returns (and logs) one warning per unpinned artifact.
    """
    unpinned: list[str] = []
    mismatches: list[str] = []
    for i, artifact in enumerate(manifest.artifacts):
        if not artifact.sha256:
            unpinned.append(f"pack.artifacts[{i}]: {artifact.path} has no sha256 (run seal)")
            continue
        actual = sha256_of(artifact.path)
        if actual != artifact.sha256:
            mismatches.append(
                f"pack.artifacts[{i}]: {artifact.path} sha256 is {actual}, "
                f"the manifest pins {artifact.sha256}"
            )
    if mismatches:
        raise IntegrityError(f"{manifest.id}: artifact hash mismatch", mismatches)
    if unpinned and require_hashes:
        raise IntegrityError(
            f"{manifest.id}: --require-hashes and artifacts are not pinned", unpinned
        )
    for w in unpinned:
        log.warning("%s", w)
    return unpinned


def stage(
    home: Home,
    audit: AuditLog,
    state: State,
    manifest: Manifest,
    *,
    require_hashes: bool,
    on_progress: ProgressSink | None = None,
) -> dict[str, Any]:
    """Copy the pack through a temp dir and a rename; record its digest. Hold the lock."""
    pack_id, version = manifest.id, manifest.version
    record = state.pack(pack_id)
    begin(state, pack_id, "stage", version, intent=audit.current_intent)
    parent = home.staging(pack_id)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / temp_name("tmp", version)
    try:
        tree, problems = copy_tree(manifest.root, tmp, on_progress)
        if problems:
            raise ManifestError(f"{manifest.root}: pack tree cannot be staged", problems)
        crash_point("stage:copied")
        warnings = check_artifacts(manifest, tree.file_sha256, require_hashes=require_hashes)
    except BaseException:
        # Nothing of a failed stage stays: no partial copy, no empty staging/<id>/,
        # no stub record (if this save fails too, the next run's recovery does it).
        with contextlib.suppress(OSError):
            remove_tree(tmp)
            if not any(parent.iterdir()):
                parent.rmdir()
        record["pending"] = None
        if not any(record.values()):
            del state.packs[pack_id]
        with contextlib.suppress(OSError):
            state.save()
        raise
    target = parent / version
    previous = record["staged"].get(version)
    changed = not (previous and previous["digest"] == tree.digest)
    # Even an unchanged tree replaces the staged copy: that copy may have been tampered with.
    aside = None
    if target.exists():
        aside = parent / temp_name("old", version)
        os.rename(target, aside)
        crash_point("stage:moved-aside")
    os.rename(tmp, target)
    fsync_dir(parent)
    crash_point("stage:renamed")
    write_tree_record(home, pack_id, tree)
    record["staged"][version] = {
        "digest": tree.digest,
        "staged_at": now_iso(),
        "files": tree.files,
        "size": tree.size,
        "source": str(manifest.root),
        "warnings": warnings,
    }
    state.record_result(pack_id, "stage", True, version, f"staged {tree.digest}")
    outcome = {
        "version": version,
        "digest": tree.digest,
        "source": str(manifest.root),
        "warnings": warnings,
    }
    commit(state, pack_id, "stage", **outcome)
    crash_point("stage:committed")
    audit.record("stage", pack_id, **outcome)
    crash_point("stage:recorded")
    if aside is not None:
        remove_tree(aside)
    settle(state, pack_id)
    return {
        "pack": pack_id,
        "version": version,
        "path": str(target),
        "digest": tree.digest,
        "files": tree.files,
        "size": tree.size,
        "warnings": warnings,
        "changed": changed,
    }


def ensure_staged(
    home: Home,
    audit: AuditLog,
    state: State,
    manifest: Manifest,
    on_progress: ProgressSink | None = None,
) -> tuple[Manifest, str, bool]:
    """The staged copy of this version (staged now if missing), its digest, and whether
    it was staged now. Hold the lock."""
    target = home.staged(manifest.id, manifest.version)
    staged_now = False
    if manifest.version not in state.pack(manifest.id)["staged"] or not target.is_dir():
        log.info("staging %s %s", manifest.id, manifest.version)
        if audit.current_intent is None:  # a dry run: it changes state only by staging
            state.intent = audit.intent("stage", manifest.id)
        stage(home, audit, state, manifest, require_hashes=False, on_progress=on_progress)
        staged_now = True
    digest: str = state.pack(manifest.id)["staged"][manifest.version]["digest"]
    if not staged_now:
        warn_if_source_differs(manifest, digest)
    try:
        staged = load_manifest(target)
    except ManifestError as exc:
        raise IntegrityError(
            f"staged copy {target} is no longer valid: run stage again", exc.problems
        ) from exc
    return staged, digest, staged_now


def warn_if_source_differs(manifest: Manifest, staged_digest: str) -> bool:
    """Say so (a warning) when the pack's source no longer matches its staged copy: the
    staged copy is what dry-run and install use, so an edit after `stage` is not in it."""
    source, _ = digest_tree(manifest.root)
    if source.digest == staged_digest:
        return False
    log.warning(
        "%s %s: the source in %s differs from its staged copy (staged %s, source %s); "
        "the staged copy is used: run `stage --pack %s` again to take the change",
        manifest.id,
        manifest.version,
        manifest.root,
        staged_digest,
        source.digest,
        manifest.id,
    )
    return True


def write_tree_record(home: Home, pack_id: str, tree: TreeDigest) -> None:
    """Keep every file's path and hash of a digest (what verify compares against)."""
    path = home.record(pack_id, tree.digest)
    if not path.exists():
        atomic_write_json(path, {"digest": tree.digest, "entries": tree.entries})


def read_tree_record(home: Home, pack_id: str, digest: str) -> dict[str, str]:
    """The per-file records of ``digest`` written by write_tree_record()."""
    path = home.record(pack_id, digest)
    try:
        entries: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))["entries"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateError(f"{path}: file record of {digest} unreadable: {exc}") from exc
    return entries
