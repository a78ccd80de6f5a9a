"""Factories for pack05 tests (a unique module name: test dirs of several packs share sys.path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def make_manifest(**overrides: Any) -> dict[str, Any]:
    """A valid manifest; keys set to None are removed."""
    manifest: dict[str, Any] = {
        "id": "acme.echo",
        "name": "Echo",
        "version": "1.0.0",
        "entrypoint": "main.py",
        "description": "Echoes its input.",
        "permissions": ["network"],
    }
    manifest.update(overrides)
    return {k: v for k, v in manifest.items() if v is not None}


def write_package(
    root: Path, manifest: dict[str, Any] | None = None, files: dict[str, str | bytes] | None = None
) -> Path:
    """A package directory: manifest.json plus files (default: main.py)."""
    root.mkdir(parents=True, exist_ok=True)
    manifest = make_manifest() if manifest is None else manifest
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    for rel, content in (files if files is not None else {"main.py": "print('hi')\n"}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def make_tar(path: Path, members: list[tuple[Any, bytes | None]]) -> Path:
    """A .tar.gz from (TarInfo, content) pairs; content None for non-files."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tf:
        for info, content in members:
            if content is not None:
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
            else:
                tf.addfile(info)
    return path


def tar_file(name: str, content: bytes, mode: int = 0o644) -> tuple[Any, bytes]:
    import tarfile

    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, content


def tar_special(name: str, kind: bytes, linkname: str = "") -> tuple[Any, None]:
    import tarfile

    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def make_zip(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    """A .zip from (name, content, unix mode including file type bits)."""
    import warnings
    import zipfile

    with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are wanted by one hostile case
        for name, content, mode in members:
            info = zipfile.ZipInfo(name)
            info.external_attr = (mode & 0xFFFF) << 16
            zf.writestr(info, content)
    return path


def manifest_bytes(**overrides: Any) -> bytes:
    return json.dumps(make_manifest(**overrides)).encode()


class SmallFs:
    """A tmpfs of a few hundred KiB mounted for one test (root only); ``fill`` leaves
    exactly ``free`` bytes (or ``inodes`` inodes) available."""

    def __init__(self, root: Path, size: int, inodes: int = 4096) -> None:
        import subprocess

        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes={inodes},mode=0755", "tmpfs",
             str(root)],
            check=True,
            capture_output=True,
        )  # fmt: skip
        self.fillers = root / ".fill"
        self.fillers.mkdir()
        self._n = 0

    def available(self) -> tuple[int, int]:
        import os

        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize, st.f_favail

    def fill(self, free: int | None = None, inodes: int | None = None) -> None:
        """Take space (to ``free`` bytes left) and/or inodes (to ``inodes`` left)."""
        import os

        if free is not None:
            take = self.available()[0] - free
            if take > 0:
                self._n += 1
                fd = os.open(self.fillers / f"s{self._n}", os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    os.posix_fallocate(fd, 0, take)
                finally:
                    os.close(fd)
        if inodes is not None:
            while self.available()[1] > inodes:
                self._n += 1
                (self.fillers / f"i{self._n}").touch()

    def unfill(self) -> None:
        import shutil

        shutil.rmtree(self.fillers)
        self.fillers.mkdir()

    def unmount(self) -> None:
        import subprocess

        subprocess.run(["umount", "-l", str(self.root)], check=False, capture_output=True)
