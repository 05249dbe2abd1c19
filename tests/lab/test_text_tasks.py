"""Language-model tasks: bits per character against known values, the text and its
files, stateful truncated BPTT, causality, learning and determinism."""

from __future__ import annotations

import math

import pytest
import torch

from optlab.lab.data import DatasetFormatError, DatasetNotFoundError
from optlab.lab.runs import RunSpec
from optlab.lab.tasks import get_task, measure_part
from optlab.lab.text import load_corpus
from optlab.lab.train import train

#: A shortened run: the first 120 000 training characters, 2 epochs (~7 s together).
SHORT = {"train_tokens": 120_000}


def unigram_entropy_bits(tokens: torch.Tensor) -> float:
    counts = torch.bincount(tokens).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


def without_timing(result) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_time"} for row in result.history]


def test_builtin_text_is_split_90_5_5_with_one_vocabulary():
    corpus = load_corpus(None, "char")
    sizes = [len(corpus.train), len(corpus.valid), len(corpus.test)]
    total = sum(sizes)
    assert total > 400_000  # pydoc_data.topics: about 465 000 characters
    assert [round(size / total, 3) for size in sizes] == [0.9, 0.05, 0.05]
    assert all(int(part.max()) < len(corpus.vocabulary) for part in (corpus.train, corpus.test))


@pytest.mark.parametrize("task", ["text-lstm", "text-transformer"])
def test_bits_per_character_of_a_uniform_model_is_log2_of_the_vocabulary(task):
    problem = get_task(task).build(0)
    head = problem.model.decoder if task == "text-lstm" else problem.model.head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    vocabulary = head.out_features
    for part in ("valid", "test"):
        measured = measure_part(problem, problem.model, part)
        assert measured["loss"] == pytest.approx(math.log(vocabulary), rel=1e-6)
        assert measured["metric"] == pytest.approx(math.log2(vocabulary), rel=1e-6)


def test_lstm_batches_continue_every_stream_window_by_window_and_reset_at_the_wrap():
    problem = get_task("text-lstm").build(0, options=SHORT)
    generator = torch.Generator().manual_seed(3)
    windows, batch = len(problem.train), 8
    per_stream = windows // batch
    seen = []
    for index in problem.batch_order(windows, batch, generator):
        reset = problem.forward.__self__.state is None
        seen.append((index.clone(), reset))
        problem.forward.__self__.state = (torch.zeros(1), torch.zeros(1))  # as after a step
    assert len(seen) == per_stream
    for (before, _), (after, reset) in zip(seen, seen[1:], strict=False):
        wrapped = bool((after % per_stream == 0).all()) and bool((before % per_stream != 0).all())
        if wrapped:
            assert reset and torch.equal(after, before - (per_stream - 1))
        else:
            assert not reset and torch.equal(after, before + 1)  # the next window of each stream
    assert seen[0][1]  # every epoch starts from a zero state
    # Consecutive windows are consecutive text: the last target of one is the next input's start.
    first = problem.train.targets[seen[0][0][0]]
    assert int(first[-1]) == int(problem.train.inputs[seen[0][0][0] + 1][0])


def test_transformer_attention_is_causal():
    problem = get_task("text-transformer").build(0)
    tokens = problem.train.inputs[:2].clone()
    changed = tokens.clone()
    changed[:, 40:] = (changed[:, 40:] + 1) % 50
    problem.model.eval()
    with torch.no_grad():
        a, b = problem.model(tokens), problem.model(changed)
    assert torch.equal(a[:, :40], b[:, :40])
    assert not torch.allclose(a[:, 40:], b[:, 40:])


@pytest.mark.parametrize("task", ["text-lstm", "text-transformer"])
def test_short_run_learns_below_the_unigram_entropy_and_repeats_exactly(task):
    spec = RunSpec(task, "adam", hparams={"lr": 3e-3}, epochs=2, task_options=SHORT)
    first = train(spec, progress=False, threads=1)
    unigram = unigram_entropy_bits(load_corpus(None, "char").test)
    assert first.status == "ok"
    assert first.history[0]["metric"] > unigram  # an untrained model is worse than unigrams
    assert first.final["metric"] < unigram - 0.5
    assert without_timing(train(spec, progress=False, threads=1)) == without_timing(first)
    if task == "text-lstm":
        assert first.info["clip_grad_norm"] == 0.25
        assert first.info["schedule"] == "constant"
    else:
        assert first.info["schedule"] == "warmup-cosine"  # the task's default
        assert first.history[-1]["lr"] < 1e-4  # cosine ends near zero


def test_seeds_change_the_lstm_run():
    runs = [
        train(
            RunSpec("text-lstm", "adam", seed=s, epochs=1, task_options={"train_tokens": 20_000}),
            progress=False,
            threads=1,
        )
        for s in (0, 1)
    ]
    assert runs[0].final["metric"] != runs[1].final["metric"]


def write_parts(directory, texts):
    for part, text in texts.items():
        (directory / f"ptb.{part}.txt").write_text(text)


def test_word_level_files_from_data_dir_train_a_word_model(tmp_path):
    lines = ["the cat sat on the mat", "a dog sat on a log", "the dog saw the cat"] * 40
    write_parts(tmp_path, {p: "\n".join(lines) + "\n" for p in ("train", "valid", "test")})
    corpus = load_corpus(str(tmp_path), "word")
    assert "<eos>" in corpus.vocabulary and len(corpus.vocabulary) == 10
    spec = RunSpec(
        "text-lstm",
        "adam",
        hparams={"lr": 1e-2},
        epochs=3,
        batch_size=4,
        data_dir=str(tmp_path),
        task_options={"level": "word", "bptt": 8},
    )
    result = train(spec, progress=False, threads=1)
    assert result.info["vocabulary"] == 10
    assert result.history[0]["metric"] == pytest.approx(math.log2(10), abs=0.1)
    assert result.final["metric"] < 2.0


def test_missing_or_empty_text_files_are_refused_by_name(tmp_path):
    write_parts(tmp_path, {"train": "some text\n", "valid": "more text\n"})
    with pytest.raises(DatasetNotFoundError, match=r"no test file .*ptb\.test\.txt"):
        get_task("text-lstm").build(0, str(tmp_path))
    (tmp_path / "ptb.test.txt").write_text("  \n")
    with pytest.raises(DatasetFormatError, match=r"ptb\.test\.txt: the file is empty"):
        get_task("text-lstm").build(0, str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        get_task("text-lstm").build(0, str(tmp_path / "nowhere"))


def test_bad_text_options_are_refused_with_the_value():
    with pytest.raises(ValueError, match="layers must be an integer >= 1, got 0"):
        get_task("text-lstm").build(0, options={"layers": 0})
    with pytest.raises(ValueError, match="level must be one of char, word, got 'byte'"):
        get_task("text-lstm").build(0, options={"level": "byte"})
