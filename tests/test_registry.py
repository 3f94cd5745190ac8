"""The registry on a real SQLite file with real artefacts."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from app.core.registry import (ArtefactUnavailable, InvalidReference, ModelNotFound, Registry, RegistryError,
                          parse_reference)


def _onnx(tag: str = "a") -> bytes:
    """A tiny valid ONNX graph (the registry does not care what it computes); ``tag`` varies the bytes."""
    io = [helper.make_tensor_value_info(n, TensorProto.DOUBLE, [None, 5]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8, doc_string=tag)
    return model.SerializeToString()


def _publish(reg, name="smass-raw-stack", data=None, **kw):
    data = _onnx() if data is None else data
    return reg.publish(name, data, target="smass", variant="raw", kind="stack", metrics={"pearson_r": 0.97},
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


def test_concurrent_creation_of_a_new_alias_succeeds_for_every_client(tmp_path):
    _publish(Registry(tmp_path), data=_onnx("one"))
    _publish(Registry(tmp_path), data=_onnx("two"))
    n = 40
    for alias in ("canary", "shadow", "beta"):  # several rounds: one race may, by chance, not collide
        barrier = threading.Barrier(n)

        def move(i, alias=alias, barrier=barrier):
            reg = Registry(tmp_path)  # each client its own engine and connections, as separate processes
            barrier.wait()
            reg.set_alias("smass-raw-stack", alias, 1 + i % 2)

        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(move, i) for i in range(n)]
        assert [f.exception() for f in futures] == [None] * n
        assert Registry(tmp_path).alias_versions()[("smass-raw-stack", alias)] in (1, 2)


def test_alias_is_not_moved_to_a_missing_truncated_or_unloadable_artefact(tmp_path):
    reg = Registry(tmp_path)
    _publish(reg, aliases=("production",))
    v2 = _publish(reg, data=_onnx("two"))
    _publish(reg, data=b"not an onnx graph")  # registered intact, but onnxruntime cannot load it
    with pytest.raises(ArtefactUnavailable, match="smass-raw-stack/3 cannot be loaded by onnxruntime"):
        reg.set_alias("smass-raw-stack", "production", 3)
    v2.artefact.write_bytes(v2.artefact.read_bytes()[:-8])
    with pytest.raises(ArtefactUnavailable, match="smass-raw-stack/2 has been modified"):
        reg.set_alias("smass-raw-stack", "production", 2)
    v2.artefact.unlink()
    with pytest.raises(ArtefactUnavailable, match="smass-raw-stack/2 is missing"):
        reg.set_alias("smass-raw-stack", "staging", 2)
    assert reg.alias_versions() == {("smass-raw-stack", "production"): 1}
    with pytest.raises(InvalidReference, match="out of range"):
        reg.set_alias("smass-raw-stack", "production", 2**31)


def test_same_size_corruption_is_caught_by_sha256(tmp_path):
    reg = Registry(tmp_path)
    mv = _publish(reg, data=_onnx("tag-1"), aliases=("production",))
    _publish(reg, data=_onnx("tag-2"))
    corrupt = mv.artefact.read_bytes().replace(b"tag-1", b"tag-3")
    ort.InferenceSession(corrupt, providers=["CPUExecutionProvider"])  # still loads: only the hash can tell
    mv.artefact.write_bytes(corrupt)
    assert mv.artefact.stat().st_size == mv.size_bytes
    with pytest.raises(ArtefactUnavailable, match="has been modified"):
        reg.verify(mv)
    reg.set_alias("smass-raw-stack", "production", 2)
    with pytest.raises(ArtefactUnavailable, match="smass-raw-stack/1 has been modified"):
        reg.set_alias("smass-raw-stack", "production", 1)
    assert reg.get("smass-raw-stack").version == 2


@pytest.mark.parametrize("ref", ["x/²", "x/99999999999999999999999", "x/2147483648", "x/0", "x/" + "9" * 5000,
                                 "x/", "x/-1", "x@", "x@1bad", "x@bad alias", "bad name/1", "@prod", "models:/"])
def test_malformed_references_are_invalid(ref):
    with pytest.raises(InvalidReference, match="model reference"):
        parse_reference(ref)


def test_reference_grammar_accepts_ascii_versions_in_range():
    assert parse_reference("x/2147483647") == ("x", None, 2**31 - 1)
    assert parse_reference("models:/x/007") == ("x", None, 7)
    assert parse_reference(" x@staging ") == ("x", "staging", None)



def test_resolve_choice_is_the_one_reading_of_a_model_choice(tmp_path):
    reg = Registry(tmp_path)
    _publish(reg)
    _publish(reg, data=_onnx("b"))
    reg.set_alias("smass-raw-stack", "staging", 1)

    def version(choice):
        return [mv.version for mv in reg.resolve_choice(choice, ["smass"], "raw")]

    assert version(None) == [2]  # no production alias: the latest
    assert version("1") == [1] and version("staging") == [1] and version("smass-raw-stack/1") == [1]
    assert version("smass-raw-stack") == [2] and version("models:/smass-raw-stack@staging") == [1]
    reg.set_alias("smass-raw-stack", "production", 1)
    assert version(None) == [1]
    for bad in ("²", "99999999999999999999999", "0", "bad alias"):
        with pytest.raises(InvalidReference):
            reg.resolve_choice(bad, ["smass"], "raw")
    with pytest.raises(InvalidReference, match="not sSFR"):
        reg.resolve_choice("smass-raw-stack/1", ["smass", "sSFR"], "raw")
    with pytest.raises(ModelNotFound):
        reg.resolve_choice("canary", ["smass"], "raw")


def test_a_model_named_by_reference_brings_its_own_targets(tmp_path):
    """`predict --model smass-published/1` needs no --targets: the registry records the model's target."""
    from app.core.model import resolve

    reg = Registry(tmp_path)
    _publish(reg)
    _publish(reg, name="smass-published")
    assert {t: mv.name for t, mv in resolve(reg, None, "raw", "smass-published/1").items()} == \
        {"smass": "smass-published"}
    assert list(resolve(reg, None, "raw", None)) == ["smass"]


def test_unknown_names_versions_and_aliases_are_model_not_found(tmp_path):
    reg = Registry(tmp_path)
    _publish(reg)
    for kwargs in ({"name": "nope"}, {"name": "nope", "version": 1}, {"version": 2}, {"version": 0},
                   {"version": 2**31}, {"version": 10**30}, {"alias": "staging"}):
        with pytest.raises(ModelNotFound):
            reg.get(**{"name": "smass-raw-stack", **kwargs})
    with pytest.raises(ModelNotFound, match="no version 9"):
        reg.resolve("smass-raw-stack/9")
    with pytest.raises(ModelNotFound, match="no version 9"):
        reg.set_alias("smass-raw-stack", "production", 9)
    with pytest.raises(ModelNotFound, match="no training run"):
        reg.get_run("run-x")
    with pytest.raises(ModelNotFound, match="no model registry"):
        Registry(tmp_path / "elsewhere", create=False)
    assert issubclass(ModelNotFound, RegistryError) and issubclass(ArtefactUnavailable, RegistryError)


def test_leftover_artefact_of_a_crashed_publish_is_set_aside(tmp_path):
    reg = Registry(tmp_path)
    _publish(reg)
    art_dir = tmp_path / "artefacts" / "smass-raw-stack"
    (art_dir / "v2.onnx").write_bytes(b"half-published")  # the file was linked, the row never inserted
    v2 = _publish(reg, data=_onnx("new"))
    assert v2.version == 2 and reg.load_bytes(v2) == _onnx("new")
    orphans = list(art_dir.glob("v2.onnx.orphan-*"))
    assert len(orphans) == 1 and orphans[0].read_bytes() == b"half-published"
    assert _publish(reg).version == 3
    # refused publishes leave no file behind to become orphans
    with pytest.raises(InvalidReference):
        _publish(reg, aliases=("bad alias",))
    with pytest.raises(ModelNotFound, match="no training run"):
        _publish(reg, run_id="never-recorded")
    assert sorted(p.name for p in art_dir.glob("v*.onnx")) == ["v1.onnx", "v2.onnx", "v3.onnx"]
    assert not list(art_dir.glob("*.tmp"))


def test_concurrent_publishers_get_distinct_versions(tmp_path):
    Registry(tmp_path)
    n = 8
    barrier = threading.Barrier(n)

    def publish(i):
        reg = Registry(tmp_path)
        barrier.wait()
        return _publish(reg, data=_onnx(f"p{i}")).version

    with ThreadPoolExecutor(n) as pool:
        versions = list(pool.map(publish, range(n)))
    assert sorted(versions) == list(range(1, n + 1))
    reg = Registry(tmp_path)
    stored = {reg.load_bytes(mv) for mv in reg.versions("smass-raw-stack")}  # every file matches its row
    assert stored == {_onnx(f"p{i}") for i in range(n)}
