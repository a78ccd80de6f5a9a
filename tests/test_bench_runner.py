"""bench/run.py: a run of named benchmarks replaces their sections and keeps the others."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

RUNNER = Path(__file__).resolve().parents[1] / "bench" / "run.py"


def _runner(bench_dir: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_runner_under_test", RUNNER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "BENCH_DIR", bench_dir)
    return module


def _bench(bench_dir: Path, name: str, says: str, code: int = 0) -> None:
    (bench_dir / f"bench_{name}.py").write_text(
        f"import sys\nprint('## {name}\\n\\n{says}')\nsys.exit({code})\n"
    )


def test_named_runs_replace_their_sections_and_keep_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _runner(tmp_path, monkeypatch)
    (tmp_path / "RESULTS.md").write_text("# results of an older runner, no markers\n")
    _bench(tmp_path, "alpha", "alpha first")
    assert run.main(["alpha"]) == 0
    assert "older runner" not in (tmp_path / "RESULTS.md").read_text()
    _bench(tmp_path, "beta", "beta first")
    assert run.main([]) == 0
    _bench(tmp_path, "alpha", "alpha again")
    _bench(tmp_path, "beta", "beta again")
    assert run.main(["beta"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "alpha first" in text and "beta again" in text
    assert "beta first" not in text and "alpha again" not in text
    assert text.index("## alpha") < text.index("## beta")  # the order of the scripts
    assert run.main(["bench_alpha"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "alpha again" in text and "beta again" in text and text.count("## ") == 2


def test_a_failing_benchmark_is_reported_and_an_unknown_name_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _runner(tmp_path, monkeypatch)
    _bench(tmp_path, "alpha", "fine")
    _bench(tmp_path, "broken", "half", code=3)
    assert run.main([]) == 1
    text = (tmp_path / "RESULTS.md").read_text()
    assert "FAILED (exit 3)" in text and "fine" in text
    assert run.main(["nosuch"]) == 2
    assert "no benchmark named nosuch" in capsys.readouterr().err
    assert (tmp_path / "RESULTS.md").read_text() == text
    assert sys.modules.get("bench_runner_under_test") is None
