"""The registry on a real SQLite file with real artefacts."""

from __future__ import annotations

import sqlite3

import pytest

from app.registry import Registry, RegistryError, parse_reference


def _publish(reg, name="smass-raw-stack", data=b"onnx-bytes", **kw):
    return reg.publish(name, data, target="smass", path="raw", kind="stack", metrics={"pearson_r": 0.97},
                       seed=42, data_fingerprint="f" * 64, training_domain={"M_h": {"min": 10.5, "max": 15}}, **kw)


def test_publish_list_get_and_versions(tmp_path):
    reg = Registry(tmp_path / "models")
    v1 = _publish(reg, data=b"one")
    v2 = _publish(reg, data=b"two")
    assert (v1.version, v2.version) == (1, 2)
    assert v2.artefact.read_bytes() == b"two" and v2.artefact.name == "v2.onnx"
    assert [m.version for m in reg.versions("smass-raw-stack")] == [1, 2]
    assert [m.name for m in reg.list_models()] == ["smass-raw-stack"]
    assert reg.get("smass-raw-stack").version == 2  # latest while no production alias
    assert reg.get("smass-raw-stack").metrics == {"pearson_r": 0.97}
    assert not list((tmp_path / "models" / "artefacts" / "smass-raw-stack").glob("*.tmp"))
    with sqlite3.connect(tmp_path / "models" / "registry.sqlite") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT count(*) FROM model_versions").fetchone()[0] == 2


def test_aliases_and_references(tmp_path):
    reg = Registry(tmp_path)
    _publish(reg, aliases=("production",))
    _publish(reg)
    assert reg.get("smass-raw-stack").version == 1  # production wins over latest
    assert reg.resolve("models:/smass-raw-stack@production").version == 1
    reg.set_alias("smass-raw-stack", "production", 2)
    assert reg.resolve("smass-raw-stack@production").version == 2
    assert reg.resolve("smass-raw-stack/1").aliases == ()
    assert reg.get("smass-raw-stack", version=2).aliases == ("production",)
    with pytest.raises(RegistryError, match="no version 9"):
        reg.set_alias("smass-raw-stack", "production", 9)
    with pytest.raises(RegistryError, match="no alias 'staging'"):
        reg.resolve("smass-raw-stack@staging")
    with pytest.raises(RegistryError, match="invalid alias"):
        reg.set_alias("smass-raw-stack", "bad alias!", 1)
    assert parse_reference("models:/a-b/3") == ("a-b", None, 3)
    with pytest.raises(RegistryError, match="must be a number"):
        parse_reference("a/latest")


def test_reopened_registry_sees_everything(tmp_path):
    _publish(Registry(tmp_path), aliases=("production",))
    again = Registry(tmp_path, create=False)
    assert again.get("smass-raw-stack").aliases == ("production",)
    with pytest.raises(RegistryError, match="no model registry"):
        Registry(tmp_path / "elsewhere", create=False)


def test_tampered_or_missing_artefact_is_refused(tmp_path):
    reg = Registry(tmp_path)
    mv = _publish(reg, data=b"original")
    assert reg.load_bytes(mv) == b"original"
    mv.artefact.write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="has been modified.*refusing"):
        reg.load_bytes(mv)
    mv.artefact.unlink()
    with pytest.raises(RegistryError, match="missing"):
        reg.load_bytes(mv)


def test_runs_are_recorded(tmp_path):
    reg = Registry(tmp_path)
    reg.record_run("run-1", 42, "a" * 64, {"preset": "fast"}, {"smass": {}}, {"numpy": "2"})
    assert reg.get_run("run-1")["seed"] == 42
    assert reg.list_runs() == ["run-1"]
    with pytest.raises(RegistryError, match="no training run"):
        reg.get_run("run-2")
