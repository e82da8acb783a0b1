"""The artifact store this deployment uses, and local paths of the versions it holds."""

from __future__ import annotations

from django.conf import settings

from training.artifacts import Store, is_remote, open_store, version_name_from_uri
from webapp.runs.models import ModelVersion, RewardModel


def artifact_store() -> Store:
    """ARTIFACT_STORE_URL's store (S3 and other fsspec URLs), or the local ARTIFACT_DIR."""
    return open_store(
        settings.ARTIFACT_STORE_URL or settings.ARTIFACT_DIR,
        cache_dir=settings.ARTIFACT_CACHE_DIR,
        storage_options=settings.ARTIFACT_STORE_OPTIONS,
    )


def local_path(artifact_path: str) -> str:
    """A local folder with the files at `artifact_path`: the folder itself, or a checked copy of a
    remote version."""
    if not is_remote(artifact_path):
        return artifact_path
    store = artifact_store()
    name = version_name_from_uri(artifact_path)
    if store.version_uri(name) != artifact_path.rstrip("/"):
        raise ValueError(f"{artifact_path} is outside ARTIFACT_STORE_URL ({store})")
    return str(store.local_path(name))


def version_local_path(version: ModelVersion) -> str:
    """A local folder with policy `version`'s adapter."""
    return local_path(version.artifact_path)


def reward_model_local_path(reward_model: RewardModel) -> str:
    """A local folder with `reward_model`'s members."""
    return local_path(reward_model.artifact_path)
