"""A small OpenAI-compatible policy server built on transformers, for development.

Production serves the policy with vLLM; this server answers the same HTTP API with the same
shapes, so the web app and the worker talk to both through one client
(:class:`training.policy_client.PolicyClient`). It runs the base model from a folder written by
``save_pretrained`` and any number of named peft LoRA adapters on top of it::

    python -m training.policy_server --model PATH --served-model-name base \\
        --lora-modules policy=ADAPTER_PATH --port 8100

Endpoints (as in vLLM's OpenAI server):

* ``GET /health``: 200 once the model is loaded;
* ``GET /v1/models``: the base model and one entry per adapter (``root`` = adapter path,
  ``parent`` = base model name);
* ``POST /v1/chat/completions`` and ``POST /v1/completions``: ``n``, ``max_tokens``,
  ``temperature`` (0 = greedy), ``top_p``, ``seed`` and ``stream`` (server-sent events ending with
  ``data: [DONE]``);
* ``POST /v1/load_lora_adapter`` (``lora_name``, ``lora_path``, ``load_inplace``) and
  ``POST /v1/unload_lora_adapter`` (``lora_name``): adapters change with no restart.

Generation and adapter changes run one at a time under one lock, so a request sees an adapter
either wholly before or wholly after a swap. Errors come back as OpenAI-style JSON
``{"error": {"message", "type", "param", "code"}}``: 4xx for bad input, 500 only for a fault
of the server itself.
"""

from __future__ import annotations

import argparse
import itertools
import json
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from training.generation import eos_token_ids

ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass
class PolicyServerConfig:
    """How to run the built-in policy server."""

    model: str = field(metadata={"help": "Folder of the base model (written by save_pretrained)."})
    served_model_name: str | None = field(
        default=None, metadata={"help": "Name of the base model in the API; defaults to the model path, as in vLLM."}
    )
    host: str = field(default="127.0.0.1", metadata={"help": "Interface to listen on."})
    port: int = field(default=8100, metadata={"help": "TCP port to listen on."})
    lora_modules: dict[str, str] = field(
        default_factory=dict, metadata={"help": "LoRA adapters to load at start, as name -> adapter folder."}
    )
    max_model_len: int | None = field(
        default=None,
        metadata={"help": "Longest prompt + completion, in tokens; defaults to the model's max_position_embeddings."},
    )
    max_n: int = field(default=16, metadata={"help": "Largest number of choices (n) one request may ask for."})
    num_threads: int = field(default=1, metadata={"help": "Torch CPU threads used for generation."})
    log_level: str = field(default="info", metadata={"help": "Uvicorn log level."})

    def __post_init__(self) -> None:
        if not Path(self.model).is_dir():
            raise ValueError(f"model={self.model!r} is not a folder")
        if self.served_model_name is not None and not self.served_model_name.strip():
            raise ValueError(f"served_model_name={self.served_model_name!r} must not be blank")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} must be in 0..65535")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len={self.max_model_len} must be >= 2")
        if self.max_n < 1:
            raise ValueError(f"max_n={self.max_n} must be >= 1")
        if self.num_threads < 1:
            raise ValueError(f"num_threads={self.num_threads} must be >= 1")
        for name in self.lora_modules:
            if not name.strip() or name == self.model_name:
                raise ValueError(f"LoRA module name {name!r} must be non-blank and differ from the base model name")

    @property
    def model_name(self) -> str:
        """The name under which the base model is served."""
        return self.served_model_name or self.model


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style JSON error with a 4xx status."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param

    @property
    def error_type(self) -> str:
        """OpenAI's name for the error class of this status."""
        return {404: "NotFoundError"}.get(self.status, "BadRequestError")


def error_response(message: str, *, status: int, error_type: str, param: str | None = None) -> JSONResponse:
    """An OpenAI-style error body."""
    return JSONResponse(
        {"error": {"message": message, "type": error_type, "param": param, "code": status}}, status_code=status
    )


@dataclass
class SamplingParams:
    """Validated generation settings of one request."""

    n: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None

    @property
    def greedy(self) -> bool:
        """Temperature 0 means greedy decoding, as in vLLM."""
        return self.temperature == 0.0


@dataclass
class Choice:
    """One generated completion."""

    text: str
    finish_reason: str
    completion_tokens: int


@dataclass
class StreamEvent:
    """A piece of a streamed completion: new text of choice ``index``, or its end."""

    index: int
    delta: str
    finish_reason: str | None = None


@dataclass
class _Adapter:
    """A served LoRA adapter: its public name, its folder, and its name inside the peft model."""

    name: str
    path: str
    internal_name: str


class _TokenQueueStreamer:
    """Receives the tokens of ``generate`` step by step and hands them to another thread.

    ``generate`` first passes the prompt, which is skipped; each later call holds one new token
    per sequence of the batch.
    """

    def __init__(self, sink: queue.Queue[tuple[str, Any]]) -> None:
        self._sink = sink
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self._sink.put(("tokens", value.reshape(-1).tolist()))

    def end(self) -> None:
        """Nothing to do: the generating thread reports the end itself."""


class _IncrementalDecoder:
    """Turns a growing list of token ids into text deltas whose concatenation is the full decode.

    A delta is held back while the text ends in an incomplete UTF-8 sequence (byte-level BPE can
    split a character across tokens).
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._emitted = ""

    def push(self, token_id: int) -> str:
        """Add a token; return the newly complete text (possibly empty)."""
        self._ids.append(token_id)
        return self._delta(final=False)

    def flush(self) -> str:
        """Return whatever text is still held back."""
        return self._delta(final=True)

    def _delta(self, *, final: bool) -> str:
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if (not final and text.endswith("\ufffd")) or not text.startswith(self._emitted):
            return ""
        delta = text[len(self._emitted) :]
        self._emitted = text
        return delta


class _StopOnEvent:
    """A stopping criterion that ends generation once an event is set (client went away)."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self._event.is_set(), dtype=torch.bool, device=input_ids.device)


class PolicyEngine:
    """The model, its tokenizer and its LoRA adapters, behind one lock.

    Every generation and every adapter change holds ``self._lock`` from start to end, so the
    active adapter cannot change under a running generation.
    """

    def __init__(self, config: PolicyServerConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        torch.set_num_threads(config.num_threads)
        self.tokenizer = AutoTokenizer.from_pretrained(config.model)
        self.base_model = AutoModelForCausalLM.from_pretrained(config.model)
        self.base_model.eval()
        self.peft_model: Any = None  # a peft.PeftModel once the first adapter is loaded
        # Replaced by a new dict on every change (under the lock), so readers need no lock.
        self.adapters: dict[str, _Adapter] = {}
        self.created = int(time.time())
        self.max_model_len = config.max_model_len or int(
            getattr(self.base_model.config, "max_position_embeddings", 2048)
        )
        self.eos_token_ids = eos_token_ids(self.base_model, self.tokenizer, what=f"model {self.config.model!r}")
        self._lock = threading.Lock()
        self._adapter_counter = itertools.count(1)
        for name, path in config.lora_modules.items():
            self.load_adapter(name, path)

    @property
    def model_name(self) -> str:
        """The name under which the base model is served."""
        return self.config.model_name

    # ----------------------------------------------------------------------------------- models

    def list_models(self) -> list[dict[str, Any]]:
        """The ``data`` of ``GET /v1/models``: the base first, then each adapter."""
        base = self._model_card(self.model_name, root=self.config.model, parent=None)
        base["max_model_len"] = self.max_model_len
        adapters = self.adapters.values()  # a snapshot: the dict is replaced, never changed in place
        return [base] + [self._model_card(a.name, root=a.path, parent=self.model_name) for a in adapters]

    def _model_card(self, name: str, *, root: str, parent: str | None) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": self.created,
            "owned_by": "prefloop",
            "root": root,
            "parent": parent,
            "max_model_len": None,
        }

    def check_model(self, name: Any) -> str:
        """Return ``name`` if it is the base or a loaded adapter; else raise a 404."""
        if not isinstance(name, str) or not name:
            raise RequestError("'model' must be a non-empty string", param="model")
        if name != self.model_name and name not in self.adapters:
            known = ", ".join([self.model_name, *self.adapters])
            raise RequestError(f"The model `{name}` does not exist. Served models: {known}.", status=404, param="model")
        return name

    # --------------------------------------------------------------------------------- adapters

    def load_adapter(self, name: str, path: str, *, load_inplace: bool = False) -> None:
        """Load the LoRA adapter at ``path`` under ``name``.

        An existing name is replaced only with ``load_inplace``: the new weights are loaded under
        a fresh internal name first, then the public name is switched over and the old weights
        dropped, all under the lock, so no request sees a half-loaded adapter.
        """
        if not name or name == self.model_name:
            raise RequestError(f"lora_name={name!r} must be non-empty and differ from the base model name")
        if name in self.adapters and not load_inplace:
            raise RequestError(
                f"The lora adapter '{name}' has already been loaded. "
                "If you want to load the adapter in place, set 'load_inplace' to True."
            )
        adapter_path = str(Path(path).expanduser().resolve())
        weights = self._read_adapter(adapter_path)  # file reading stays outside the lock
        with self._lock:
            self._check_fits(weights)
            old = self.adapters.get(name)
            if old is not None and not load_inplace:  # checked again: another load may have won
                raise RequestError(f"The lora adapter '{name}' has already been loaded.")
            internal_name = f"adapter_{next(self._adapter_counter)}"
            try:
                self._attach(internal_name, adapter_path)
            except Exception as exc:  # validation passed, yet peft refused it: drop what it added
                if self.peft_model is not None and internal_name in self.peft_model.peft_config:
                    self.peft_model.delete_adapter(internal_name)
                raise RequestError(f"Loading lora adapter from {path!r} failed: {exc}") from exc
            self.adapters = {**self.adapters, name: _Adapter(name=name, path=path, internal_name=internal_name)}
            if old is not None:
                self.peft_model.set_adapter(internal_name)  # never leave a deleted adapter active
                self.peft_model.delete_adapter(old.internal_name)

    def unload_adapter(self, name: str) -> None:
        """Remove the adapter ``name``; the last one removed gives back the plain base model."""
        with self._lock:
            adapter = self.adapters.get(name)
            if adapter is None:
                raise RequestError(f"The lora adapter '{name}' cannot be found.", status=404)
            self.adapters = {key: value for key, value in self.adapters.items() if key != name}
            if self.adapters:
                self.peft_model.set_adapter(next(iter(self.adapters.values())).internal_name)
                self.peft_model.delete_adapter(adapter.internal_name)
            else:
                self.base_model = self.peft_model.unload()
                self.peft_model = None

    def _attach(self, internal_name: str, adapter_path: str) -> None:
        """Add an adapter to the peft model (creating it for the first adapter); lock held."""
        from peft import PeftModel

        if self.peft_model is None:
            self.peft_model = PeftModel.from_pretrained(self.base_model, adapter_path, adapter_name=internal_name)
            self.peft_model.eval()
        else:
            self.peft_model.load_adapter(adapter_path, adapter_name=internal_name)

    def _read_adapter(self, adapter_path: str) -> dict[str, torch.Tensor]:
        """Check that ``adapter_path`` holds a LoRA config and weights; return the weights."""
        from peft import LoraConfig
        from safetensors.torch import load_file

        folder = Path(adapter_path)
        if not (folder / "adapter_config.json").is_file():
            raise RequestError(f"Loading lora adapter failed: no adapter_config.json in {adapter_path!r}")
        try:
            LoraConfig.from_pretrained(adapter_path)
        except Exception as exc:  # a broken or non-LoRA config
            raise RequestError(f"Loading lora adapter failed: bad LoRA config in {adapter_path!r}: {exc}") from exc
        weight_file = next((folder / f for f in ADAPTER_WEIGHT_FILES if (folder / f).is_file()), None)
        if weight_file is None:
            raise RequestError(f"Loading lora adapter failed: no adapter weights in {adapter_path!r}")
        try:
            if weight_file.suffix == ".safetensors":
                weights = load_file(str(weight_file))
            else:
                weights = torch.load(weight_file, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise RequestError(f"Loading lora adapter failed: cannot read {weight_file.name}: {exc}") from exc
        if not weights:
            raise RequestError(f"Loading lora adapter failed: {weight_file.name} holds no weights")
        return weights

    def _check_fits(self, weights: dict[str, torch.Tensor]) -> None:
        """Check, before touching the model, that every LoRA weight belongs to a module of the base
        model with matching shapes, so a bad adapter cannot half-load. The caller holds the lock.
        """
        base_modules = dict(self.base_model.named_modules())
        for key, tensor in weights.items():
            self._check_lora_weight(key, tensor, base_modules)

    @staticmethod
    def _check_lora_weight(key: str, tensor: torch.Tensor, base_modules: dict[str, torch.nn.Module]) -> None:
        for marker in (".lora_A.", ".lora_B."):
            if marker in key:
                module_path, _ = key.split(marker, 1)
                break
        else:
            return  # other saved tensors (e.g. modules_to_save) are left to peft
        module_path = module_path.removeprefix("base_model.model.")
        module = base_modules.get(module_path)
        if module is None:
            raise RequestError(f"Loading lora adapter failed: weight {key!r} names no module of the base model")
        module = getattr(module, "base_layer", module)  # a module already wrapped by another adapter
        if isinstance(module, torch.nn.Linear):
            expected = module.in_features if marker == ".lora_A." else module.out_features
            actual = tensor.shape[1] if marker == ".lora_A." else tensor.shape[0]
            if tensor.dim() != 2 or actual != expected:
                raise RequestError(
                    f"Loading lora adapter failed: weight {key!r} has shape {tuple(tensor.shape)}, "
                    f"which does not fit {module_path} ({module.in_features} -> {module.out_features}); "
                    "was the adapter trained for another base model?"
                )

    # ------------------------------------------------------------------------------- generation

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The prompt text for ``messages`` from the tokenizer's chat template."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise RequestError(f"model {self.model_name!r} has no chat template; use /v1/completions")
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def encode(self, prompt: str, max_tokens: int) -> list[int]:
        """Token ids of ``prompt``; refuses prompts that leave no room for ``max_tokens``."""
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise RequestError("the prompt is empty", param="prompt")
        if len(ids) + max_tokens > self.max_model_len:
            raise RequestError(
                f"This model's maximum context length is {self.max_model_len} tokens; the request asks for "
                f"{len(ids)} prompt tokens plus max_tokens={max_tokens}."
            )
        return ids

    def generate(self, model: str, prompt_ids: list[int], params: SamplingParams) -> list[Choice]:
        """Generate ``params.n`` completions (blocking)."""
        with self._lock:
            sequences = self._run_generate(model, prompt_ids, params)
        rows = sequences[:, len(prompt_ids) :].tolist()
        choices = []
        for row in rows:
            tokens = self._until_eos(row)
            finish_reason = "stop" if len(tokens) < len(row) else "length"
            text = str(self.tokenizer.decode(tokens, skip_special_tokens=True))
            choices.append(Choice(text=text, finish_reason=finish_reason, completion_tokens=len(tokens)))
        return choices

    def generate_stream(
        self, model: str, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[StreamEvent]:
        """Generate ``params.n`` completions, yielding text deltas as tokens come (blocking iterator).

        Generation runs in its own thread under the lock; setting ``cancel`` stops it early.
        """
        tokens: queue.Queue[tuple[str, Any]] = queue.Queue()

        def run() -> None:
            try:
                with self._lock:
                    self._run_generate(model, prompt_ids, params, streamer=_TokenQueueStreamer(tokens), cancel=cancel)
                tokens.put(("end", None))
            except BaseException as exc:  # reported to the consumer, which re-raises it
                tokens.put(("error", exc))

        threading.Thread(target=run, name="policy-generate", daemon=True).start()
        decoders = [_IncrementalDecoder(self.tokenizer) for _ in range(params.n)]
        finished = [False] * params.n
        while True:
            kind, payload = tokens.get()
            if kind == "error":
                raise payload
            if kind == "end":
                for index in range(params.n):
                    if not finished[index]:
                        yield StreamEvent(index, decoders[index].flush(), "length")
                return
            for index, token_id in enumerate(payload):
                if finished[index]:
                    continue  # generate pads finished sequences until all are done
                if token_id in self.eos_token_ids:
                    finished[index] = True
                    yield StreamEvent(index, decoders[index].flush(), "stop")
                    continue
                delta = decoders[index].push(token_id)
                if delta:
                    yield StreamEvent(index, delta)

    def _run_generate(
        self,
        model: str,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        streamer: _TokenQueueStreamer | None = None,
        cancel: threading.Event | None = None,
    ) -> torch.Tensor:
        """Call ``generate`` with the adapter of ``model`` active; the caller holds the lock."""
        from transformers import StoppingCriteriaList

        if model != self.model_name and model not in self.adapters:
            raise RequestError(f"The model `{model}` does not exist.", status=404, param="model")
        if params.seed is not None:
            torch.manual_seed(params.seed)
        kwargs: dict[str, Any] = {
            "input_ids": torch.tensor([prompt_ids]),
            "attention_mask": torch.ones(1, len(prompt_ids), dtype=torch.long),
            "max_new_tokens": params.max_tokens,
            "min_new_tokens": 0,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.eos_token_ids[0],
            "streamer": streamer,
        }
        if cancel is not None:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_StopOnEvent(cancel)])
        if params.greedy:
            kwargs.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=0,
                num_return_sequences=params.n,
            )
        generator: Any = self.base_model if self.peft_model is None else self.peft_model
        with torch.inference_mode():
            if model == self.model_name:
                if self.peft_model is None:
                    return generator.generate(**kwargs)
                with self.peft_model.disable_adapter():
                    return generator.generate(**kwargs)
            self.peft_model.set_adapter(self.adapters[model].internal_name)
            return generator.generate(**kwargs)

    def _until_eos(self, tokens: list[int]) -> list[int]:
        for position, token in enumerate(tokens):
            if token in self.eos_token_ids:
                return tokens[:position]
        return tokens

    def default_sampling(self) -> dict[str, Any]:
        """Defaults from the model's generation_config.json, as vLLM uses them."""
        config = self.base_model.generation_config
        return {
            "temperature": config.temperature if config.temperature is not None else 1.0,
            "top_p": config.top_p if config.top_p is not None else 1.0,
            "max_tokens": config.max_new_tokens or 16,
        }


# ------------------------------------------------------------------------------ request parsing


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RequestError(f"The request body must be a JSON object, not {type(data).__name__}")
    return data


def _number(body: dict[str, Any], name: str, default: float, *, low: float, high: float, integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        kind = "an integer" if integer else "a number"
        raise RequestError(f"'{name}' must be {kind}, got {value!r}", param=name)
    if not low <= value <= high:
        raise RequestError(f"'{name}'={value!r} must be between {low} and {high}", param=name)
    return value if integer else float(value)


def _sampling_params(body: dict[str, Any], engine: PolicyEngine) -> SamplingParams:
    defaults = engine.default_sampling()
    max_tokens_key = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
    max_tokens = _number(
        {"max_tokens": body.get(max_tokens_key)},
        "max_tokens",
        min(defaults["max_tokens"], engine.max_model_len - 1),
        low=1,
        high=engine.max_model_len,
        integer=True,
    )
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(f"'seed' must be an integer, got {seed!r}", param="seed")
    top_p = _number(body, "top_p", defaults["top_p"], low=0.0, high=1.0)
    if top_p == 0.0:
        raise RequestError("'top_p' must be greater than 0", param="top_p")
    params = SamplingParams(
        n=_number(body, "n", 1, low=1, high=engine.config.max_n, integer=True),
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", defaults["temperature"], low=0.0, high=2.0),
        top_p=top_p,
        seed=seed,
    )
    if params.greedy and params.n > 1:  # as vLLM: n identical greedy answers are surely a mistake
        raise RequestError(f"n must be 1 when using greedy sampling, got {params.n}.", param="n")
    return params


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects", param="messages")
    cleaned = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(f"messages[{i}] must be an object with a string 'role'", param="messages")
        content = message.get("content")
        if isinstance(content, list):  # OpenAI content parts: only text parts are supported
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise RequestError(f"messages[{i}].content: only text parts are supported", param="messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}].content must be a string", param="messages")
        cleaned.append({"role": message["role"], "content": content})
    return cleaned


def _stream_flag(body: dict[str, Any]) -> bool:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"'stream' must be true or false, got {stream!r}", param="stream")
    return stream


def _string_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"'{name}' must be a non-empty string", param=name)
    return value


# ------------------------------------------------------------------------------------ the app


def build_app(engine: PolicyEngine) -> Starlette:
    """The Starlette application serving ``engine``."""

    async def health(request: Request) -> Response:
        return Response(status_code=200)

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": engine.list_models()})

    async def chat_completions(request: Request) -> Response:
        body = await _json_body(request)
        model = engine.check_model(body.get("model"))
        messages = _messages(body)
        params = _sampling_params(body, engine)
        stream = _stream_flag(body)
        prompt_ids = engine.encode(engine.chat_prompt(messages), params.max_tokens)
        return await _respond(model, prompt_ids, params, stream, chat=True)

    async def completions(request: Request) -> Response:
        body = await _json_body(request)
        model = engine.check_model(body.get("model"))
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise RequestError("'prompt' must be a non-empty string", param="prompt")
        params = _sampling_params(body, engine)
        stream = _stream_flag(body)
        return await _respond(model, engine.encode(prompt, params.max_tokens), params, stream, chat=False)

    async def _respond(
        model: str, prompt_ids: list[int], params: SamplingParams, stream: bool, *, chat: bool
    ) -> Response:
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        if stream:
            events = _sse(request_id, created, model, prompt_ids, params, chat=chat)
            return StreamingResponse(events, media_type="text/event-stream")
        choices = await run_in_threadpool(engine.generate, model, prompt_ids, params)
        completion_tokens = sum(c.completion_tokens for c in choices)
        return JSONResponse(
            {
                "id": request_id,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": i,
                        **({"message": {"role": "assistant", "content": c.text}} if chat else {"text": c.text}),
                        "logprobs": None,
                        "finish_reason": c.finish_reason,
                    }
                    for i, c in enumerate(choices)
                ],
                "usage": {
                    "prompt_tokens": len(prompt_ids),
                    "completion_tokens": completion_tokens,
                    "total_tokens": len(prompt_ids) + completion_tokens,
                },
            }
        )

    async def _sse(
        request_id: str, created: int, model: str, prompt_ids: list[int], params: SamplingParams, *, chat: bool
    ) -> AsyncIterator[str]:
        def chunk(index: int, text: str | None, finish_reason: str | None, role: bool = False) -> str:
            if chat:
                delta: dict[str, str] = {"role": "assistant", "content": ""} if role else {}
                if text:
                    delta["content"] = text
                choice: dict[str, Any] = {"index": index, "delta": delta}
            else:
                choice = {"index": index, "text": text or ""}
            choice.update(logprobs=None, finish_reason=finish_reason)
            payload = {
                "id": request_id,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
            }
            return f"data: {json.dumps(payload)}\n\n"

        cancel = threading.Event()
        try:
            if chat:
                for index in range(params.n):
                    yield chunk(index, None, None, role=True)
            events = engine.generate_stream(model, prompt_ids, params, cancel)
            async for event in iterate_in_threadpool(events):
                if event.delta or event.finish_reason:
                    yield chunk(event.index, event.delta, event.finish_reason)
        except RequestError as exc:  # e.g. the adapter was unloaded between check and generation
            body = {"error": {"message": exc.message, "type": exc.error_type, "param": exc.param, "code": exc.status}}
            yield f"data: {json.dumps(body)}\n\n"
        finally:
            cancel.set()
        yield "data: [DONE]\n\n"

    async def load_lora_adapter(request: Request) -> Response:
        body = await _json_body(request)
        name = _string_field(body, "lora_name")
        path = _string_field(body, "lora_path")
        load_inplace = body.get("load_inplace", False)
        if not isinstance(load_inplace, bool):
            raise RequestError(f"'load_inplace' must be true or false, got {load_inplace!r}", param="load_inplace")
        await run_in_threadpool(engine.load_adapter, name, path, load_inplace=load_inplace)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_lora_adapter(request: Request) -> Response:
        body = await _json_body(request)
        name = _string_field(body, "lora_name")
        await run_in_threadpool(engine.unload_adapter, name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    async def on_request_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
        return error_response(exc.message, status=exc.status, error_type=exc.error_type, param=exc.param)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error_type = "NotFoundError" if exc.status_code == 404 else "BadRequestError"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(message, status=exc.status_code, error_type=error_type)

    async def on_server_error(request: Request, exc: Exception) -> Response:
        return error_response(f"Internal server error: {exc!r}", status=500, error_type="InternalServerError")

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/load_lora_adapter", load_lora_adapter, methods=["POST"]),
        Route("/v1/unload_lora_adapter", unload_lora_adapter, methods=["POST"]),
    ]
    handlers = {RequestError: on_request_error, HTTPException: on_http_error, Exception: on_server_error}
    return Starlette(routes=routes, exception_handlers=handlers)


def serve(config: PolicyServerConfig) -> None:
    """Load the model and serve it until interrupted (blocking)."""
    import uvicorn

    engine = PolicyEngine(config)
    uvicorn.run(build_app(engine), host=config.host, port=config.port, log_level=config.log_level)


def policy_server_command(
    model_path: str | Path,
    *,
    port: int,
    host: str = "127.0.0.1",
    served_model_name: str = "base",
    lora_modules: Mapping[str, str | Path] | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The argv that starts this server (``python -m training.policy_server``), as
    ``training.vllm_server.vllm_command`` gives vLLM's; ``extra``: more flags (``--num-threads``)."""
    import sys

    argv = [sys.executable, "-m", "training.policy_server", "--model", str(model_path),
            "--served-model-name", served_model_name, "--host", host, "--port", str(port)]  # fmt: skip
    if lora_modules:
        argv += ["--lora-modules", *(f"{name}={path}" for name, path in lora_modules.items())]
    return [*argv, *extra]


def _lora_module(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--lora-modules entry {text!r} must look like NAME=PATH")
    return name, path


def parse_args(argv: list[str] | None = None) -> PolicyServerConfig:
    """The server config from command-line arguments (vLLM's flag names where they overlap)."""
    parser = argparse.ArgumentParser(description="Serve a causal LM and LoRA adapters over an OpenAI-compatible API.")
    parser.add_argument("--model", required=True, help="Folder of the base model.")
    parser.add_argument("--served-model-name", default=None, help="Name of the base model in the API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--lora-modules", nargs="*", type=_lora_module, default=[], metavar="NAME=PATH")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--max-n", type=int, default=16)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    return PolicyServerConfig(
        model=args.model,
        served_model_name=args.served_model_name,
        host=args.host,
        port=args.port,
        lora_modules=dict(args.lora_modules),
        max_model_len=args.max_model_len,
        max_n=args.max_n,
        num_threads=args.num_threads,
        log_level=args.log_level,
    )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: ``python -m training.policy_server --model PATH ...``."""
    serve(parse_args(argv))


if __name__ == "__main__":
    main()
