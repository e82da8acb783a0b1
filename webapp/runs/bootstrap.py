"""First-run set-up of the policy: the tiny base model (when it is the default) and version 1."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from django.conf import settings

from training.artifacts import VersionMeta
from training.dpo import DPOTrainConfig, create_initial_adapter
from training.tiny_model import build_tiny_policy
from webapp.runs.artifacts import artifact_store
from webapp.runs.models import ModelVersion
from webapp.runs.selectors import version_serving
from webapp.runs.services import version_promote, version_register

INITIAL_VERSION_NAME = "v1-initial"


def base_model_ensure() -> tuple[str, bool]:
    """Build the tiny policy at POLICY_BASE_MODEL if that is a missing local folder.

    A hub id or an existing folder is used as it is. Returns the path and whether it was built.
    """
    base = settings.POLICY_BASE_MODEL
    path = Path(base)
    looks_local = path.is_absolute() or base.startswith(".")
    if not looks_local or path.exists():
        return base, False
    path.parent.mkdir(parents=True, exist_ok=True)
    build_tiny_policy(path)
    return base, True


def initial_version_ensure() -> tuple[ModelVersion, bool]:
    """Serve version 1 (a freshly initialised LoRA adapter: exactly the base model) if none serves."""
    serving = version_serving()
    if serving is not None:
        return serving, False
    newest = ModelVersion.objects.order_by("-number").first()
    if newest is not None:  # versions exist but none serves: serve the newest
        return version_promote(version=newest), False
    store = artifact_store()
    config = DPOTrainConfig()
    if not store.exists(INITIAL_VERSION_NAME):
        with store.write_version(INITIAL_VERSION_NAME) as folder:
            create_initial_adapter(settings.POLICY_BASE_MODEL, folder, config)
            store.write_meta(
                folder,
                VersionMeta(
                    name=INITIAL_VERSION_NAME,
                    parent=None,
                    kind="lora",
                    base_model=settings.POLICY_BASE_MODEL,
                    config=asdict(config),
                ),
            )
    version = version_register(
        artifact_path=store.version_uri(INITIAL_VERSION_NAME),
        base_model=settings.POLICY_BASE_MODEL,
        parent=None,
        config=asdict(config),
    )
    return version_promote(version=version), True
