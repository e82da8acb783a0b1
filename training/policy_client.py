"""One client for every policy server: vLLM in production, ``training.policy_server`` in development.

Both speak the OpenAI HTTP API plus vLLM's LoRA endpoints, so the web app and the worker use
this class whichever is running::

    client = PolicyClient("http://127.0.0.1:8100")
    client.wait_ready()
    texts = client.chat([{"role": "user", "content": "Hello!"}], model="policy", n=2)
    client.load_lora_adapter("policy", "/path/to/new/adapter")   # hot swap, no restart

Every failure (connection refused, timeout, HTTP error status, a malformed answer) raises
:class:`PolicyServerError` with the URL, the status code and the server's own message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx


def clean_model_text(text: str) -> str:
    """A model's text as it can be stored and shown: without NUL characters, which a small byte-level
    model can sample and PostgreSQL's text fields refuse (a generation job once failed on one)."""
    return text.replace("\x00", "")


class PolicyServerError(Exception):
    """A policy server could not be reached or refused a request."""

    def __init__(self, message: str, *, url: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status_code = status_code


def _error_text(response: httpx.Response) -> str:
    """The server's error message: OpenAI's ``error.message``, FastAPI's ``detail``, or the raw body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:2000] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        for key in ("detail", "message"):
            if body.get(key):
                return str(body[key])
    return json.dumps(body)[:2000]


class PolicyClient:
    """Talks to an OpenAI-compatible policy server (vLLM or the built-in one) over HTTP."""

    def __init__(self, base_url: str, *, timeout: float = 60.0) -> None:
        """``base_url`` is the server's root, e.g. ``http://127.0.0.1:8100`` (a trailing ``/v1`` is accepted)."""
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r} must start with http:// or https://")
        if timeout <= 0:
            raise ValueError(f"timeout={timeout} must be > 0")
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ plumbing

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def _fail(self, path: str, exc: httpx.HTTPError, timeout: float | None = None) -> PolicyServerError:
        url = self._url(path)
        if isinstance(exc, httpx.TimeoutException):
            return PolicyServerError(
                f"policy server at {url} timed out after {timeout or self.timeout:g} s ({type(exc).__name__})", url=url
            )
        if isinstance(exc, httpx.ConnectError):
            return PolicyServerError(f"cannot connect to the policy server at {url}: {exc}", url=url)
        return PolicyServerError(f"request to the policy server at {url} failed: {exc!r}", url=url)

    def _check(self, path: str, response: httpx.Response) -> None:
        if response.status_code >= 400:
            raise PolicyServerError(
                f"policy server at {self._url(path)} answered {response.status_code}: {_error_text(response)}",
                url=self._url(path),
                status_code=response.status_code,
            )

    def _request(
        self, method: str, path: str, *, json_body: dict[str, Any] | None = None, timeout: float | None = None
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=json_body, timeout=timeout or self.timeout)
        except httpx.HTTPError as exc:
            raise self._fail(path, exc, timeout) from exc
        self._check(path, response)
        return response

    def _json(self, response: httpx.Response, path: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            raise PolicyServerError(
                f"policy server at {self._url(path)} sent a body that is not JSON: {response.text[:200]!r}",
                url=self._url(path),
                status_code=response.status_code,
            ) from exc
        if not isinstance(body, dict):
            raise PolicyServerError(
                f"policy server at {self._url(path)} sent {type(body).__name__}, not a JSON object",
                url=self._url(path),
                status_code=response.status_code,
            )
        return body

    @staticmethod
    def _sampling(
        messages: list[dict[str, str]],
        *,
        model: str,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if seed is not None:
            body["seed"] = seed
        return body

    # ------------------------------------------------------------------------------- the API

    def models(self) -> list[dict[str, Any]]:
        """The ``data`` list of ``GET /v1/models``: the base model and any LoRA adapters."""
        path = "/v1/models"
        data = self._json(self._request("GET", path), path).get("data")
        if not isinstance(data, list):
            raise PolicyServerError(f"policy server at {self._url(path)} sent no 'data' list", url=self._url(path))
        return data

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll ``/v1/models`` until the server answers; raise :class:`PolicyServerError` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PolicyServerError(
                    f"policy server at {self.base_url} not ready after {timeout:g} s; last error: {last_error}",
                    url=self._url("/v1/models"),
                )
            try:
                self._request("GET", "/v1/models", timeout=max(0.1, min(5.0, remaining)))
                return
            except PolicyServerError as exc:
                last_error = str(exc)
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        model: str,
        n: int = 1,
        max_tokens: int = 64,
        temperature: float = 0.8,
        top_p: float = 0.95,
        seed: int | None = None,
    ) -> list[str]:
        """Generate ``n`` replies to ``messages`` with ``model`` (base name or adapter name)."""
        path = "/v1/chat/completions"
        body = self._sampling(
            messages, model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed
        )
        body["n"] = n
        answer = self._json(self._request("POST", path, json_body=body), path)
        try:
            choices = sorted(answer["choices"], key=lambda c: c.get("index", 0))
            return [clean_model_text(choice["message"]["content"] or "") for choice in choices]
        except (KeyError, TypeError) as exc:
            raise PolicyServerError(
                f"policy server at {self._url(path)} sent a malformed chat completion: {str(answer)[:300]}",
                url=self._url(path),
            ) from exc

    def chat_stream(
        self,
        messages: list[dict[str, str]],
        *,
        model: str,
        max_tokens: int = 64,
        temperature: float = 0.8,
        top_p: float = 0.95,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Stream one reply to ``messages``: yield text pieces as the server sends them."""
        path = "/v1/chat/completions"
        body = self._sampling(
            messages, model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed
        )
        body["stream"] = True
        try:
            with self._http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(path, response)
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments (": ping"), "event:" lines
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        return
                    delta = clean_model_text(self._stream_delta(path, data))
                    if delta:
                        yield delta
        except httpx.HTTPError as exc:
            raise self._fail(path, exc) from exc
        raise PolicyServerError(
            f"policy server at {self._url(path)} ended the stream without 'data: [DONE]' (answer cut short)",
            url=self._url(path),
        )

    def _stream_delta(self, path: str, data: str) -> str:
        """The text of choice 0 in one streamed chunk; raise on an error event."""
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise PolicyServerError(
                f"policy server at {self._url(path)} streamed a line that is not JSON: {data[:200]!r}",
                url=self._url(path),
            ) from exc
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            code = error.get("code") if isinstance(error, dict) else None
            raise PolicyServerError(
                f"policy server at {self._url(path)} failed while streaming: {message}",
                url=self._url(path),
                status_code=code if isinstance(code, int) else None,
            )
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) == 0:
                return (choice.get("delta") or {}).get("content") or ""
        return ""

    def load_lora_adapter(self, name: str, path: str, *, load_inplace: bool = True) -> None:
        """Load the LoRA adapter folder ``path`` under ``name``; with ``load_inplace``, replace an existing one."""
        body = {"lora_name": name, "lora_path": str(path), "load_inplace": load_inplace}
        self._request("POST", "/v1/load_lora_adapter", json_body=body)

    def unload_lora_adapter(self, name: str) -> None:
        """Remove the LoRA adapter ``name`` from the server."""
        self._request("POST", "/v1/unload_lora_adapter", json_body={"lora_name": name})

    def adapter_root(self, name: str) -> str | None:
        """The folder the server loaded model ``name`` from (``root`` in ``/v1/models``), or None if absent."""
        for entry in self.models():
            if entry.get("id") == name:
                return entry.get("root")
        return None
