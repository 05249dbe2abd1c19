"""`optlab speed` (benchmarks/step_speed.py) runs end to end and writes its report.

Timing is never asserted: only that every path it promises was measured and
written down, so the benchmark cannot rot unnoticed.
"""

from __future__ import annotations

import importlib
import importlib.util
import re

import pytest

import optlab
from optlab.cli import main
from optlab.cli_speed import _load_benchmark

#: The byte model the benchmark used to spell out by hand (the oracle): bytes one step
#: reads and writes per fp32 parameter, p and g read, p and every state tensor written.
BYTES_PER_PARAM = {
    "sgd": 12,  # p, g -> p
    "momentum": 20,  # p, g, buf -> p, buf
    "nag": 20,
    "adagrad": 20,  # p, g, sum -> p, sum
    "adadelta": 28,  # p, g, square_avg, acc_delta -> p, square_avg, acc_delta
    "rmsprop": 20,  # p, g, square_avg -> p, square_avg
    "adam": 28,  # p, g, m, v -> p, m, v
    "adamw": 28,
    "amsgrad": 36,  # + v_max read and written
    "yogi": 28,
    "eadam": 28,
    "adabelief": 28,  # p, g, m, s -> p, m, s
}


def test_the_benchmark_measures_the_core_optimizers_with_bytes_counted_off_their_state():
    benchmark = _load_benchmark()
    assert benchmark.OPTLAB_NAMES == tuple(optlab.list_optimizers("core", builtin_only=True))
    counted = {name: benchmark.step_bytes_per_param(name) for name in benchmark.OPTLAB_NAMES}
    assert counted == BYTES_PER_PARAM
    assert list(counted) == list(BYTES_PER_PARAM)  # and in the catalogue's order


def test_speed_measures_every_path_and_writes_the_report(tmp_path, capsys):
    output = tmp_path / "benchmarks.md"
    argv = ["speed", "--optimizers", "sgd", "--regimes", "small", "--repeats", "2"]
    argv += ["--no-first-step", "--no-memory", "--output", str(output)]
    assert main(argv) == 0
    capsys.readouterr()
    report = output.read_text()
    assert "## Regime `small`: 500 tensors of 4,096" in report
    rows = {
        (cells[1].strip(), cells[2].strip(), cells[3].strip())
        for line in report.splitlines()
        if (cells := line.split("|"))[1:2] and cells[1].strip() in ("sgd", "adam")
    }
    optlab_paths = {path for name, implementation, path in rows if implementation == "optlab"}
    assert {path.removesuffix(" (default)") for path in optlab_paths} == {
        "loop",
        "foreach",
        "fused",
    }
    # Plain SGD is one pass already: its default is foreach, not the fused kernel.
    assert ("sgd", "optlab", "foreach (default)") in rows
    assert ("sgd", "torch.optim", "loop (default)") in rows
    assert ("adam", "torch.optim", "fused") in rows  # the yardstick
    # Every measured row carries its state's bytes and a number of milliseconds, not an error.
    for line in report.splitlines():
        if line.startswith("| sgd |"):
            assert re.match(r"\| sgd \| [^|]+ \| [^|]+ \| fp32 \| 0\.00 \| \d+\.\d+ \|", line), line
    assert "The issue's bars, checked against this run" in report
    assert "each state tensor the optimizer keeps (12 for sgd; 28 for adam)." in report


def test_speed_refuses_zero_rounds_or_repeats(tmp_path, capsys):
    output = tmp_path / "benchmarks.md"
    for flag in ("--rounds", "--repeats"):
        argv = ["speed", "--optimizers", "sgd", flag, "0", "--output", str(output)]
        assert main(argv) == 2
        assert "must be at least 1, got" in capsys.readouterr().err
    assert not output.exists()


def _table_rows(report: str) -> dict[tuple[str, str, str, str], list[str]]:
    """The report's measured rows: (optimizer, implementation, path, state) -> the other cells."""
    rows = {}
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) == 13 and cells[0] not in ("optimizer", "---"):
            rows[tuple(cells[:4])] = cells[4:]
    return rows


def test_state_dtypes_give_a_row_each_with_the_bytes_of_state_kept(tmp_path, capsys):
    output = tmp_path / "benchmarks.md"
    argv = ["speed", "--optimizers", "adam", "lars", "--state-dtypes", "none", "bfloat16", "int8"]
    argv += ["--regimes", "tiny", "--paths", "foreach", "--repeats", "2", "--rounds", "1"]
    argv += ["--no-first-step", "--no-memory", "--no-references", "--output", str(output)]
    assert main(argv) == 0
    capsys.readouterr()
    report = output.read_text()
    assert "## Regime `tiny`: 8 tensors of 4,096" in report
    rows = _table_rows(report)
    path = "foreach (default)"
    # State per parameter, off the optimizer: m and v in fp32 (8), bf16 (4), or int8
    # codes plus a float32 absmax per block of 256 each (2 + 2 * 4 / 256 = 2.03).
    assert rows[("adam", "optlab", path, "fp32")][0] == "8.00"
    assert rows[("adam", "optlab", path, "bf16")][0] == "4.00"
    assert rows[("adam", "optlab", path, "int8")][0] == "2.03"
    assert rows[("adam", "torch.optim", "fused", "fp32")][0] == "8.00"  # the yardstick
    # No state_dtype option (LARS: layer-wise, SGD takes it now): full precision only, and said so.
    assert {key[3] for key in rows if key[0] == "lars"} == {"fp32"}
    assert "lars: no state_dtype option" in report
    assert "the reference packages: --no-references" in report
    for cells in rows.values():
        assert re.fullmatch(r"\d+\.\d+", cells[1]), cells  # a median, not an error
    assert "- tiny: adam foreach int8: " in report  # against its fp32 row


def test_state_nbytes_counts_every_state_tensor_but_step_and_shared_ones_once():
    import torch

    benchmark = _load_benchmark()
    shared = torch.zeros(256)

    class Optimizer:
        state = {
            0: {"step": torch.zeros(1000), "m": torch.zeros(10), "map": shared},
            1: {0: {"v": torch.zeros(10, dtype=torch.bfloat16), "map": shared}, "n": 3},
        }

    assert benchmark.state_nbytes(Optimizer()) == 40 + 1024 + 20


def test_the_references_for_compact_state_run_and_keep_it(monkeypatch):
    """heavyball's AdamW (fp32 and bf16 state) and bitsandbytes' Adam8bit: measured where
    installed (heavyball eagerly here, to keep the test short), a note where not."""
    import torch

    benchmark = _load_benchmark()
    references, notes = benchmark._reference_factories(("none", "bfloat16", "int8"))
    expected = {("heavyball", "none"): 8.0, ("heavyball", "bfloat16"): 4.0}
    expected[("bitsandbytes", "int8")] = 2.03125 + 2 * 256 * 4 / (8 * 4096)  # + its two maps
    planned = []
    for package in ("heavyball", "bitsandbytes"):
        if importlib.util.find_spec(package) is None:
            assert any(note.startswith(f"{package}: not used") for note in notes), notes
            continue
        if package == "heavyball":
            monkeypatch.setattr(importlib.import_module("heavyball.utils"), "compile_mode", None)
        for reference in references["adam"]:
            if reference.label.startswith(package):
                row = benchmark.Row("tiny", "adam", reference.label, "default", reference.state)
                planned.append((row, reference.factory, expected.pop((package, reference.state))))
        assert not [key for key in expected if key[0] == package]  # every state it has
    bench = benchmark.Bench("cpu", repeats=2, scale=1, memory=False, rounds=1)
    bench.measure_all([(row, factory) for row, factory, _ in planned], log=lambda _: None)
    for row, _, state_bytes in planned:
        assert not row.failed, row.note
        assert row.state_bytes_per_param == pytest.approx(state_bytes), row.implementation
        assert row.bytes_per_param == pytest.approx(12 + 2 * state_bytes)
    # heavyball clears p.grad in its step: Regrad gives it back, so every step moves p.
    for row, factory, _ in planned:
        if row.implementation.startswith("heavyball"):
            params = bench.fresh_params("tiny")
            optimizer = factory(params)
            for _ in range(3):
                before = params[0].detach().clone()
                optimizer.prepare()
                optimizer.step()
                assert params[0].grad is None
                assert not torch.equal(before, params[0])
