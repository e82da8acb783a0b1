"""One interface for sampling answers from a policy version, over HTTP or in-process.

The web app shows answers from the policy server; training and evaluation jobs often want to
sample from a version directly. Both go through :class:`Generator`::

    generator = HttpGenerator(PolicyClient("http://127.0.0.1:8100"), "policy", version="v3")
    generator = LocalGenerator(base_model_path, adapter_path, version="v3")
    rows = generator.generate([[{"role": "user", "content": "Hi!"}]], n=2, sampling=SamplingConfig())
    rows[0][1].text, rows[0][1].version  # second answer to the first prompt, and "v3"

* :class:`HttpGenerator` asks an OpenAI-compatible policy server (vLLM in production,
  ``training.policy_server`` in development) through :class:`training.policy_client.PolicyClient`,
  one chat request per prompt (with ``n`` choices), a few requests at a time.
* :class:`LocalGenerator` runs transformers in this process: prompts are rendered with the chat
  template, left padded and generated in batches, ``n`` sequences each.

Every :class:`Generation` records the version name the generator was built with, so answers
stay attributable to the policy that wrote them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.kto import check_prompt
from training.policy_client import clean_model_text

if TYPE_CHECKING:
    from training.policy_client import PolicyClient


@dataclass
class SamplingConfig:
    """How to sample answers; the same meaning for every backend (as in the OpenAI API)."""

    max_tokens: int = field(default=64, metadata={"help": "Longest answer, in tokens."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature; 0 = greedy decoding."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass, in (0, 1]."})
    seed: int | None = field(
        default=None, metadata={"help": "Seed for reproducible sampling (per request over HTTP: seed + prompt index)."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens!r} must be a positive integer")
        if isinstance(self.temperature, bool) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature={self.temperature!r} must be a number >= 0")
        if isinstance(self.top_p, bool) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p!r} must be in (0, 1]")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed={self.seed!r} must be None or an integer")

    @property
    def greedy(self) -> bool:
        """Temperature 0 means greedy decoding."""
        return self.temperature == 0.0


@dataclass(frozen=True)
class Generation:
    """One sampled answer."""

    text: str = field(metadata={"help": "The answer, special tokens removed."})
    version: str = field(metadata={"help": "Name of the policy version that wrote it (given to the generator)."})
    finish_reason: str | None = field(
        default=None,
        metadata={
            "help": "'stop' (ended by itself), 'length' (cut at max_tokens), or None if the backend did not say."
        },
    )


class Generator(ABC):
    """Samples ``n`` answers to each of a list of chat prompts from one policy version."""

    version: str

    def generate(
        self, prompts: Sequence[list[dict[str, str]]], *, n: int = 1, sampling: SamplingConfig | None = None
    ) -> list[list[Generation]]:
        """``n`` answers to each prompt (chat messages ending with the user's turn), in prompt order.

        Greedy decoding (``temperature=0``) gives one answer, so it needs ``n=1``.
        """
        checked = [check_prompt(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} must be a positive integer")
        sampling = sampling or SamplingConfig()
        if sampling.greedy and n > 1:
            raise ValueError(f"n={n} needs sampling (temperature > 0): greedy decoding gives one answer")
        if not checked:
            return []
        rows = self._generate(checked, n, sampling)
        if len(rows) != len(checked) or any(len(row) != n for row in rows):
            raise RuntimeError(f"{type(self).__name__} returned {[len(r) for r in rows]} answers, expected {n} each")
        return rows

    @abstractmethod
    def _generate(
        self, prompts: list[list[dict[str, str]]], n: int, sampling: SamplingConfig
    ) -> list[list[Generation]]:
        """Backend work: ``prompts`` are checked and non-empty, ``n`` >= 1."""


def _check_version(version: str) -> str:
    if not isinstance(version, str) or not version.strip():
        raise ValueError(f"version={version!r} must be a non-empty string")
    return version


class HttpGenerator(Generator):
    """Samples from a policy server (vLLM or ``training.policy_server``) over its OpenAI API."""

    def __init__(
        self, client: PolicyClient, model_name: str, *, version: str | None = None, max_concurrency: int = 4
    ) -> None:
        """Ask ``client``'s server for ``model_name`` (the base name or a LoRA adapter's name).

        ``version`` (default: ``model_name``) is recorded on every answer; ``max_concurrency``
        requests run at once (the built-in server queues them, vLLM batches them).
        """
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name={model_name!r} must be a non-empty string")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency={max_concurrency!r} must be a positive integer")
        self.client = client
        self.model_name = model_name
        self.version = _check_version(model_name if version is None else version)
        self.max_concurrency = max_concurrency

    def _generate(
        self, prompts: list[list[dict[str, str]]], n: int, sampling: SamplingConfig
    ) -> list[list[Generation]]:
        def one(index: int) -> list[Generation]:
            texts = self.client.chat(
                prompts[index],
                model=self.model_name,
                n=n,
                max_tokens=sampling.max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=None if sampling.seed is None else sampling.seed + index,
            )
            # PolicyClient.chat returns the texts only, so the finish reason is not known here.
            return [Generation(text=text, version=self.version) for text in texts]

        if len(prompts) == 1 or self.max_concurrency == 1:
            return [one(i) for i in range(len(prompts))]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as pool:
            return list(pool.map(one, range(len(prompts))))


def eos_token_ids(model, tokenizer, *, what: str = "the model") -> list[int]:
    """Every token id that ends an answer: the generation config's (one or several) and the
    tokenizer's. Raises ValueError when `what` defines none."""
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.append(configured)
    elif configured:
        ids.extend(configured)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError(f"{what} defines no end-of-sequence token")
    return ids


class LocalGenerator(Generator):
    """Samples in this process with transformers: the base model plus an optional LoRA adapter."""

    def __init__(
        self,
        model_path: str | Path,
        adapter_path: str | Path | None = None,
        *,
        version: str | None = None,
        batch_size: int = 8,
        device: str | None = None,
    ) -> None:
        """Load the model at ``model_path`` (a ``save_pretrained`` folder), merging in ``adapter_path`` if given.

        ``version`` (default: the adapter's folder name, else the model's) is recorded on every
        answer. ``batch_size`` prompts are generated together (each with ``n`` sequences).
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
        default_version = Path(adapter_path if adapter_path is not None else model_path).name
        self.version = _check_version(default_version if version is None else version)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path), padding_side="left")
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer at {model_path} has no chat template")
        model: Any = AutoModelForCausalLM.from_pretrained(str(model_path))
        if adapter_path is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_path)).merge_and_unload()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model = model.to(self.device).eval()
        self.eos_token_ids = eos_token_ids(self.model, self.tokenizer)
        self.pad_token_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        )

    def _generate(
        self, prompts: list[list[dict[str, str]]], n: int, sampling: SamplingConfig
    ) -> list[list[Generation]]:
        import torch

        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        rows: list[list[Generation]] = []
        for start in range(0, len(prompts), self.batch_size):
            rows.extend(self._generate_batch(prompts[start : start + self.batch_size], n, sampling))
        return rows

    def _generate_batch(
        self, prompts: list[list[dict[str, str]]], n: int, sampling: SamplingConfig
    ) -> list[list[Generation]]:
        import torch

        texts = [self.tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "min_new_tokens": 0,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.pad_token_id,
            "num_return_sequences": n,
        }
        if sampling.greedy:
            kwargs.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        with torch.inference_mode():
            output = self.model.generate(**batch, **kwargs)  # (len(prompts) * n, prompt width + new tokens)
        new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
        rows: list[list[Generation]] = []
        for i in range(len(prompts)):
            row = []
            for tokens in new_tokens[i * n : (i + 1) * n]:
                end = next((p for p, t in enumerate(tokens) if t in self.eos_token_ids), None)
                kept = tokens if end is None else tokens[:end]
                text = clean_model_text(str(self.tokenizer.decode(kept, skip_special_tokens=True)))
                row.append(
                    Generation(text=text, version=self.version, finish_reason="stop" if end is not None else "length")
                )
            rows.append(row)
        return rows
