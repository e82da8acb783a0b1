"""The web app's and the worker's one way to reach the policy server (vLLM or the built-in one)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

from django.conf import settings

from training.policy_client import PolicyClient, PolicyServerError
from webapp.runs.artifacts import version_local_path
from webapp.runs.models import ModelVersion

__all__ = [
    "PolicyServerError",
    "adapter_load",
    "adapters_retire",
    "generate",
    "policy_client",
    "stream",
]


def policy_client() -> PolicyClient:
    """The process's client for the configured server (its connection pool is shared by threads)."""
    return _client(settings.POLICY_SERVER_URL, float(settings.POLICY_TIMEOUT_S))


@lru_cache(maxsize=8)
def _client(url: str, timeout: float) -> PolicyClient:
    return PolicyClient(url, timeout=timeout)


def generate(
    messages: list[dict[str, str]],
    *,
    n: int,
    version: ModelVersion,
    temperature: float = 0.8,
    top_p: float = 0.95,
    max_tokens: int | None = None,
) -> list[str]:
    """`n` sampled answers from policy `version` (`max_tokens`: POLICY_MAX_TOKENS by default)."""
    return policy_client().chat(
        messages,
        model=version.adapter_name,
        n=n,
        max_tokens=max_tokens or settings.POLICY_MAX_TOKENS,
        temperature=temperature,
        top_p=top_p,
    )


def stream(messages: list[dict[str, str]], *, version: ModelVersion) -> Iterator[str]:
    """Policy `version`'s answer, as text deltas while it is written."""
    return policy_client().chat_stream(messages, model=version.adapter_name, max_tokens=settings.POLICY_MAX_TOKENS)


def adapter_load(version: ModelVersion) -> None:
    """Make the policy server serve `version` under its own name (a no-op when it already does)."""
    client = policy_client()
    path = version_local_path(version)  # a remote version is downloaded (once) for the server
    if client.adapter_root(version.adapter_name) == path:
        return
    client.load_lora_adapter(version.adapter_name, path, load_inplace=True)


def adapters_retire(*, keep: list[ModelVersion]) -> list[str]:
    """Unload every version adapter but those in `keep`; return the names unloaded.

    The previous version is normally kept: answers it is still writing finish, and a rollback to
    it is instant.
    """
    client = policy_client()
    prefix = f"{settings.POLICY_MODEL_NAME}-v"
    keep_names = {v.adapter_name for v in keep}
    gone = []
    for entry in client.models():
        name = str(entry.get("id", ""))
        if name.startswith(prefix) and name not in keep_names:
            client.unload_lora_adapter(name)
            gone.append(name)
    return gone
