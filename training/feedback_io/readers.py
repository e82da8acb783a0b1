"""Streaming readers: files of prompts or human feedback in, normalised records out.

``read_feedback(path, fmt)`` yields one :class:`ImportedItem` per item and one
:class:`BadRecord` per record that could not be read (with its 1-based line and why), and goes
on reading after a bad record. Nothing reads a whole file: line formats are read a line at a time
(plain or gzip, detected from the first bytes), and a JSON array (PandaLM) is decoded one
element at a time with ``json.JSONDecoder.raw_decode`` over chunks of 16,384 characters.

Formats (``FORMATS``):

``jsonl``
    Prefloop's own: one object a line, ``{"prompt": "..."}`` or ``{"messages": [...]}`` (a chat
    ending with a user turn; ``"prompt"`` may also be such a list), optional ``"id"``, optional
    ``"candidates": ["...", ...]`` (2 = a pairwise item, 3..9 = a ranking item, no labels), optional
    ``"gold"``: the known answer that makes it a gold item (``{"choice": "a"}``, or
    ``{"ranking": [[1], [0, 2]]}`` by answer position). Other keys go to ``meta``.
``csv``
    A header with a ``prompt`` column; optional ``id`` and ``system`` columns; other columns go to
    ``meta``. A quoted field may span lines; a record's line is the line it starts on.
``trl``
    TRL's preference data set, one object a line: ``{"prompt", "chosen", "rejected"}``, as plain
    text (the prompt a string, each answer a string) or conversational (the prompt a list of chat
    messages ending with the user's turn, each answer a list holding one assistant message). With
    no ``"prompt"`` (TRL's implicit prompt), ``chosen`` and ``rejected`` are whole conversations
    and their shared turns up to the last user turn are the prompt. A pairwise item with one label
    by ``"trl"``; A and B in an order fixed by a hash of the record, as for ``hh``. TRL's unpaired
    preference set (``{"prompt", "completion", "label"}``, ``label`` true for a good answer, plain
    or conversational, what KTO trains on) is read from the same file: a thumbs item, one answer
    with one ``"up"`` or ``"down"`` label by ``"trl"``.
``hh``
    Anthropic HH-RLHF (``{"chosen": transcript, "rejected": transcript}``). The context is the
    longest shared part of the two transcripts that ends before an ``Assistant:`` marker and with
    a ``Human:`` turn; each reply is the rest of its transcript. The two replies become A and B in
    an order fixed by a hash of the two transcripts (so the chosen one is A about half the time),
    with one pairwise label by ``"hh-rlhf"`` (strength None). Consecutive turns of one speaker (a
    few transcripts have them) are joined with a blank line.
``oasst``
    Open-Assistant message trees, one a line. Every message whose replies include two or more
    ranked replies (``rank`` not null; deleted replies ignored) whose role is ``assistant`` is one
    ranking item: context = the path from the root prompt to that message (prompter -> user,
    assistant -> assistant), candidates = the ranked replies in file order with their ranks, one
    ranking label by ``"oasst"`` (equal ranks = one group). Unranked replies are left out (their
    number is in ``meta``). A ranked group of prompter replies would not be a set of answers; it is
    skipped (the Open-Assistant export has none: only assistant replies carry a rank).
``pandalm``
    PandaLM's test set, a JSON array (JSON lines are accepted too). User message = instruction,
    plus a blank line and the input when the input is not empty; A = response1, B = response2;
    one pairwise label per ``annotatorN`` field, by ``"pandalm-N"``: 0 tie, 1 A, 2 B (strings or
    numbers). A JSON ``true``/``false``/number response (a few in the file) is read as its text.
``defacto``
    DeFacto summary feedback: a critique item whose user message asks for a one-sentence summary
    of the article; candidate = the model summary; one critique label by ``"defacto"``: critique =
    the explanation (plus the instruction, if any), rewrite = the corrected summary when there is
    one that differs from the candidate. ``meta`` keeps ``has_error``, ``evidence``, the error
    types and the reference summary.

``labelstudio``
    A Label Studio JSON export (an array of tasks; JSON lines too) of pairwise comparisons: the
    prompt is ``data.prompt`` (or ``instruction``, ``question``, ``input``; text or chat messages),
    the answers ``data.answer1``/``answer2`` (or ``text1``/``text2``, ``response1``/``response2``,
    ``answer_a``/``answer_b``, ``chosen``/``rejected``). Each annotation not cancelled is one
    pairwise label by ``labelstudio-<completed_by>``: a Pairwise tag's ``{"selected": "left"}`` or a
    Choices tag naming A or B (``A``, ``Answer 1``, ``left``, ``tie``, ``both bad`` ...). A ground
    truth annotation makes the item a gold item with its choice. Task ids keep re-imports apart
    (``labelstudio:<id>``).

``argilla``
    An Argilla records export (``dataset.records.to_json``: an array of ``{"id", "fields",
    "responses", "metadata", ...}``; JSON lines too). The prompt is ``fields.prompt`` (or
    ``instruction``, ``question``, ``input``, a chat field ``chat``/``messages``/``conversation``);
    the answers are ``response1``, ``response2``, ... (or ``answer``, ``completion``, ``generation``,
    ``output``, ``text`` with a number or letter), or one ``response``. One answer makes a thumbs
    item, two a pairwise item, three to nine a ranking item. Each person's first response that
    judges the answers is one label by ``argilla-<user_id>``: a RankingQuestion (field names best
    first, or Argilla 1's ``{"rank", "value"}`` where equal ranks tie), a LabelQuestion naming an
    answer field (or A, B, tie, both bad), or, on one answer, good/bad, yes/no, up/down. Discarded
    and draft responses and the suggestions (a model's, not a person's) are left out; questions
    that judge nothing are named in ``meta["questions_not_read"]``.

Empty texts: a prompt or context turn must not be empty; an unlabelled candidate (``jsonl``)
must not be empty; a candidate that people judged (``hh``, ``oasst``, ``pandalm``) is kept even
when empty, because the judgement is still data (HH has 4 empty replies, PandaLM 54 empty
responses, all of them judged).

External ids are stable: a user-given ``id`` as is; otherwise ``<fmt>:<source id>`` where the
source has one (``oasst:<parent message id>``, ``pandalm:<idx>``, ``defacto:<doc_id>``), else
``<fmt>:<first 16 hex digits of the SHA-256 of the content>`` (so a repeated record gets the same
id, and a re-import skips it).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .records import (
    MAX_RANKED,
    ROLES,
    BadRecord,
    ImportedCandidate,
    ImportedItem,
    ImportedLabel,
    has_nul,
    validate_gold,
    validate_messages,
)

FORMATS = ("jsonl", "csv", "trl", "hh", "oasst", "pandalm", "defacto", "labelstudio", "argilla")
# the item kinds each format's records may be (besides "prompt"): what a project must ask for
FORMAT_KINDS = {
    "jsonl": ("pairwise", "ranking"),
    "csv": ("pairwise",),
    "trl": ("pairwise", "thumbs"),
    "hh": ("pairwise",),
    "oasst": ("ranking",),
    "pandalm": ("pairwise",),
    "defacto": ("critique",),
    "labelstudio": ("pairwise",),
    "argilla": ("pairwise", "ranking", "thumbs"),
}
Record = ImportedItem | BadRecord

HH_ANNOTATOR = "hh-rlhf"
TRL_ANNOTATOR = "trl"
OASST_ANNOTATOR = "oasst"
PANDALM_ANNOTATOR = "pandalm-{}"
DEFACTO_ANNOTATOR = "defacto"
DEFACTO_PROMPT = "Summarise the following article in one sentence.\n\n{article}"
PANDALM_CHOICES = {"0": "tie", "1": "a", "2": "b"}
OASST_ROLES = {"prompter": "user", "assistant": "assistant"}
CHUNK_CHARS = 1 << 14

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ASSISTANT = "\n\nAssistant:"
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_WHITESPACE = re.compile(r"[ \t\n\r]*")


class RecordError(ValueError):
    """A record is not usable; the message says why (it becomes a BadRecord)."""


def read_feedback(path: str | Path, fmt: str) -> Iterator[Record]:
    """Yield the items (and bad records) of the file at ``path`` in format ``fmt``, in file order.

    Raises ``ValueError`` for an unknown format and ``FileNotFoundError`` for a missing file at
    once; everything wrong inside the file is reported as a :class:`BadRecord` instead.
    """
    if fmt not in _READERS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return _READERS[fmt](path)


# --- helpers -----------------------------------------------------------------------------------


@contextmanager
def _open_binary(path: Path) -> Iterator[IO[bytes]]:
    """Open ``path`` for reading bytes, decompressing gzip (detected by its magic bytes)."""
    with open(path, "rb") as probe:
        is_gzip = probe.read(2) == b"\x1f\x8b"
    f: IO[bytes] = gzip.open(path, "rb") if is_gzip else open(path, "rb")  # type: ignore[assignment]
    with f:
        yield f


def _decoded_lines(f: IO[bytes]) -> Iterator[tuple[int, str | None]]:
    """(1-based line number, text) per line; text None when the line is not valid UTF-8."""
    for lineno, raw in enumerate(f, 1):
        if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError:
            yield lineno, None


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]] | BadRecord]:
    """(line, object) per non-blank line, or a BadRecord for a line that is not a JSON object."""
    with _open_binary(path) as f:
        for lineno, text in _decoded_lines(f):
            if text is None:
                yield BadRecord(lineno, "the line is not valid UTF-8")
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield BadRecord(lineno, f"invalid JSON: {e.msg} (column {e.colno})")
                continue
            if not isinstance(obj, dict):
                yield BadRecord(lineno, f"expected a JSON object, got {_type_name(obj)}")
                continue
            yield lineno, obj


def _iter_json_array(stream: IO[str], chunk_chars: int = CHUNK_CHARS) -> Iterator[tuple[int, Any] | BadRecord]:
    """(line, element) per element of the one JSON array in ``stream``, decoded incrementally.

    Only the current chunk and the element being decoded are in memory. Malformed JSON inside the
    array ends the stream with a BadRecord (there is no reliable point to resume from).
    """
    decoder = json.JSONDecoder()
    buf, pos, line, eof = "", 0, 1, False

    def read_more(at_least: int) -> bool:
        nonlocal buf, pos, eof
        more = stream.read(max(chunk_chars, at_least))
        if not more:
            eof = True
            return False
        buf, pos = buf[pos:] + more, 0
        return True

    def skip_whitespace() -> bool:
        """Move past whitespace; False at the end of the stream."""
        nonlocal pos, line
        while True:
            end = _WHITESPACE.match(buf, pos).end()  # type: ignore[union-attr]
            line += buf.count("\n", pos, end)
            pos = end
            if pos < len(buf):
                return True
            if eof or not read_more(0):
                return False

    if not skip_whitespace() or buf[pos] != "[":
        yield BadRecord(line, "expected a JSON array (the file must start with '[')")
        return
    pos += 1
    expect_value = True  # after '[' or ','; False after an element
    first = True
    while True:
        if not skip_whitespace():
            yield BadRecord(line, "unexpected end of file: the JSON array is not closed with ']'")
            return
        if buf[pos] == "]" and (first or not expect_value):
            pos += 1
            if skip_whitespace():
                yield BadRecord(line, "unexpected text after the end of the JSON array")
            return
        if not expect_value:
            if buf[pos] != ",":
                yield BadRecord(line, f"expected ',' or ']' after an array element, got {buf[pos]!r}")
                return
            pos += 1
            expect_value = True
            continue
        while True:  # decode one element, reading more until it is complete
            try:
                value, end = decoder.raw_decode(buf, pos)
                if end < len(buf) or eof:  # a value ending at the buffer's end may be cut (a number)
                    break
            except json.JSONDecodeError as e:
                if eof:
                    yield BadRecord(line + buf.count("\n", pos, e.pos), f"invalid JSON in the array: {e.msg}")
                    return
            read_more(len(buf) - pos)
        yield line, value
        line += buf.count("\n", pos, end)
        pos = end
        expect_value, first = False, False


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


def _text(obj: dict[str, Any], key: str, *, allow_empty: bool = False, coerce: bool = False) -> str:
    """``obj[key]`` as a stripped string, or RecordError. ``coerce`` reads JSON true/false/numbers as text."""
    if key not in obj:
        raise RecordError(f"missing field {key!r}")
    value = obj[key]
    if coerce and isinstance(value, bool):
        value = "True" if value else "False"
    elif coerce and isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        raise RecordError(f"field {key!r} must be a string, got {_type_name(value)}")
    value = value.strip()
    if not value and not allow_empty:
        raise RecordError(f"field {key!r} is empty")
    return value


def _content_id(prefix: str, *parts: Any) -> str:
    """``prefix:`` + 16 hex digits of a SHA-256 of ``parts`` (stable across runs and machines)."""
    digest = hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()
    return f"{prefix}:{digest[:16]}"


def _given_id(value: Any) -> str | None:
    """A user-given id (string or integer) as a string; None when absent or blank."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RecordError(f"id must be a string or an integer, got {_type_name(value)}")
    text = str(value).strip()
    return text or None


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _checked(build: Callable[[], ImportedItem], line: int) -> Record:
    """Run ``build``; a RecordError, a record's own validation error, or a NUL character in any of
    its text becomes a BadRecord (the rest of the file is read on)."""
    try:
        item = build()
    except ValueError as e:
        return BadRecord(line, str(e))
    if has_nul(item):
        return BadRecord(line, "a NUL character (\\u0000) is not allowed in text")
    return item


def _from_json_lines(path: Path, convert: Callable[[int, dict[str, Any]], ImportedItem]) -> Iterator[Record]:
    for entry in _json_lines(path):
        if isinstance(entry, BadRecord):
            yield entry
        else:
            line, obj = entry
            yield _checked(lambda: convert(line, obj), line)  # noqa: B023 (called at once)


# --- jsonl -------------------------------------------------------------------------------------


def _messages_from(value: Any, key: str) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise RecordError(f"field {key!r} must be a string or a list of chat messages, got {_type_name(value)}")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            raise RecordError(f"{key}[{i}] must be an object with 'role' and 'content'")
        messages.append({"role": message["role"], "content": message["content"]})
    try:
        validate_messages(messages)
    except ValueError as e:
        raise RecordError(f"field {key!r}: {e}") from None
    return messages


def _jsonl_item(line: int, obj: dict[str, Any]) -> ImportedItem:
    if "prompt" in obj and "messages" in obj:
        raise RecordError("give either 'prompt' or 'messages', not both")
    if "prompt" in obj and isinstance(obj["prompt"], str):
        messages = _user(_text(obj, "prompt"))
    elif "prompt" in obj or "messages" in obj:
        key = "prompt" if "prompt" in obj else "messages"
        messages = _messages_from(obj[key], key)
    else:
        raise RecordError("missing field 'prompt' (a string) or 'messages' (a list of chat messages)")
    candidates: list[ImportedCandidate] = []
    kind = "prompt"
    if obj.get("candidates") is not None:
        texts = obj["candidates"]
        if not isinstance(texts, list) or not 2 <= len(texts) <= MAX_RANKED:
            raise RecordError(f"'candidates' must be a list of 2 to {MAX_RANKED} strings")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise RecordError(f"candidates[{i}] must be a non-empty string")
        candidates = [ImportedCandidate(text.strip()) for text in texts]
        kind = "pairwise" if len(candidates) == 2 else "ranking"
    if obj.get("gold") is not None:  # a gold item: the answer annotators are checked against
        try:
            validate_gold(kind, obj["gold"], len(candidates))
        except ValueError as exc:
            raise RecordError(f"'gold': {exc}") from None
    external_id = _given_id(obj.get("id")) or _content_id("jsonl", messages, [c.text for c in candidates])
    meta = {k: v for k, v in obj.items() if k not in ("id", "prompt", "messages", "candidates")}
    return ImportedItem(line, external_id, kind, messages, candidates, [], meta)


def _read_jsonl(path: Path) -> Iterator[Record]:
    return _from_json_lines(path, _jsonl_item)


# --- csv ---------------------------------------------------------------------------------------


def _read_csv(path: Path) -> Iterator[Record]:
    with _open_binary(path) as f:
        bad_lines: set[int] = set()

        def text_lines() -> Iterator[str]:
            for lineno, text in _decoded_lines(f):
                if text is None:
                    bad_lines.add(lineno)
                    text = ""
                yield text

        reader = csv.reader(text_lines())
        header: list[str] | None = None
        previous_end = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield BadRecord(previous_end + 1, f"CSV error: {e}")
                previous_end = reader.line_num
                continue
            start, previous_end = previous_end + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if bad_lines.intersection(range(start, previous_end + 1)):
                yield BadRecord(start, "the record is not valid UTF-8")
                continue
            if header is None:
                header = [name.strip().lower() for name in row]
                duplicates = sorted({name for name in header if header.count(name) > 1})
                if "prompt" not in header or duplicates:
                    why = f"duplicate columns {duplicates}" if duplicates else "no 'prompt' column"
                    yield BadRecord(start, f"the CSV header has {why}: {row!r}")
                    return
                continue
            if len(row) != len(header):
                yield BadRecord(start, f"expected {len(header)} fields as in the header, got {len(row)}")
                continue
            values = dict(zip(header, row, strict=True))
            yield _checked(lambda: _csv_item(start, values), start)  # noqa: B023 (called at once)


def _csv_item(line: int, values: dict[str, str]) -> ImportedItem:
    prompt = _text(values, "prompt")
    system = values.get("system", "").strip()
    messages = ([{"role": "system", "content": system}] if system else []) + _user(prompt)
    external_id = _given_id(values.get("id")) or _content_id("csv", messages)
    meta = {k: v for k, v in values.items() if k not in ("id", "prompt", "system")}
    return ImportedItem(line, external_id, "prompt", messages, [], [], meta)


# --- HH-RLHF -----------------------------------------------------------------------------------


def _hh_turns(transcript: str) -> list[dict[str, str]]:
    """Parse ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` into messages, joining repeated speakers."""
    parts = _HH_TURN.split(transcript)
    if parts[0].strip():
        raise RecordError(f"the transcript does not start with a 'Human:' turn: {parts[0][:60]!r}")
    messages: list[dict[str, str]] = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        role, content = _HH_ROLES[speaker], content.strip()
        if not content:
            raise RecordError(f"an empty {speaker} turn in the shared conversation")
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content
        else:
            messages.append({"role": role, "content": content})
    return messages


def _hh_split(chosen: str, rejected: str) -> tuple[list[dict[str, str]], str, str]:
    """(shared context, chosen reply, rejected reply)."""
    if chosen == rejected:
        raise RecordError("'chosen' and 'rejected' are the same transcript")
    common = 0
    limit = min(len(chosen), len(rejected))
    while common < limit and chosen[common] == rejected[common]:
        common += 1
    cut = chosen.rfind(_HH_ASSISTANT, 0, common)
    while cut >= 0:
        context = _hh_turns(chosen[:cut])
        if context and context[-1]["role"] == "user":
            start = cut + len(_HH_ASSISTANT)
            return context, chosen[start:].strip(), rejected[start:].strip()
        cut = chosen.rfind(_HH_ASSISTANT, 0, cut)
    raise RecordError("'chosen' and 'rejected' share no conversation ending with a Human turn")


def _hh_item(line: int, obj: dict[str, Any]) -> ImportedItem:
    chosen, rejected = obj.get("chosen"), obj.get("rejected")
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise RecordError(f"missing field {key!r}" if value is None else f"field {key!r} must be a string")
    assert isinstance(chosen, str) and isinstance(rejected, str)
    context, chosen_reply, rejected_reply = _hh_split(chosen, rejected)
    digest = hashlib.sha256(f"{chosen}\x00{rejected}".encode()).hexdigest()
    chosen_is_a = int(digest[-1], 16) % 2 == 0
    texts = [chosen_reply, rejected_reply] if chosen_is_a else [rejected_reply, chosen_reply]
    label = ImportedLabel(HH_ANNOTATOR, "pairwise", choice="a" if chosen_is_a else "b")
    candidates = [ImportedCandidate(t) for t in texts]
    return ImportedItem(line, f"hh:{digest[:16]}", "pairwise", context, candidates, [label], {"source": "hh-rlhf"})


def _read_hh(path: Path) -> Iterator[Record]:
    return _from_json_lines(path, _hh_item)


# --- TRL preference ----------------------------------------------------------------------------


def _trl_answer(value: Any, key: str) -> str:
    """One answer of a TRL record: a string, or a list holding one assistant message."""
    if isinstance(value, str):
        return value.strip()
    if (
        isinstance(value, list)
        and len(value) == 1
        and isinstance(value[0], dict)
        and value[0].get("role") == "assistant"
        and isinstance(value[0].get("content"), str)
    ):
        return value[0]["content"].strip()
    raise RecordError(f"field {key!r} must be a string or a list of one assistant message")


def _trl_implicit(chosen: Any, rejected: Any) -> tuple[list[dict[str, str]], Any, Any]:
    """TRL's implicit prompt: the turns both conversations share, up to their last user turn."""
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise RecordError("missing field 'prompt' (with no prompt, 'chosen' and 'rejected' must be conversations)")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared and not (isinstance(chosen[shared - 1], dict) and chosen[shared - 1].get("role") == "user"):
        shared -= 1
    if not shared:
        raise RecordError("'chosen' and 'rejected' share no prompt ending with a user turn")
    return _messages_from(chosen[:shared], "chosen"), chosen[shared:], rejected[shared:]


def _trl_prompt(obj: dict[str, Any]) -> list[dict[str, str]]:
    if isinstance(obj["prompt"], str):
        return _user(_text(obj, "prompt"))
    return _messages_from(obj["prompt"], "prompt")


def _trl_unpaired_item(line: int, obj: dict[str, Any]) -> ImportedItem:
    """One row of TRL's unpaired preference set: an answer and whether it is good."""
    if "prompt" not in obj:
        raise RecordError("missing field 'prompt' (an unpaired row is prompt, completion and label)")
    if not isinstance(obj.get("label"), bool):
        raise RecordError(f"field 'label' must be true or false, got {_type_name(obj.get('label'))}")
    messages = _trl_prompt(obj)
    completion = _trl_answer(obj["completion"], "completion")
    digest = hashlib.sha256(json.dumps([messages, completion], ensure_ascii=False).encode()).hexdigest()
    label = ImportedLabel(TRL_ANNOTATOR, "thumbs", choice="up" if obj["label"] else "down")
    external_id = _given_id(obj.get("id")) or f"trl:{digest[:16]}"
    meta = {k: v for k, v in obj.items() if k not in ("id", "prompt", "completion", "label")}
    return ImportedItem(
        line, external_id, "thumbs", messages, [ImportedCandidate(completion)], [label], {"source": "trl", **meta}
    )


def _trl_item(line: int, obj: dict[str, Any]) -> ImportedItem:
    if "completion" in obj and "chosen" not in obj:
        return _trl_unpaired_item(line, obj)
    chosen, rejected = obj.get("chosen"), obj.get("rejected")
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if value is None:
            raise RecordError(f"missing field {key!r}")
    if "prompt" not in obj:
        messages, chosen, rejected = _trl_implicit(chosen, rejected)
    else:
        messages = _trl_prompt(obj)
    texts = {"chosen": _trl_answer(chosen, "chosen"), "rejected": _trl_answer(rejected, "rejected")}
    digest = hashlib.sha256(json.dumps([messages, texts], ensure_ascii=False, sort_keys=True).encode()).hexdigest()
    chosen_is_a = int(digest[-1], 16) % 2 == 0
    order = ("chosen", "rejected") if chosen_is_a else ("rejected", "chosen")
    label = ImportedLabel(TRL_ANNOTATOR, "pairwise", choice="a" if chosen_is_a else "b")
    candidates = [ImportedCandidate(texts[k]) for k in order]
    external_id = _given_id(obj.get("id")) or f"trl:{digest[:16]}"
    meta = {k: v for k, v in obj.items() if k not in ("id", "prompt", "chosen", "rejected")}
    return ImportedItem(line, external_id, "pairwise", messages, candidates, [label], {"source": "trl", **meta})


def _read_trl(path: Path) -> Iterator[Record]:
    return _from_json_lines(path, _trl_item)


# --- Open-Assistant ----------------------------------------------------------------------------


def _oasst_message(node: Any, where: str) -> dict[str, str]:
    if not isinstance(node, dict):
        raise RecordError(f"{where}: a message must be an object, got {_type_name(node)}")
    role = OASST_ROLES.get(node.get("role"))  # type: ignore[arg-type]
    if role is None:
        raise RecordError(f"{where}: unknown role {node.get('role')!r}")
    text = node.get("text")
    if not isinstance(text, str):
        raise RecordError(f"{where}: 'text' must be a string")
    return {"role": role, "content": text.strip()}


def _oasst_group(line: int, tree_id: Any, node: dict[str, Any], path: list[dict[str, str]]) -> ImportedItem | None:
    """The ranking item for ``node``'s ranked replies, or None when it has fewer than 2 (or they are prompts)."""
    replies = node.get("replies") or []
    if not isinstance(replies, list):
        raise RecordError(f"message {node.get('message_id')!r}: 'replies' must be a list")
    live = [r for r in replies if isinstance(r, dict) and not r.get("deleted")]
    ranked = [r for r in live if r.get("rank") is not None]
    if len(ranked) < 2:
        return None
    if any(r.get("role") != "assistant" for r in ranked):
        return None  # ranked prompts are not answers to rank
    where = f"tree {tree_id!r}, message {node.get('message_id')!r}"
    if len(ranked) > MAX_RANKED:
        raise RecordError(f"{where}: {len(ranked)} ranked replies, more than {MAX_RANKED}")
    candidates = []
    for reply in ranked:
        rank = reply["rank"]
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise RecordError(f"{where}: reply rank must be an integer >= 0, got {rank!r}")
        candidates.append(ImportedCandidate(_oasst_message(reply, where)["content"], rank))
    ranks = sorted({c.rank for c in candidates if c.rank is not None})
    groups = [[i for i, c in enumerate(candidates) if c.rank == r] for r in ranks]
    meta = {
        "source": "oasst",
        "message_tree_id": tree_id,
        "parent_message_id": node.get("message_id"),
        "candidate_message_ids": [r.get("message_id") for r in ranked],
        "unranked_replies": len(live) - len(ranked),
    }
    parent_id = node.get("message_id")
    external_id = f"oasst:{parent_id}" if isinstance(parent_id, str) and parent_id else _content_id("oasst", path)
    label = ImportedLabel(OASST_ANNOTATOR, "ranking", ranking=groups)
    return ImportedItem(line, external_id, "ranking", path, candidates, [label], meta)


def _oasst_items(line: int, tree: dict[str, Any]) -> Iterator[Record]:
    tree_id = tree.get("message_tree_id")
    root = tree.get("prompt")
    if not isinstance(root, dict):
        yield BadRecord(line, f"tree {tree_id!r}: missing the root message 'prompt'")
        return
    # Depth-first, iteratively (trees can be deep); a bad message skips its subtree only.
    stack: list[tuple[dict[str, Any], list[dict[str, str]]]] = [(root, [])]
    while stack:
        node, parents = stack.pop()
        try:
            path = [*parents, _oasst_message(node, f"tree {tree_id!r}, message {node.get('message_id')!r}")]
        except RecordError as e:
            yield BadRecord(line, str(e))
            continue
        try:
            item = _oasst_group(line, tree_id, node, path)
        except ValueError as e:
            yield BadRecord(line, str(e))
            item = None
        if item is not None:
            yield item
        replies = node.get("replies") or []
        if isinstance(replies, list):
            live = [r for r in replies if isinstance(r, dict) and not r.get("deleted")]
            stack.extend((r, path) for r in reversed(live))


def _read_oasst(path: Path) -> Iterator[Record]:
    for entry in _json_lines(path):
        if isinstance(entry, BadRecord):
            yield entry
        else:
            yield from _oasst_items(*entry)


# --- PandaLM -----------------------------------------------------------------------------------


def _pandalm_item(line: int, obj: dict[str, Any]) -> ImportedItem:
    instruction = _text(obj, "instruction", allow_empty=True)
    extra = _text(obj, "input", allow_empty=True, coerce=True) if "input" in obj else ""
    prompt = "\n\n".join(part for part in (instruction, extra) if part)
    if not prompt:
        raise RecordError("'instruction' and 'input' are both empty")
    responses = [_text(obj, key, allow_empty=True, coerce=True) for key in ("response1", "response2")]
    annotators = sorted(
        (int(key[len("annotator") :]), key)
        for key in obj
        if key.startswith("annotator") and key[len("annotator") :].isdigit()
    )
    if not annotators:
        raise RecordError("no annotator fields ('annotator1', ...)")
    labels = []
    for number, key in annotators:
        value = obj[key]
        choice = None if isinstance(value, bool) else PANDALM_CHOICES.get(str(value).strip())
        if choice is None:
            raise RecordError(f"field {key!r} must be 0 (tie), 1 (response1) or 2 (response2), got {value!r}")
        labels.append(ImportedLabel(PANDALM_ANNOTATOR.format(number), "pairwise", choice=choice))
    idx = obj.get("idx")
    has_idx = isinstance(idx, str | int) and not isinstance(idx, bool) and str(idx).strip()
    external_id = f"pandalm:{idx}" if has_idx else _content_id("pandalm", prompt, responses)
    meta: dict[str, Any] = {"source": "pandalm"}
    meta.update((k, obj[k]) for k in ("idx", "cmp_key", "motivation_app") if k in obj)
    candidates = [ImportedCandidate(text) for text in responses]
    return ImportedItem(line, external_id, "pairwise", _user(prompt), candidates, labels, meta)


def _read_pandalm(path: Path) -> Iterator[Record]:
    return _from_json_array(path, _pandalm_item)


def _from_json_array(path: Path, convert: Callable[[int, dict[str, Any]], ImportedItem]) -> Iterator[Record]:
    """The records of a file holding one JSON array of objects (JSON lines are read too)."""
    with _open_binary(path) as f:
        head = f.read(4096).lstrip(codecs.BOM_UTF8).lstrip()
    if not head.startswith(b"["):  # JSON lines: one object a line
        yield from _from_json_lines(path, convert)
        return
    last_line = 1
    with _open_binary(path) as f:
        try:
            for entry in _iter_json_array(io.TextIOWrapper(f, encoding="utf-8-sig")):
                if isinstance(entry, BadRecord):
                    yield entry
                    continue
                line, obj = entry
                last_line = line
                if not isinstance(obj, dict):
                    yield BadRecord(line, f"expected a JSON object in the array, got {_type_name(obj)}")
                else:
                    yield _checked(lambda: convert(line, obj), line)  # noqa: B023 (called at once)
        except UnicodeDecodeError:
            yield BadRecord(last_line, "the file is not valid UTF-8 after this line; reading stopped")


# --- Label Studio --------------------------------------------------------------------------------

LABELSTUDIO_PROMPT_KEYS = ("prompt", "instruction", "question", "input")
LABELSTUDIO_ANSWER_KEYS = (
    ("answer1", "answer2"),
    ("text1", "text2"),
    ("response1", "response2"),
    ("answer_a", "answer_b"),
    ("chosen", "rejected"),
)
# what a Choices answer may say, read case-blind: A, B, a tie or both bad
LABELSTUDIO_CHOICES = {
    "a": "a", "left": "a", "answer 1": "a", "answer1": "a", "text1": "a", "1": "a", "a is better": "a",
    "b": "b", "right": "b", "answer 2": "b", "answer2": "b", "text2": "b", "2": "b", "b is better": "b",
    "tie": "tie", "same": "tie", "equal": "tie", "both bad": "both_bad", "both_bad": "both_bad", "neither": "both_bad",
}  # fmt: skip


def _labelstudio_choice(result: Any, where: str) -> str | None:
    """A pairwise choice from one annotation's results: a Pairwise tag (``{"selected": "left"}``)
    or a Choices tag naming A or B; None when it has neither."""
    if not isinstance(result, list):
        raise RecordError(f"{where}: 'result' must be a list")
    for entry in result:
        if not isinstance(entry, dict) or not isinstance(entry.get("value"), dict):
            continue
        value = entry["value"]
        picked = value.get("selected")
        if picked is None and isinstance(value.get("choices"), list) and len(value["choices"]) == 1:
            picked = value["choices"][0]
        if picked is None:
            continue
        choice = LABELSTUDIO_CHOICES.get(str(picked).strip().lower())
        if choice is None:
            raise RecordError(f"{where}: cannot read {picked!r} as A, B, a tie or both bad")
        return choice
    return None


def _tool_prompt(
    obj: dict[str, Any], key: str, tool: str, prompt_keys: tuple[str, ...]
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """An annotation tool's record: its `key` object (Label Studio's data, Argilla's fields) and the
    prompt in it, under the first of `prompt_keys` it has (a text, or chat messages)."""
    data = obj.get(key)
    if not isinstance(data, dict):
        raise RecordError(f"missing field {key!r} (an object): is this a {tool} export?")
    prompt_key = next((k for k in prompt_keys if k in data), None)
    if prompt_key is None:
        raise RecordError(f"{key!r} has no prompt: one of {', '.join(prompt_keys)}")
    if isinstance(data[prompt_key], str):
        return data, _user(_text(data, prompt_key))
    return data, _messages_from(data[prompt_key], prompt_key)


def _labelstudio_item(line: int, obj: dict[str, Any]) -> ImportedItem:
    data, messages = _tool_prompt(obj, "data", "Label Studio JSON", LABELSTUDIO_PROMPT_KEYS)
    keys = next((pair for pair in LABELSTUDIO_ANSWER_KEYS if all(k in data for k in pair)), None)
    if keys is None:
        raise RecordError("'data' has no two answers: " + ", ".join(f"{a}/{b}" for a, b in LABELSTUDIO_ANSWER_KEYS))
    candidates = [ImportedCandidate(_text(data, k, allow_empty=True)) for k in keys]
    labels, gold = [], None
    annotations = obj.get("annotations", [])
    if not isinstance(annotations, list):
        raise RecordError("'annotations' must be a list")
    for i, annotation in enumerate(annotations):
        if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
            continue  # a skipped task in Label Studio says nothing of the answers
        choice = _labelstudio_choice(annotation.get("result", []), f"annotations[{i}]")
        if choice is None:
            continue
        who = annotation.get("completed_by")
        if isinstance(who, dict):
            who = who.get("email") or who.get("id")
        labels.append(
            ImportedLabel(f"labelstudio-{who if who not in (None, '') else 'unknown'}", "pairwise", choice=choice)
        )
        if annotation.get("ground_truth") and gold is None:
            gold = {"choice": choice}  # Label Studio's ground truth: a gold item here
    task_id = _given_id(obj.get("id"))
    external_id = (
        f"labelstudio:{task_id}" if task_id else _content_id("labelstudio", messages, [c.text for c in candidates])
    )
    meta: dict[str, Any] = {"source": "labelstudio"}
    if gold is not None:
        meta["gold"] = gold
    return ImportedItem(line, external_id, "pairwise", messages, candidates, labels, meta)


def _read_labelstudio(path: Path) -> Iterator[Record]:
    return _from_json_array(path, _labelstudio_item)


# --- Argilla -----------------------------------------------------------------------------------

ARGILLA_PROMPT_KEYS = ("prompt", "instruction", "question", "input", "chat", "messages", "conversation")
# answer fields: response1, response_2, answer-a, completion_b, generation3, ... (or one `response`)
_ARGILLA_ANSWER = re.compile(r"^(?:response|answer|completion|generation|output|text)[_-]?(\d|[a-i])?$")
ARGILLA_THUMBS = {
    "good": "up", "up": "up", "yes": "up", "positive": "up", "accept": "up", "correct": "up", "true": "up",
    "👍": "up", "bad": "down", "down": "down", "no": "down", "negative": "down", "reject": "down",
    "incorrect": "down", "false": "down", "👎": "down",
}  # fmt: skip
ARGILLA_SKIPPED_STATUS = ("discarded", "draft")


def _argilla_answers(fields: dict[str, Any]) -> list[str]:
    """The names of a record's answer fields, in their order (response1 before response2)."""
    found = [(m.group(1) or "", key) for key in fields if (m := _ARGILLA_ANSWER.match(key.lower()))]
    if len(found) > 1:
        found = [(suffix, key) for suffix, key in found if suffix]  # `text` beside text1/text2 is no answer
    return [key for _, key in sorted(found, key=lambda f: (len(f[0]), f[0]))]


def _argilla_groups(value: list[Any], names: list[str]) -> list[list[int]] | None:
    """A RankingQuestion's answer as groups of answer indexes, best first: a list of field names
    (Argilla 2) or of ``{"rank", "value"}`` (Argilla 1, equal ranks tie); None if it names others."""
    index = {name: i for i, name in enumerate(names)}
    ranked: dict[Any, list[int]] = {}
    for position, entry in enumerate(value):
        name, rank = (entry.get("value"), entry.get("rank")) if isinstance(entry, dict) else (entry, position)
        if name not in index or not isinstance(rank, int):
            return None
        ranked.setdefault(rank, []).append(index[name])
    return [ranked[rank] for rank in sorted(ranked)]


def _argilla_label(who: str, value: Any, names: list[str]) -> ImportedLabel | None:
    """One response as a label of the item's kind (one answer: thumbs; two: pairwise; more: a
    ranking); None for a response to a question that is not a judgment of the answers."""
    if len(names) == 1:
        thumb = ARGILLA_THUMBS.get(str(value).strip().lower()) if isinstance(value, str | bool) else None
        return ImportedLabel(who, "thumbs", choice=thumb) if thumb else None
    groups = None
    if isinstance(value, list):
        groups = _argilla_groups(value, names)
    elif isinstance(value, str) and value in names:  # a LabelQuestion naming the best answer
        best = names.index(value)
        groups = [[best], [i for i in range(len(names)) if i != best]]
    elif isinstance(value, str) and len(names) == 2 and value.strip().lower() in LABELSTUDIO_CHOICES:
        return ImportedLabel(who, "pairwise", choice=LABELSTUDIO_CHOICES[value.strip().lower()])
    if not groups or sorted(i for g in groups for i in g) != list(range(len(names))):
        return None
    if len(names) == 2:
        return ImportedLabel(who, "pairwise", choice="tie" if len(groups) == 1 else "ab"[groups[0][0]])
    return ImportedLabel(who, "ranking", ranking=groups)


def _argilla_item(line: int, obj: dict[str, Any]) -> ImportedItem:
    fields, messages = _tool_prompt(obj, "fields", "Argilla records", ARGILLA_PROMPT_KEYS)
    names = _argilla_answers(fields)
    if not names or len(names) > MAX_RANKED:
        raise RecordError(f"'fields' must hold 1 to {MAX_RANKED} answers (response1, response2, ...), got {len(names)}")
    candidates = [ImportedCandidate(_text(fields, k, allow_empty=True)) for k in names]
    kind = "thumbs" if len(names) == 1 else "pairwise" if len(names) == 2 else "ranking"
    responses = obj.get("responses") or {}
    if not isinstance(responses, dict):
        raise RecordError("'responses' must be an object of question names to lists of responses")
    labels: dict[str, ImportedLabel] = {}  # one label a person: their first response that judges the answers
    unread: set[str] = set()
    for question, given in responses.items():
        for response in given if isinstance(given, list) else []:
            if not isinstance(response, dict) or response.get("status") in ARGILLA_SKIPPED_STATUS:
                continue
            who = f"argilla-{response.get('user_id') or 'unknown'}"
            label = _argilla_label(who, response.get("value"), names)
            if label is None:
                unread.add(str(question))
            elif who not in labels:
                labels[who] = label
    record_id = _given_id(obj.get("id"))
    texts = [c.text for c in candidates]
    external_id = f"argilla:{record_id}" if record_id else _content_id("argilla", messages, texts)
    meta: dict[str, Any] = {"source": "argilla", **(obj.get("metadata") or {})}
    if unread:
        meta["questions_not_read"] = sorted(unread)
    return ImportedItem(line, external_id, kind, messages, candidates, list(labels.values()), meta)


def _read_argilla(path: Path) -> Iterator[Record]:
    return _from_json_array(path, _argilla_item)


# --- DeFacto -----------------------------------------------------------------------------------


def _defacto_item(line: int, obj: dict[str, Any]) -> ImportedItem:
    article = _text(obj, "article")
    candidate = _text(obj, "candidate")
    feedback = obj.get("feedback")
    if not isinstance(feedback, dict):
        raise RecordError("missing field 'feedback' (an object)")
    explanation = _text(feedback, "explanation")
    instruction = _text(feedback, "instruction", allow_empty=True) if feedback.get("instruction") else ""
    summary = _text(feedback, "summary", allow_empty=True) if feedback.get("summary") else ""
    has_error = obj.get("has_error")
    if not isinstance(has_error, bool):
        raise RecordError(f"field 'has_error' must be true or false, got {has_error!r}")
    critique = f"{explanation}\n\nInstruction: {instruction}" if instruction else explanation
    rewrite = summary if summary and summary != candidate else None
    label = ImportedLabel(DEFACTO_ANNOTATOR, "critique", critique=critique, rewrite=rewrite)
    meta: dict[str, Any] = {"source": "defacto", "has_error": has_error, "evidence": feedback.get("evidence")}
    for key in ("doc_id", "intrinsic_error", "extrinsic_error"):
        if key in obj:
            meta[key] = obj[key]
    if isinstance(obj.get("abstract"), str):
        meta["reference_summary"] = obj["abstract"]
    doc_id = obj.get("doc_id")
    has_doc_id = isinstance(doc_id, str | int) and not isinstance(doc_id, bool) and str(doc_id).strip()
    external_id = f"defacto:{doc_id}" if has_doc_id else _content_id("defacto", article, candidate)
    messages = _user(DEFACTO_PROMPT.format(article=article))
    return ImportedItem(line, external_id, "critique", messages, [ImportedCandidate(candidate)], [label], meta)


def _read_defacto(path: Path) -> Iterator[Record]:
    return _from_json_lines(path, _defacto_item)


_READERS: dict[str, Callable[[Path], Iterator[Record]]] = {
    "jsonl": _read_jsonl,
    "csv": _read_csv,
    "trl": _read_trl,
    "hh": _read_hh,
    "oasst": _read_oasst,
    "pandalm": _read_pandalm,
    "defacto": _read_defacto,
    "labelstudio": _read_labelstudio,
    "argilla": _read_argilla,
}
assert tuple(_READERS) == FORMATS == tuple(FORMAT_KINDS)
assert set(OASST_ROLES.values()) <= set(ROLES)
