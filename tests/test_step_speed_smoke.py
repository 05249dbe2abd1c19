"""`optlab speed` (benchmarks/step_speed.py) runs end to end and writes its report.

Timing is never asserted: only that every path it promises was measured and
written down, so the benchmark cannot rot unnoticed.
"""

from __future__ import annotations

import re

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
    # Every measured row carries a number of milliseconds, not an error.
    for line in report.splitlines():
        if line.startswith("| sgd |"):
            assert re.match(r"\| sgd \| [^|]+ \| [^|]+ \| \d+\.\d+ \|", line), line
    assert "The issue's bars, checked against this run" in report
    assert "each state tensor the optimizer keeps (12 for sgd; 28 for adam)." in report


def test_speed_refuses_zero_rounds_or_repeats(tmp_path, capsys):
    output = tmp_path / "benchmarks.md"
    for flag in ("--rounds", "--repeats"):
        argv = ["speed", "--optimizers", "sgd", flag, "0", "--output", str(output)]
        assert main(argv) == 2
        assert "must be at least 1, got" in capsys.readouterr().err
    assert not output.exists()
