"""Language-model tasks: text, its fixed split, truncated BPTT and bits per token.

The text: the documentation that ships with Python itself
(:mod:`pydoc_data.topics`, the help topics of ``help()``; about 465 000
characters in 79 topics, concatenated in sorted topic order, separated by a
blank line), or the user's own plain-text files from ``data_dir``
(:func:`read_text_files`: ``train.txt`` / ``valid.txt`` / ``test.txt``, or the
Penn Treebank names ``ptb.train.txt`` / ``ptb.valid.txt`` / ``ptb.test.txt``).
Nothing is downloaded.

Split: the built-in text is cut into contiguous parts, the first 90 % to
train, the next 5 % to validate, the last 5 % to test (the enwik8 convention),
the same for every seed; files are used as their names say. Tokens are
characters (``level="char"``) or whitespace-separated words with an
``<eos>`` token at the end of each line (``level="word"``, the PTB
convention). The vocabulary is every token of the three parts, sorted: a
model can give a test token probability, although it may never have been
trained on it.

Training data are windows of ``bptt`` tokens (inputs) and the same windows
shifted by one (targets), cut from the training stream without overlap.

- LSTM (stateful truncated BPTT, as in the AWD-LSTM code the AdaBelief
  paper's PTB experiments use): the windows are dealt into ``batch_size``
  parallel streams, consecutive windows of the text each; batch ``k`` holds
  window ``k`` of every stream, and the LSTM state after a batch is the
  (detached) initial state of the next one. The seed rotates where each
  epoch starts within the streams; the state is reset at every epoch start
  and where the rotation wraps around.
- Transformer: windows are independent examples, shuffled every epoch.

Evaluation: ``loss`` is the mean cross-entropy per predicted token in nats
and ``metric`` is bits per token (``bpc``: ``loss / ln 2``; per character at
character level, per word at word level, where perplexity is ``2 ** bpc``),
over the whole part. The LSTM reads each part as contiguous columns of at
least :data:`EVAL_COLUMN_TOKENS` tokens in chunks, carrying its state; the
Transformer reads non-overlapping windows of its context length.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .data import ArrayData, DatasetFormatError, DatasetNotFoundError, _file_key, _require_dir
from .models import CharLSTM, DecoderTransformer
from .tasks import Problem

__all__ = [
    "BUILTIN_SPLIT",
    "Corpus",
    "EVAL_COLUMN_TOKENS",
    "TEXT_FILE_NAMES",
    "bits_per_token",
    "build_lstm",
    "build_transformer",
    "builtin_text",
    "load_corpus",
    "read_text_files",
]

#: Fractions of the built-in text that train, validate and test (contiguous, in this order).
BUILTIN_SPLIT = (0.90, 0.05, 0.05)
#: The file names :func:`read_text_files` looks for, ``{part}`` in train, valid, test.
TEXT_FILE_NAMES = ("{part}.txt", "ptb.{part}.txt")
#: The LSTM evaluates a part as columns of at least this many tokens each.
EVAL_COLUMN_TOKENS = 4096
#: Tokens per chunk of an LSTM evaluation pass.
EVAL_CHUNK = 256
LEVELS = ("char", "word")
PARTS = ("train", "valid", "test")


def builtin_text() -> str:
    """The help-topic text of :mod:`pydoc_data.topics`, topics in sorted order.

    Raises:
        DatasetNotFoundError: this Python build lacks ``pydoc_data`` (some
            distributions strip it); the message says what to do instead.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as error:
        raise DatasetNotFoundError(
            "the built-in text tasks read the standard library's pydoc_data.topics, which "
            f"this Python build lacks ({error}); install the full standard library, or give "
            "--data-dir with train.txt, valid.txt and test.txt"
        ) from None
    text = "\n\n".join(topics[name] for name in sorted(topics))
    if not text.strip():
        raise DatasetFormatError("pydoc_data.topics holds no text")
    return text


def _find_text_file(directory: Path, part: str) -> Path | None:
    for pattern in TEXT_FILE_NAMES:
        path = directory / pattern.format(part=part)
        if path.is_file():
            return path
    return None


def read_text_files(data_dir: str | Path | None) -> dict[str, str]:
    """``{"train", "valid", "test"}``: the text of the user's files in ``data_dir``.

    Raises:
        DatasetNotFoundError: no directory, or a part has no file.
        DatasetFormatError: a file is empty, or not UTF-8.
    """
    expected = " or ".join(name.format(part="{train,valid,test}") for name in TEXT_FILE_NAMES)
    how = f"expected three plain-text files, {expected} (e.g. the Penn Treebank's ptb.*.txt)"
    directory = _require_dir(data_dir, "text", how)
    texts = {}
    for part in PARTS:
        path = _find_text_file(directory, part)
        if path is None:
            names = ", ".join(name.format(part=part) for name in TEXT_FILE_NAMES)
            raise DatasetNotFoundError(
                f"no {part} file in {str(directory)!r}: looked for {names}; {how}"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise DatasetFormatError(f"{path}: not UTF-8 text ({error})") from None
        if not text.strip():
            raise DatasetFormatError(f"{path}: the file is empty; every part needs some text")
        texts[part] = text
    return texts


def _tokens(text: str, level: str) -> list[str]:
    if level == "char":
        return list(text)
    return [word for line in text.splitlines() for word in [*line.split(), "<eos>"]]


@dataclass(frozen=True)
class Corpus:
    """Token ids of the three parts and the vocabulary they index."""

    vocabulary: tuple[str, ...]
    train: Tensor
    valid: Tensor
    test: Tensor

    def part(self, name: str) -> Tensor:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]


@functools.lru_cache(maxsize=4)
def _corpus(key: tuple[Any, ...] | None, directory: str | None, level: str) -> Corpus:
    if directory is None:
        text = builtin_text()
        bounds = [0]
        for fraction in BUILTIN_SPLIT:
            bounds.append(bounds[-1] + round(fraction * len(text)))
        bounds[-1] = len(text)
        texts = {part: text[bounds[i] : bounds[i + 1]] for i, part in enumerate(PARTS)}
    else:
        texts = read_text_files(directory)
    tokens = {part: _tokens(texts[part], level) for part in PARTS}
    for part in PARTS:
        if len(tokens[part]) < 2:
            raise DatasetFormatError(
                f"the {part} text has {len(tokens[part])} {level} token(s); at least 2 are needed"
            )
    vocabulary = tuple(sorted(set().union(*tokens.values())))
    index = {token: i for i, token in enumerate(vocabulary)}
    ids = {part: torch.tensor([index[t] for t in tokens[part]]) for part in PARTS}
    return Corpus(vocabulary, ids["train"], ids["valid"], ids["test"])


def load_corpus(data_dir: str | None, level: str) -> Corpus:
    """The built-in text (``data_dir=None``) or the user's files, as token ids; cached."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if data_dir is None:
        return _corpus(None, None, level)
    directory = _require_dir(data_dir, "text", "expected train.txt, valid.txt and test.txt")
    key = tuple(_file_key(p) for part in PARTS if (p := _find_text_file(directory, part)))
    return _corpus(key, str(directory), level)


def bits_per_token(loss_nats: float) -> float:
    """Bits per token of a mean cross-entropy in nats."""
    return loss_nats / math.log(2.0)


def _windows(stream: Tensor, length: int) -> ArrayData:
    """Non-overlapping windows of ``length`` tokens and their next-token targets."""
    count = (len(stream) - 1) // length
    if count < 1:
        raise DatasetFormatError(
            f"the training text has {len(stream)} tokens, fewer than one window of {length} + 1"
        )
    inputs = stream[: count * length].view(count, length)
    targets = stream[1 : count * length + 1].view(count, length)
    return ArrayData(inputs, targets)


def _token_loss(outputs: Tensor, targets: Tensor | None) -> Tensor:
    assert targets is not None
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))


class _Streams:
    """Stateful truncated BPTT: the batch order over parallel streams and the carried state."""

    def __init__(self) -> None:
        self.state: tuple[Tensor, ...] | None = None

    def order(self, size: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
        per_stream = size // batch_size
        shift = int(torch.randint(per_stream, (1,), generator=generator))
        starts = torch.arange(batch_size) * per_stream
        for k in range(per_stream):
            position = (k + shift) % per_stream
            if k == 0 or position == 0:  # a new epoch, or the rotation wrapped: no history
                self.state = None
            yield starts + position

    def forward(self, model: nn.Module, inputs: Tensor) -> Tensor:
        state = self.state
        if state is not None and state[0].shape[1] != len(inputs):
            state = None
        outputs, new_state = model(inputs, state)
        self.state = tuple(s.detach() for s in new_state)
        return outputs


def _lstm_measure(stream: Tensor, model: nn.Module) -> dict[str, float]:
    columns = max(1, (len(stream) - 1) // EVAL_COLUMN_TOKENS)
    length = (len(stream) - 1) // columns
    inputs = stream[: columns * length].view(columns, length)
    targets = stream[1 : columns * length + 1].view(columns, length)
    device = next(model.parameters()).device
    total, state = 0.0, None
    for start in range(0, length, EVAL_CHUNK):
        chunk = slice(start, start + EVAL_CHUNK)
        outputs, state = model(inputs[:, chunk].to(device), state)
        loss = F.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]),
            targets[:, chunk].reshape(-1).to(device),
            reduction="sum",
        )
        total += float(loss)
    mean = total / (columns * length)
    return {"loss": mean, "metric": bits_per_token(mean)}


def _window_measure(
    stream: Tensor, context: int, model: nn.Module, batch: int = 64
) -> dict[str, float]:
    windows = _windows(stream, context)
    device = next(model.parameters()).device
    total = 0.0
    for start in range(0, len(windows), batch):
        inputs, targets = windows.batch(slice(start, start + batch))
        outputs = model(inputs.to(device))
        assert targets is not None
        total += float(
            F.cross_entropy(
                outputs.reshape(-1, outputs.shape[-1]),
                targets.reshape(-1).to(device),
                reduction="sum",
            )
        )
    mean = total / windows.inputs.numel()
    return {"loss": mean, "metric": bits_per_token(mean)}


def _corpus_info(corpus: Corpus, train: ArrayData) -> dict[str, Any]:
    """What the run's record says about the text (examples are windows; these are tokens)."""
    return {
        "vocabulary": len(corpus.vocabulary),
        "tokens": {part: len(corpus.part(part)) for part in PARTS},
        "train_tokens_used": int(train.inputs.numel()),
    }


def _positive(options: Mapping[str, Any], name: str) -> int:
    value = options[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"task option {name} must be an integer >= 1, got {value!r}")
    return value


def _streams(corpus: Corpus, options: Mapping[str, Any]) -> dict[str, Tensor]:
    """The parts' token streams; ``train_tokens`` keeps a prefix of the training text."""
    streams = {part: corpus.part(part) for part in PARTS}
    if options["train_tokens"] is not None:
        streams["train"] = streams["train"][: _positive(options, "train_tokens")]
    return streams


def build_lstm(seed: int, data_dir: str | None, options: Mapping[str, Any]) -> Problem:
    """The ``text-lstm`` problem: an LSTM LM with stateful truncated BPTT."""
    corpus = load_corpus(data_dir, options["level"])
    layers = _positive(options, "layers")
    bptt = _positive(options, "bptt")
    clip = options["clip"]
    if clip is not None and not (isinstance(clip, (int, float)) and clip > 0):
        raise ValueError(
            f"task option clip must be a number > 0 or None (no clipping), got {clip!r}"
        )
    model = CharLSTM(
        len(corpus.vocabulary),
        _positive(options, "embedding"),
        _positive(options, "hidden"),
        layers,
    )
    carry = _Streams()
    streams = _streams(corpus, options)
    train = _windows(streams["train"], bptt)
    return Problem(
        model,
        train,
        _windows(corpus.test, bptt),
        _token_loss,
        "bpc",
        drop_last=True,
        valid=_windows(corpus.valid, bptt),
        info=_corpus_info(corpus, train),
        forward=carry.forward,
        batch_order=carry.order,
        clip_grad_norm=None if clip is None else float(clip),
        measure=lambda module, part: _lstm_measure(streams[part], module),
    )


def build_transformer(seed: int, data_dir: str | None, options: Mapping[str, Any]) -> Problem:
    """The ``text-transformer`` problem: a decoder-only Transformer on shuffled windows."""
    corpus = load_corpus(data_dir, options["level"])
    context = _positive(options, "context")
    model = DecoderTransformer(
        len(corpus.vocabulary),
        _positive(options, "width"),
        _positive(options, "layers"),
        _positive(options, "heads"),
        context,
    )
    streams = _streams(corpus, options)
    train = _windows(streams["train"], context)
    clip = options["clip"]
    return Problem(
        model,
        train,
        _windows(corpus.test, context),
        _token_loss,
        "bpc",
        valid=_windows(corpus.valid, context),
        info=_corpus_info(corpus, train),
        clip_grad_norm=None if clip is None else float(clip),
        measure=lambda module, part: _window_measure(streams[part], context, module),
    )
