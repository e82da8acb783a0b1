"""Build the tiny local base policy: a real Qwen2 causal LM made from a config.

The model is small enough to train on two CPU cores in seconds, yet it takes exactly the path a
real checkpoint takes: a byte-level BPE tokenizer trained in code, a ChatML chat template, and
``save_pretrained`` so that ``AutoModelForCausalLM.from_pretrained(path)``, TRL and vLLM load it
as they would load a hub model. A short pre-training pass on a small built-in chat corpus makes
it answer in word-like text and stop with ``<|im_end|>``, which keeps the demo readable.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A small corpus of question / answer pairs written for this module; the tiny model learns the
# chat format and some vocabulary from it. Nothing is downloaded.
_QA = [
    ("Hello!", "Hello! How can I help you today?"),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("How many legs does a cat have?", "A cat has four legs."),
    ("How many legs does a bird have?", "A bird has two legs."),
    ("What colour is the sky?", "The sky is blue on a clear day."),
    ("What colour is grass?", "Grass is green."),
    ("Tell me a fact about the sun.", "The sun is a star at the centre of our solar system."),
    ("Tell me a fact about the moon.", "The moon goes around the earth about once a month."),
    ("Give me a tip for sleeping well.", "Go to bed at the same time every night and keep the room dark."),
    ("Give me a tip for learning.", "Practise a little every day and test yourself often."),
    ("How do I boil an egg?", "Put the egg in boiling water for about nine minutes, then cool it."),
    ("How do I make tea?", "Pour hot water over a tea bag and wait three minutes."),
    ("What is two plus two?", "Two plus two is four."),
    ("What is three plus four?", "Three plus four is seven."),
    ("Can you write a short poem?", "The river runs, the morning sings, the light is soft on little things."),
    ("Say something kind.", "You are doing well, and your effort matters."),
    ("What is water made of?", "Water is made of hydrogen and oxygen."),
    ("Why do we need sleep?", "Sleep lets the body rest and helps the brain store memories."),
    ("What is a computer?", "A computer is a machine that follows instructions to work with data."),
    ("What is a language model?", "A language model predicts the next word from the words before it."),
    ("Thank you!", "You are welcome. Is there anything else I can do?"),
    ("Goodbye.", "Goodbye, and have a nice day!"),
]


@dataclass
class TinyPolicyConfig:
    """Sizes of the tiny policy. Head size 32 is one that vLLM's CPU attention supports."""

    vocab_size: int = field(default=512, metadata={"help": "BPE vocabulary size, special tokens included."})
    hidden_size: int = field(default=64, metadata={"help": "Width of the residual stream."})
    intermediate_size: int = field(default=128, metadata={"help": "Width of the MLP."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Transformer blocks."})
    num_attention_heads: int = field(default=2, metadata={"help": "Query heads (head size = hidden / heads)."})
    num_key_value_heads: int = field(default=1, metadata={"help": "Key/value heads (grouped-query attention)."})
    max_position_embeddings: int = field(default=1024, metadata={"help": "Longest context, in tokens."})
    pretrain_steps: int = field(default=300, metadata={"help": "Steps of pre-training on the built-in chat corpus."})
    model_vocab_size: int | None = field(
        default=None,
        metadata={"help": "The model's embedding rows (None: the tokenizer's); more give a real model's size."},
    )
    seed: int = field(default=0, metadata={"help": "Seed for the tokenizer corpus order and the weights."})

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be divisible by "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.vocab_size < 300:
            raise ValueError(f"vocab_size={self.vocab_size} is too small for a byte-level BPE (at least 300)")
        if self.pretrain_steps < 0:
            raise ValueError(f"pretrain_steps={self.pretrain_steps} must be >= 0")


def chat_corpus() -> list[list[dict[str, str]]]:
    """The built-in conversations, as chat messages."""
    return [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in _QA]


def pretraining_conversations(*, seed: int, n: int = 96, max_turns: int = 3) -> list[list[dict[str, str]]]:
    """Conversations of one to `max_turns` exchanges drawn from the corpus, so the tiny model
    learns to answer the last question of a multi-turn chat and to stop after it."""
    rng = random.Random(seed)
    conversations = chat_corpus()
    for _ in range(n - len(conversations)):
        turns = rng.randint(2, max_turns)
        conversation: list[dict[str, str]] = []
        for q, a in rng.sample(_QA, turns):
            conversation += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        conversations.append(conversation)
    return conversations


def _train_tokenizer(config: TinyPolicyConfig):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [f"{q}\n{a}\nuser\nassistant\nsystem" for q, a in _QA]
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_tiny_policy(out_dir: str | Path, config: TinyPolicyConfig | None = None) -> Path:
    """Build, pre-train and save the tiny policy to ``out_dir``; return the path.

    The folder is written under a temporary name and renamed when complete, so a crash never
    leaves a half-written model where a server would load it.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    config = config or TinyPolicyConfig()
    out = Path(out_dir)
    tmp = out.with_name(f".tmp-{out.name}-{random.getrandbits(32):08x}")
    tmp.mkdir(parents=True)

    torch.manual_seed(config.seed)
    tokenizer = _train_tokenizer(config)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model_config = Qwen2Config(
        vocab_size=max(len(tokenizer), config.model_vocab_size or 0),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=im_end,
        pad_token_id=pad,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(model_config)
    _pretrain(model, tokenizer, steps=config.pretrain_steps, seed=config.seed)

    model.generation_config = GenerationConfig(
        eos_token_id=im_end, pad_token_id=pad, do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=64
    )
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "prefloop_tiny_config.json").write_text(json.dumps(asdict(config), indent=2))
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it to rebuild the tiny policy")
    tmp.rename(out)
    return out


def _pretrain(model, tokenizer, *, steps: int, seed: int, batch_size: int = 8) -> None:
    """Next-token training on the chat corpus, loss on every real token (seconds on a CPU)."""
    import torch

    if steps == 0:
        return
    rows = [tokenizer.apply_chat_template(c, tokenize=False) for c in pretraining_conversations(seed=seed)]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    # A model this small is fastest on one thread; on a busy machine more threads only spin and
    # contend (measured here: 20x slower with two threads while another process used the CPU).
    torch.set_num_threads(1)
    try:
        _pretrain_steps(model, tokenizer, optimizer, rows, generator, steps=steps, batch_size=batch_size)
    finally:
        torch.set_num_threads(threads)
    model.eval()


def _pretrain_steps(model, tokenizer, optimizer, rows, generator, *, steps: int, batch_size: int) -> None:
    import torch

    for _ in range(steps):
        idx = torch.randint(0, len(rows), (batch_size,), generator=generator).tolist()
        batch = tokenizer([rows[i] for i in idx], return_tensors="pt", padding=True)  # padded to this batch only
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # (batch, seq)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Build the tiny local base policy.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--pretrain-steps", type=int, default=TinyPolicyConfig.pretrain_steps)
    args = parser.parse_args(argv)
    path = build_tiny_policy(args.out_dir, TinyPolicyConfig(pretrain_steps=args.pretrain_steps))
    print(path)


if __name__ == "__main__":
    main()
