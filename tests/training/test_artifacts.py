"""Tests for training.artifacts: atomic version folders, metadata and data hashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.artifacts import ArtifactStore, VersionMeta, data_hash, validate_version_name


def _meta(name: str = "v2", parent: str | None = "v1") -> VersionMeta:
    return VersionMeta(
        name=name,
        parent=parent,
        kind="lora",
        base_model="models/tiny-policy",
        config={"beta": 0.1, "target_modules": ["q_proj", "v_proj"]},
        metrics={"final_loss": 0.42, "steps": 12},
        data_hash="ab" * 32,
    )


def test_write_version_renames_on_success(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    with store.write_version("v1") as folder:
        assert folder.parent == store.versions_dir
        assert folder.name.startswith(".tmp-v1-")
        assert not store.exists("v1")
        assert store.list_versions() == []
        (folder / "adapter_model.safetensors").write_bytes(b"weights")
    assert not folder.exists()
    assert store.exists("v1")
    assert store.version_path("v1") == tmp_path / "store" / "versions" / "v1"
    assert (store.version_path("v1") / "adapter_model.safetensors").read_bytes() == b"weights"
    assert store.list_versions() == ["v1"]


def test_write_version_exception_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError, match="training crashed"):
        with store.write_version("v1") as folder:
            (folder / "half.bin").write_bytes(b"partial")
            raise RuntimeError("training crashed")
    assert not store.exists("v1")
    assert not store.version_path("v1").exists()
    assert list(store.versions_dir.iterdir()) == []
    assert store.list_versions() == []


def test_write_version_refuses_existing_name_before_work(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with store.write_version("v1") as folder:
        (folder / "a.txt").write_text("first")
    entered = False
    with pytest.raises(FileExistsError, match="v1"):
        with store.write_version("v1"):
            entered = True
    assert not entered
    assert (store.version_path("v1") / "a.txt").read_text() == "first"
    assert sorted(p.name for p in store.versions_dir.iterdir()) == ["v1"]


def test_write_version_refuses_name_created_during_write(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(FileExistsError, match="while it was being written"):
        with store.write_version("v1") as folder:
            (folder / "mine.txt").write_text("second writer")
            with store.write_version("v1") as other:
                (other / "theirs.txt").write_text("first writer")
    # The writer that finished first wins; the loser's temporary folder is gone.
    assert (store.version_path("v1") / "theirs.txt").read_text() == "first writer"
    assert not (store.version_path("v1") / "mine.txt").exists()
    assert sorted(p.name for p in store.versions_dir.iterdir()) == ["v1"]


def test_list_versions_ignores_temporary_folders_and_files(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    assert store.list_versions() == []
    for name in ["v2", "v1"]:
        with store.write_version(name):
            pass
    (store.versions_dir / ".tmp-v3-deadbeef").mkdir()
    (store.versions_dir / "notes.txt").write_text("not a version")
    assert store.list_versions() == ["v1", "v2"]
    assert store.exists("v1") and not store.exists("v3")


def test_meta_round_trip(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    meta = _meta()
    with store.write_version("v2") as folder:
        written = store.write_meta(folder, meta)
        assert written == folder / "meta.json"
    loaded = store.read_meta("v2")
    assert loaded == meta
    assert loaded.created_at.endswith("+00:00")
    first = _meta(name="v1", parent=None)
    assert VersionMeta.from_dict(first.to_dict()) == first


def test_read_meta_missing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with store.write_version("v1"):
        pass
    with pytest.raises(FileNotFoundError, match=r"meta\.json"):
        store.read_meta("v1")


def test_meta_validation() -> None:
    with pytest.raises(ValueError, match="UTC"):
        VersionMeta(name="v1", parent=None, kind="lora", base_model="m", created_at="2024-05-01T12:00:00+02:00")
    with pytest.raises(ValueError, match="ISO 8601"):
        VersionMeta(name="v1", parent=None, kind="lora", base_model="m", created_at="yesterday")
    with pytest.raises(ValueError, match="kind"):
        VersionMeta(name="v1", parent=None, kind="", base_model="m")
    with pytest.raises(ValueError, match="path separators"):
        VersionMeta(name="v1", parent="../v0", kind="lora", base_model="m")
    with pytest.raises(ValueError, match="unknown VersionMeta keys"):
        VersionMeta.from_dict({**_meta().to_dict(), "extra": 1})


def test_data_hash_stable_and_order_sensitive() -> None:
    a = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello", "rejected": "Go away"}
    b = {"prompt": [{"role": "user", "content": "Sky?"}], "chosen": "Blue", "rejected": "Green"}
    a_reordered = {"rejected": "Go away", "chosen": "Hello", "prompt": [{"content": "Hi", "role": "user"}]}
    h = data_hash([a, b])
    assert len(h) == 64 and all(c in "0123456789abcdef" for c in h)
    assert data_hash([a, b]) == h
    assert data_hash(iter([a_reordered, b])) == h
    assert data_hash([b, a]) != h
    assert data_hash([a]) != h
    assert data_hash([{**a, "chosen": "Hello!"}, b]) != h
    assert data_hash([]) != data_hash([{}])
    # Records are delimited, so content cannot slide from one record into the next.
    assert data_hash([{"x": "ab"}, {"x": "c"}]) != data_hash([{"x": "a"}, {"x": "bc"}])


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a/b", "path separators"),
        ("..\\v1", "path separators"),
        (".hidden", "dot"),
        ("..", "dot"),
        ("v\x001", "NUL"),
    ],
)
def test_name_validation(tmp_path: Path, name: str, message: str) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(ValueError, match=message):
        validate_version_name(name)
    with pytest.raises(ValueError, match=message):
        store.version_path(name)
    with pytest.raises(ValueError, match=message):
        with store.write_version(name):
            pass
    assert not store.versions_dir.exists() or list(store.versions_dir.iterdir()) == []


def test_valid_names_accepted() -> None:
    for name in ["v1", "v-0002", "2024-05-01T12.00", "policy_v3"]:
        assert validate_version_name(name) == name
