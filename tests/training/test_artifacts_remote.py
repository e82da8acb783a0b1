"""Tests for training.artifacts' remote store, against a real S3-compatible server (SeaweedFS)."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest

from training.artifacts import (
    COMPLETE_FILE,
    ArtifactStore,
    RemoteArtifactStore,
    VersionMeta,
    is_remote,
    open_store,
    version_name_from_uri,
)


@pytest.fixture
def store(s3_options, tmp_path: Path) -> RemoteArtifactStore:
    # each test gets a prefix of its own in the shared bucket
    url = f"s3://artifacts/{uuid.uuid4().hex[:8]}"
    made = open_store(url, cache_dir=tmp_path / "cache", storage_options=s3_options)
    assert isinstance(made, RemoteArtifactStore)
    return made


def _write(store: RemoteArtifactStore, name: str, payload: bytes = b"weights") -> None:
    with store.write_version(name) as folder:
        (folder / "adapter_model.safetensors").write_bytes(payload)
        (folder / "nested").mkdir()
        (folder / "nested" / "tokenizer.json").write_text("{}")
        store.write_meta(folder, VersionMeta(name=name, parent=None, kind="lora", base_model="tiny"))


def test_open_store_picks_local_or_remote(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path / "a"), ArtifactStore)
    assert isinstance(open_store(str(tmp_path / "a")), ArtifactStore)
    assert is_remote("s3://bucket/prefix") and is_remote("memory://x") and not is_remote("/srv/artifacts")
    with pytest.raises(ValueError, match="needs a local cache_dir"):
        open_store("s3://bucket/prefix")


def test_version_appears_only_when_complete_and_round_trips(store: RemoteArtifactStore) -> None:
    with store.write_version("v1") as folder:
        (folder / "adapter_model.safetensors").write_bytes(b"weights")
        store.write_meta(folder, VersionMeta(name="v1", parent=None, kind="lora", base_model="tiny"))
        assert not store.exists("v1") and store.list_versions() == []
    assert store.exists("v1")
    assert store.list_versions() == ["v1"]
    assert store.version_uri("v1") == f"{store.url}/versions/v1"
    assert version_name_from_uri(store.version_uri("v1")) == "v1"
    assert store.read_meta("v1").base_model == "tiny"
    # the files are really in the bucket, next to a manifest that lists every one with its hash
    keys = sorted(k.rsplit("/", 1)[-1] for k in store.fs.find(store._key("v1")))
    assert keys == [COMPLETE_FILE, "adapter_model.safetensors", "meta.json"]
    manifest = json.loads(store.fs.cat_file(store._key("v1", COMPLETE_FILE)))
    assert set(manifest["files"]) == {"adapter_model.safetensors", "meta.json"}
    assert manifest["files"]["adapter_model.safetensors"]["size"] == len(b"weights")


def test_local_path_downloads_once_and_checks_every_file(store: RemoteArtifactStore, s3_options, tmp_path) -> None:
    _write(store, "v2", b"w" * 100_000)
    # a reader elsewhere (say the policy server's machine) has its own, empty cache
    reader = RemoteArtifactStore(store.url, cache_dir=tmp_path / "reader-cache", storage_options=s3_options)
    path = reader.local_path("v2")
    assert path == tmp_path / "reader-cache" / "v2"
    assert (path / "adapter_model.safetensors").read_bytes() == b"w" * 100_000
    assert (path / "nested" / "tokenizer.json").read_text() == "{}"
    # a second call is served from the cache: removing the remote copy does not matter
    store.fs.rm(store._key("v2", "nested", "tokenizer.json"))
    assert reader.local_path("v2") == path


def test_a_corrupt_remote_file_is_refused_and_nothing_is_cached(store: RemoteArtifactStore, s3_options, tmp_path):
    _write(store, "v3")
    store.fs.pipe_file(store._key("v3", "adapter_model.safetensors"), b"tampered")
    reader = RemoteArtifactStore(store.url, cache_dir=tmp_path / "other", storage_options=s3_options)
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors does not match its manifest"):
        reader.local_path("v3")
    assert not (tmp_path / "other" / "v3").exists()
    assert [p for p in (tmp_path / "other").iterdir()] == []  # no temporary folder left behind


def test_an_upload_cut_short_is_invisible(store: RemoteArtifactStore) -> None:
    # files of a version whose writer died before the manifest: never listed, never read
    store.fs.pipe_file(store._key("v4", "adapter_model.safetensors"), b"half")
    assert not store.exists("v4")
    assert store.list_versions() == []
    with pytest.raises(FileNotFoundError, match="no finished version 'v4'"):
        store.local_path("v4")
    with pytest.raises(FileNotFoundError):
        store.read_meta("v4")


def test_a_failed_writer_uploads_nothing(store: RemoteArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="training crashed"), store.write_version("v5") as folder:
        (folder / "adapter_model.safetensors").write_bytes(b"x")
        raise RuntimeError("training crashed")
    assert not store.fs.exists(store._key("v5"))
    assert list(store.cache_dir.iterdir()) == []


def test_an_existing_version_is_never_overwritten(store: RemoteArtifactStore) -> None:
    _write(store, "v6", b"first")
    with pytest.raises(FileExistsError, match="already exists"), store.write_version("v6"):
        pass
    # a writer that started before another one finished finds out before uploading anything
    with pytest.raises(FileExistsError, match="while it was being written"), store.write_version("v7") as folder:
        (folder / "adapter_model.safetensors").write_bytes(b"late")
        _write(store, "v7", b"early")
    assert store.fs.cat_file(store._key("v7", "adapter_model.safetensors")) == b"early"
    assert store.fs.cat_file(store._key("v6", "adapter_model.safetensors")) == b"first"


def test_concurrent_downloads_agree(store: RemoteArtifactStore, s3_options, tmp_path: Path) -> None:
    _write(store, "v8", b"z" * 50_000)
    readers = [
        RemoteArtifactStore(store.url, cache_dir=tmp_path / "shared", storage_options=s3_options) for _ in range(4)
    ]
    paths: list[Path] = []
    errors: list[BaseException] = []

    def fetch(reader: RemoteArtifactStore) -> None:
        try:
            paths.append(reader.local_path("v8"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch, args=(r,)) for r in readers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert set(paths) == {tmp_path / "shared" / "v8"}
    assert (tmp_path / "shared" / "v8" / "adapter_model.safetensors").read_bytes() == b"z" * 50_000
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["v8"]


def test_wrong_credentials_fail_with_a_clear_error(s3_endpoint: str, tmp_path: Path) -> None:
    store = open_store(
        "s3://artifacts/x",
        cache_dir=tmp_path,
        storage_options={"key": "prefloop", "secret": "wrong", "endpoint_url": s3_endpoint},
    )
    with pytest.raises(PermissionError, match=r"the artifact store s3://artifacts/x refused access .*credentials"):
        store.list_versions()


def test_remote_store_works_on_any_fsspec_filesystem(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'remote'}", cache_dir=tmp_path / "cache")
    assert isinstance(store, RemoteArtifactStore)
    with store.write_version("v1") as folder:
        (folder / "weights.bin").write_bytes(b"abc")
    assert store.list_versions() == ["v1"]
    assert (tmp_path / "remote" / "versions" / "v1" / COMPLETE_FILE).is_file()
