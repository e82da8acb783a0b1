"""The artifact store this deployment uses, and local paths of the versions it holds."""

from __future__ import annotations

from django.conf import settings

from training.artifacts import Store, is_remote, open_store, version_name_from_uri
from webapp.runs.models import ModelVersion


def artifact_store() -> Store:
    """ARTIFACT_STORE_URL's store (S3 and other fsspec URLs), or the local ARTIFACT_DIR."""
    return open_store(
        settings.ARTIFACT_STORE_URL or settings.ARTIFACT_DIR,
        cache_dir=settings.ARTIFACT_CACHE_DIR,
        storage_options=settings.ARTIFACT_STORE_OPTIONS,
    )


def version_local_path(version: ModelVersion) -> str:
    """A local folder with `version`'s files: its own folder, or a checked copy of a remote one."""
    if not is_remote(version.artifact_path):
        return version.artifact_path
    store = artifact_store()
    name = version_name_from_uri(version.artifact_path)
    if store.version_uri(name) != version.artifact_path.rstrip("/"):
        raise ValueError(f"{version} lives at {version.artifact_path}, outside ARTIFACT_STORE_URL ({store})")
    return str(store.local_path(name))
