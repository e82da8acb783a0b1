"""Append-only stores of policy versions: a local folder, or any fsspec filesystem (S3 and friends).

Local layout (``ArtifactStore``)::

    <root>/versions/<name>/            one finished version (e.g. adapter files + meta.json)
    <root>/versions/.tmp-<name>-<hex>/ a version being written; never read by anyone

A version is written into a temporary folder and renamed to its final name only when the
writer finished without an exception. ``os.rename`` is atomic on one filesystem, and the
temporary folder lives next to the final one, so a reader (the policy server, the web app)
sees either no version or a complete one, never a half-written one.

Remote layout (``RemoteArtifactStore``, e.g. ``s3://bucket/prefix``)::

    <url>/versions/<name>/...              the version's files
    <url>/versions/<name>/_COMPLETE.json   written last: the manifest (every file, size, SHA-256)

Object stores have no atomic rename, so the completion marker plays its part: a version exists
only once its manifest does, and files without one (an upload cut short) are never read. Readers
that need files on disk (trainers, vLLM) get them through ``local_path``, which downloads a
version once into a local cache, checks every file against the manifest, and renames the
finished copy into place.

``open_store(location)`` picks the right one: a plain path gives a local store, a URL with a
protocol (``s3://``, ``gs://``, ``file://``, ``memory://``...) a remote one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

META_FILE = "meta.json"
TMP_PREFIX = ".tmp-"


def utc_now_iso() -> str:
    """The current time as an ISO 8601 string in UTC, e.g. ``2024-05-01T12:00:00.123456+00:00``."""
    return datetime.now(UTC).isoformat()


def validate_version_name(name: str) -> str:
    """Return ``name`` if it can be used as a version folder name, else raise ValueError.

    A name must be a non-empty string without path separators, must not start with a dot (that
    would hide it, collide with temporary folders, or be ``.``/``..``) and must not contain NUL.
    """
    if not isinstance(name, str):
        raise ValueError(f"version name must be a string, got {type(name).__name__}: {name!r}")
    if not name or not name.strip():
        raise ValueError(f"version name must not be empty, got {name!r}")
    if "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        raise ValueError(f"version name must not contain path separators, got {name!r}")
    if name.startswith("."):
        raise ValueError(f"version name must not start with a dot, got {name!r}")
    if "\x00" in name:
        raise ValueError(f"version name must not contain NUL characters, got {name!r}")
    return name


@dataclass
class VersionMeta:
    """What the store records about a version, written to ``meta.json`` inside it."""

    name: str = field(metadata={"help": "Version name; equals the folder name."})
    parent: str | None = field(metadata={"help": "Version this one was trained from; None for the first version."})
    kind: str = field(metadata={"help": "What the folder holds, e.g. 'lora' for a peft LoRA adapter."})
    base_model: str = field(metadata={"help": "Base model the version applies to (a path or hub id)."})
    config: dict[str, Any] = field(default_factory=dict, metadata={"help": "Training configuration, as plain data."})
    metrics: dict[str, Any] = field(default_factory=dict, metadata={"help": "Training metrics, as plain data."})
    data_hash: str | None = field(default=None, metadata={"help": "data_hash() of the training records, if any."})
    created_at: str = field(default_factory=utc_now_iso, metadata={"help": "Creation time, ISO 8601 in UTC."})

    def __post_init__(self) -> None:
        validate_version_name(self.name)
        if self.parent is not None:
            validate_version_name(self.parent)
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"kind must be a non-empty string, got {self.kind!r}")
        if not isinstance(self.base_model, str) or not self.base_model:
            raise ValueError(f"base_model must be a non-empty string, got {self.base_model!r}")
        if not isinstance(self.config, dict):
            raise ValueError(f"config must be a dict, got {type(self.config).__name__}: {self.config!r}")
        if not isinstance(self.metrics, dict):
            raise ValueError(f"metrics must be a dict, got {type(self.metrics).__name__}: {self.metrics!r}")
        try:
            created = datetime.fromisoformat(self.created_at)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"created_at must be an ISO 8601 timestamp, got {self.created_at!r}") from exc
        offset = created.utcoffset()
        if offset is None or offset.total_seconds() != 0:
            raise ValueError(f"created_at must be in UTC (offset +00:00), got {self.created_at!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VersionMeta:
        """Build from ``to_dict()`` output; unknown keys raise ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VersionMeta keys: {unknown}")
        return cls(**dict(data))


def data_hash(records: Iterable[Mapping[str, Any]]) -> str:
    """SHA-256 (hex) over the canonical JSON of each record, in order.

    Each record is serialised with sorted keys and no whitespace, so two equal records hash equally
    however their keys were ordered; the order of the records matters (a different order is a
    different training run). Records must be JSON-serialisable.
    """
    digest = hashlib.sha256()
    for record in records:
        line = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


class ArtifactStore:
    """Versions stored as folders under ``<root>/versions``; see the module docstring."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"

    def __repr__(self) -> str:
        return f"ArtifactStore({str(self.root)!r})"

    def version_path(self, name: str) -> Path:
        """Final folder of version ``name`` (it may not exist yet)."""
        return self.versions_dir / validate_version_name(name)

    def exists(self, name: str) -> bool:
        """Whether version ``name`` has been completely written."""
        return self.version_path(name).is_dir()

    def list_versions(self) -> list[str]:
        """Names of the finished versions, sorted; temporary folders are ignored."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    @contextmanager
    def write_version(self, name: str) -> Iterator[Path]:
        """Yield an empty temporary folder; on clean exit rename it to the version's final folder.

        On an exception the temporary folder is removed and the exception propagates. Raises
        FileExistsError if the version already exists, both before yielding and at rename time
        (another writer may have finished first); in the latter case the temporary folder is
        removed too.
        """
        final = self.version_path(name)
        if final.exists():
            raise FileExistsError(f"version {name!r} already exists at {final}")
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.versions_dir / f"{TMP_PREFIX}{name}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            yield tmp
            if final.exists():
                raise FileExistsError(f"version {name!r} was created at {final} while it was being written")
            # os.rename onto an existing empty folder succeeds on POSIX, hence the check above; a writer
            # racing between the check and here gets OSError (ENOTEMPTY) since a finished version is never empty.
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def write_meta(folder: str | Path, meta: VersionMeta) -> Path:
        """Write ``meta`` as ``meta.json`` into ``folder`` (usually the one ``write_version`` yields)."""
        path = Path(folder) / META_FILE
        path.write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    def read_meta(self, name: str) -> VersionMeta:
        """Read ``meta.json`` of the finished version ``name``."""
        path = self.version_path(name) / META_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {META_FILE} for version {name!r} at {path}")
        return VersionMeta.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def version_uri(self, name: str) -> str:
        """Where version ``name`` lives, as recorded in the web app (here: its folder)."""
        return str(self.version_path(name))

    def local_path(self, name: str) -> Path:
        """A local folder holding the finished version ``name`` (here: the version's own folder)."""
        path = self.version_path(name)
        if not path.is_dir():
            raise FileNotFoundError(f"no version {name!r} at {path}")
        return path


COMPLETE_FILE = "_COMPLETE.json"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(folder: Path) -> dict[str, Any]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {
        "files": {
            p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256_file(p)} for p in files
        },
        "completed_at": utc_now_iso(),
    }


def _refusal_explained(method: Callable[..., Any]) -> Callable[..., Any]:
    """Re-raise a refused request (PermissionError, such as S3's bare 'Forbidden') with the store's
    URL and what to check."""

    @functools.wraps(method)
    def wrapper(self: RemoteArtifactStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except PermissionError as exc:
            raise PermissionError(
                f"the artifact store {self.url} refused access ({exc}); check its credentials "
                "(storage options, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and that the bucket exists"
            ) from exc

    return wrapper


class RemoteArtifactStore:
    """Versions stored under an fsspec URL, with a local download cache; see the module docstring.

    ``storage_options`` go to fsspec as they are (for S3 through s3fs: ``key``, ``secret``,
    ``endpoint_url``, ``client_kwargs``...); without them s3fs reads the usual ``AWS_*``
    environment variables, ``AWS_ENDPOINT_URL`` included, for S3-compatible stores.
    """

    def __init__(self, url: str, *, cache_dir: str | Path, storage_options: Mapping[str, Any] | None = None) -> None:
        import fsspec
        from fsspec.core import split_protocol

        protocol, _ = split_protocol(url)
        if not protocol:
            raise ValueError(f"a remote store needs a URL with a protocol (such as s3://bucket/prefix), got {url!r}")
        self.url = url.rstrip("/")
        self.fs, root = fsspec.core.url_to_fs(self.url, **dict(storage_options or {}))
        self.root = root.rstrip("/")
        self.protocol = protocol
        self.cache_dir = Path(cache_dir)

    write_meta = staticmethod(ArtifactStore.write_meta)

    def __repr__(self) -> str:
        return f"RemoteArtifactStore({self.url!r})"

    def _key(self, name: str, *parts: str) -> str:
        return "/".join((self.root, "versions", validate_version_name(name), *parts))

    def version_uri(self, name: str) -> str:
        """The version's URL, as recorded in the web app (``s3://bucket/prefix/versions/<name>``)."""
        return f"{self.url}/versions/{validate_version_name(name)}"

    @_refusal_explained
    def exists(self, name: str) -> bool:
        """Whether version ``name`` has been completely written (its manifest is there)."""
        return bool(self.fs.exists(self._key(name, COMPLETE_FILE)))

    @_refusal_explained
    def list_versions(self) -> list[str]:
        """Names of the finished versions, sorted; uploads without a manifest are ignored."""
        prefix = f"{self.root}/versions"
        if not self.fs.exists(prefix):
            return []
        self.fs.invalidate_cache(prefix)
        names = [PurePosixPath(p).name for p in self.fs.ls(prefix, detail=False)]
        return sorted(n for n in names if not n.startswith(".") and self.exists(n))

    @contextmanager
    def write_version(self, name: str) -> Iterator[Path]:
        """Yield an empty local folder; on clean exit upload it, then its manifest, last.

        On an exception nothing is uploaded. Raises FileExistsError if the version exists already,
        before yielding and again before the upload. The uploaded copy is also kept as the local
        cache of the version, so the writer never downloads what it just wrote.
        """
        if self.exists(name):
            raise FileExistsError(f"version {name!r} already exists at {self.version_uri(name)}")
        staging = self.cache_dir / f"{TMP_PREFIX}{name}-{secrets.token_hex(4)}"
        staging.mkdir(parents=True)
        try:
            yield staging
            if self.exists(name):
                raise FileExistsError(
                    f"version {name!r} was created at {self.version_uri(name)} while it was being written"
                )
            manifest = _manifest(staging)
            for rel in manifest["files"]:
                key = self._key(name, rel)
                self.fs.makedirs(key.rsplit("/", 1)[0], exist_ok=True)  # a no-op on object stores
                self.fs.put_file(str(staging / rel), key)
            self.fs.pipe_file(self._key(name, COMPLETE_FILE), json.dumps(manifest, indent=2).encode())
            (staging / COMPLETE_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            final = self.cache_dir / name
            if final.exists():
                shutil.rmtree(staging, ignore_errors=True)
            else:
                os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    @_refusal_explained
    def read_meta(self, name: str) -> VersionMeta:
        """Read ``meta.json`` of the finished version ``name`` (from the store, not the cache)."""
        if not self.exists(name):
            raise FileNotFoundError(f"no finished version {name!r} at {self.version_uri(name)}")
        return VersionMeta.from_dict(json.loads(self.fs.cat_file(self._key(name, META_FILE))))

    @_refusal_explained
    def local_path(self, name: str) -> Path:
        """A local folder holding version ``name``: downloaded once into the cache and checked.

        Every file is checked against the manifest's size and SHA-256; a mismatch raises
        ValueError naming the file and keeps nothing. Concurrent callers each download into a
        temporary folder; the first rename wins and the others use its copy.
        """
        final = self.cache_dir / validate_version_name(name)
        if (final / COMPLETE_FILE).is_file():
            return final
        if not self.exists(name):
            raise FileNotFoundError(f"no finished version {name!r} at {self.version_uri(name)}")
        manifest = json.loads(self.fs.cat_file(self._key(name, COMPLETE_FILE)))
        tmp = self.cache_dir / f"{TMP_PREFIX}{name}-{secrets.token_hex(4)}"
        tmp.mkdir(parents=True)
        try:
            for rel, expected in manifest["files"].items():
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(self._key(name, rel), str(target))
                size, digest = target.stat().st_size, _sha256_file(target)
                if size != expected["size"] or digest != expected["sha256"]:
                    raise ValueError(
                        f"{self.version_uri(name)}/{rel} does not match its manifest "
                        f"(size {size}, sha256 {digest[:12]}...; "
                        f"expected {expected['size']}, {expected['sha256'][:12]}...)"
                    )
            (tmp / COMPLETE_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            try:
                os.rename(tmp, final)
            except OSError:  # another process finished the same download first
                if not (final / COMPLETE_FILE).is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final


Store = ArtifactStore | RemoteArtifactStore


def is_remote(location: str | Path) -> bool:
    """Whether ``location`` is a URL with a protocol (``s3://...``) rather than a local path."""
    from fsspec.core import split_protocol

    return isinstance(location, str) and split_protocol(location)[0] not in (None, "")


def open_store(
    location: str | Path, *, cache_dir: str | Path | None = None, storage_options: Mapping[str, Any] | None = None
) -> Store:
    """The store at ``location``: a local folder, or a URL with a protocol for ``RemoteArtifactStore``.

    ``cache_dir`` (required for a URL) is where remote versions are staged and downloaded.
    """
    if not is_remote(location):
        return ArtifactStore(location)
    if cache_dir is None:
        raise ValueError(f"a remote artifact store ({location}) needs a local cache_dir")
    return RemoteArtifactStore(str(location), cache_dir=cache_dir, storage_options=storage_options)


def version_name_from_uri(uri: str) -> str:
    """The version name at the end of a version's URI or path (``.../versions/<name>``)."""
    return validate_version_name(PurePosixPath(uri.rstrip("/")).name)
