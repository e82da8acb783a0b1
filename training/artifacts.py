"""A local, append-only store of policy versions.

Layout::

    <root>/versions/<name>/            one finished version (e.g. adapter files + meta.json)
    <root>/versions/.tmp-<name>-<hex>/ a version being written; never read by anyone

A version is written into a temporary folder and renamed to its final name only when the
writer finished without an exception. ``os.rename`` is atomic on one filesystem, and the
temporary folder lives next to the final one, so a reader (the policy server, the web app)
sees either no version or a complete one, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
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

    def write_meta(self, folder: str | Path, meta: VersionMeta) -> Path:
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
