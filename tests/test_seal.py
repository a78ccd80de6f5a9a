"""seal pins artifact hashes in place: comments, order and style of the YAML are kept."""

from __future__ import annotations

import hashlib

from aurora.manifest import load_manifest
from aurora.seal import seal
from aurora_testing import PackFactory


def test_seal_flow_style_and_comments_kept(make_pack: PackFactory) -> None:
    root = make_pack("alpha", files={"a.bin": "aa", "b/c.txt": "cc"})
    path = root / "manifest.yaml"
    text = path.read_text().replace(
        "  artifacts: []\n",
        "  # pinned files\n"
        '  artifacts: [{path: "a.bin", sha256: ""},   # first\n'
        "              {path: b/c.txt, sha256: ''}]\n",
    )
    path.write_text(text)
    result = seal(load_manifest(root))
    assert result["written"] is True
    new = path.read_text()
    digest_a = hashlib.sha256(b"aa").hexdigest()
    digest_c = hashlib.sha256(b"cc").hexdigest()
    assert f'{{path: "a.bin", sha256: "{digest_a}"}},   # first\n' in new
    assert f'{{path: b/c.txt, sha256: "{digest_c}"}}]' in new
    assert "  # pinned files\n" in new
    # Everything but the two values is byte-identical.
    assert new.replace(digest_a, "").replace(digest_c, "").replace("''", '""') == text.replace(
        "''", '""'
    )
    assert [a.sha256 for a in load_manifest(root).artifacts] == [digest_a, digest_c]


def test_seal_again_changes_nothing(make_pack: PackFactory) -> None:
    root = make_pack("alpha", artifacts=[("a.bin", "")], files={"a.bin": "aa"})
    assert seal(load_manifest(root))["written"] is True
    before = (root / "manifest.yaml").read_bytes()
    again = seal(load_manifest(root))
    assert again["written"] is False
    assert again["artifacts"][0]["changed"] is False
    assert (root / "manifest.yaml").read_bytes() == before


def test_seal_keeps_file_mode(make_pack: PackFactory) -> None:
    root = make_pack("alpha", artifacts=[("a.bin", "")], files={"a.bin": "aa"})
    (root / "manifest.yaml").chmod(0o640)
    seal(load_manifest(root))
    assert (root / "manifest.yaml").stat().st_mode & 0o777 == 0o640
