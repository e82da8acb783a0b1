"""The web app's and the worker's one way to reach the policy servers (vLLM or the built-in one).

One or several replicas of the policy serve it (`POLICY_SERVER_URLS`; by default the one at
`POLICY_SERVER_URL`):

- a version's adapter is loaded on every replica, all or nothing (`adapter_load`): if one cannot
  load it, the error names that replica and why, and a promotion stops before anything flips;
- requests go to `POLICY_PROXY_URL` (a reverse proxy with health checks) where there is one, and
  otherwise are spread over the replicas, each request to the next in turn, skipping one that
  could not be reached for `REPLICA_RETRY_S`;
- a replica that (re)starts without the versions' adapters catches up before it answers: the
  `policy_sync` command loads the serving adapter on every replica, and a request that finds its
  version missing on a replica (a 404 for its name) loads it there and asks again, as a request
  for an older version (a chat an admin pinned to it) does anywhere; behind a proxy, which does not
  say which replica answered, it loads it on every replica that lacks it.

`caddyfile` writes the proxy's configuration (`manage.py policy_proxy_config`).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import TypeVar

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
    "replicas",
    "stream",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")
REPLICA_RETRY_S = 10.0  # a replica that could not be reached is skipped this long

_turn = itertools.count()
_down: dict[str, float] = {}  # replica url -> when to try it again (time.monotonic)
_down_lock = threading.Lock()


@lru_cache(maxsize=16)
def _client(url: str, timeout: float) -> PolicyClient:
    return PolicyClient(url, timeout=timeout)


def replicas() -> list[PolicyClient]:
    """A client for each policy server replica (their connection pools are shared by threads)."""
    urls = settings.POLICY_SERVER_URLS or [settings.POLICY_SERVER_URL]
    return [_client(url, float(settings.POLICY_TIMEOUT_S)) for url in urls]


def policy_client() -> PolicyClient:
    """The client one request goes to: the proxy, or the next live replica."""
    return _traffic()[0]


def _traffic() -> list[PolicyClient]:
    """The clients to try for one request, in order: the proxy alone; or the replicas from the next
    in turn, those that could not be reached lately last (they are tried when all others fail)."""
    if settings.POLICY_PROXY_URL:
        return [_client(settings.POLICY_PROXY_URL, float(settings.POLICY_TIMEOUT_S))]
    clients = replicas()
    first = next(_turn) % len(clients)
    ordered = clients[first:] + clients[:first]
    now = time.monotonic()
    with _down_lock:
        return sorted(ordered, key=lambda c: _down.get(c.base_url, 0.0) > now)


def _unreachable(exc: PolicyServerError) -> bool:
    return exc.status_code is None  # no HTTP answer: refused, reset or timed out


def _mark(client: PolicyClient, *, down: bool) -> None:
    with _down_lock:
        if down:
            _down[client.base_url] = time.monotonic() + REPLICA_RETRY_S
        else:
            _down.pop(client.base_url, None)


def _missing(exc: PolicyServerError) -> bool:
    return exc.status_code == 404  # the server does not know the model name: its adapter is not there


def _on_a_replica(version: ModelVersion, call: Callable[[PolicyClient], T]) -> T:
    """`call` on the first replica that answers (a replica missing `version`'s adapter loads it
    first); the last error when none does."""
    last: PolicyServerError | None = None
    for client in _traffic():
        try:
            try:
                result = call(client)
            except PolicyServerError as exc:
                if not _missing(exc):
                    raise
                if settings.POLICY_PROXY_URL:  # the replica behind the proxy that answered is unknown
                    _load_where_missing(version)
                else:
                    _load_on(client, version)  # an older version, or a replica that started later
                result = call(client)
        except PolicyServerError as exc:
            if not _unreachable(exc):
                raise
            _mark(client, down=True)
            last = exc
            continue
        _mark(client, down=False)
        return result
    assert last is not None
    raise last


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
    return _on_a_replica(
        version,
        lambda client: client.chat(
            messages,
            model=version.adapter_name,
            n=n,
            max_tokens=max_tokens or settings.POLICY_MAX_TOKENS,
            temperature=temperature,
            top_p=top_p,
        ),
    )


def stream(messages: list[dict[str, str]], *, version: ModelVersion) -> Iterator[str]:
    """Policy `version`'s answer, as text deltas while it is written. The replica is chosen by its
    first delta: one that cannot be reached before it is skipped; after it, the answer stays there."""

    def started(client: PolicyClient) -> tuple[list[str], Iterator[str]]:
        deltas = client.chat_stream(messages, model=version.adapter_name, max_tokens=settings.POLICY_MAX_TOKENS)
        return list(itertools.islice(deltas, 1)), deltas

    first, rest = _on_a_replica(version, started)
    yield from first
    yield from rest


def _load_on(client: PolicyClient, version: ModelVersion) -> None:
    path = version_local_path(version)  # a remote version is downloaded (once) for the servers
    if client.adapter_root(version.adapter_name) != path:
        client.load_lora_adapter(version.adapter_name, path, load_inplace=True)


def _load_where_missing(version: ModelVersion) -> None:
    """Load `version` on every replica that can be reached (a no-op where it is loaded already)."""
    for client in replicas():
        try:
            _load_on(client, version)
        except PolicyServerError as exc:
            if not _unreachable(exc):
                raise


def caddyfile(listen: str, urls: list[str]) -> str:
    """A Caddy configuration that serves the replicas at `urls` behind one address, `listen` (e.g.
    ":8100"): round robin over the healthy ones (`GET /v1/models` each second), a replica that
    refuses a connection tried no more for 10 s, and a request it could not take sent to another."""
    upstreams = " ".join(url.rstrip("/") for url in urls)  # Caddy takes scheme://host:port upstreams
    return (
        "{\n\tadmin off\n\tauto_https off\n}\n\n"
        f"http://{listen.removeprefix('http://')} {{\n"
        f"\treverse_proxy {upstreams} {{\n"
        "\t\tlb_policy round_robin\n\t\tlb_try_duration 5s\n\t\tfail_duration 10s\n"
        "\t\thealth_uri /v1/models\n\t\thealth_interval 1s\n\t\thealth_timeout 2s\n"
        "\t\tflush_interval -1\n"  # answers stream: pass each event on as it comes
        "\t}\n}\n"
    )


def adapter_load(version: ModelVersion, *, only: list[PolicyClient] | None = None) -> None:
    """Make every replica (or those in `only`) serve `version` under its own name (a no-op where
    one already does). All or nothing for the caller: PolicyServerError names each replica that
    could not, and why; a promotion then flips nothing."""
    clients = only if only is not None else replicas()
    failed = []
    for client in clients:
        try:
            _load_on(client, version)
        except PolicyServerError as exc:
            failed.append(f"{client.base_url}: {exc}")
    if failed:
        raise PolicyServerError(
            f"{version} could not be loaded on {len(failed)} of {len(clients)} policy server"
            f"{'s' if len(clients) > 1 else ''}, so none serves it: " + "; ".join(failed),
            url=",".join(c.base_url for c in clients),
        )


def adapters_retire(*, keep: list[ModelVersion]) -> list[str]:
    """Unload every version adapter but those in `keep` from every replica; return the names
    unloaded (a replica that cannot be reached keeps its adapters: they cost memory only).

    The previous version is normally kept: answers it is still writing finish, and a rollback to
    it is instant.
    """
    prefix = f"{settings.POLICY_MODEL_NAME}-v"
    keep_names = {v.adapter_name for v in keep}
    gone = []
    for client in replicas():
        try:
            for entry in client.models():
                name = str(entry.get("id", ""))
                if name.startswith(prefix) and name not in keep_names:
                    client.unload_lora_adapter(name)
                    gone.append(name)
        except PolicyServerError as exc:
            logger.warning("could not retire old adapters on %s: %s", client.base_url, exc)
    return gone
