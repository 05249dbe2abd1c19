"""`optlab list` prints every registry name with the defaults its reference uses."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch

from _registry_grid import builtin_names
from optlab.cli import main

TORCH_COUNTERPARTS = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def _lines(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, str]:
    assert main(["list", *argv]) == 0
    return {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}


def test_list_names_every_optimizer_and_factorial_cell(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _lines(capsys)
    # Every registry name in catalogue order (test_registry.py holds the names themselves).
    assert list(lines) == builtin_names()
    assert {"belief-eps", "g2-outside", "belief-accum"} <= set(lines)
    assert "eps_mode=accumulated" in lines["belief-accum"]
    assert "second_moment=belief" in lines["belief-accum"]


@pytest.mark.parametrize("name", sorted(TORCH_COUNTERPARTS))
def test_list_shows_torch_optims_default_lr_and_weight_decay(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    signature = inspect.signature(TORCH_COUNTERPARTS[name].__init__).parameters
    line = _lines(capsys)[name]
    assert f"lr={signature['lr'].default:g}" in line
    assert f"weight_decay={signature['weight_decay'].default:g}" in line


def test_list_shows_zero_valued_defaults_and_alias_overrides(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = _lines(capsys)
    assert "momentum=0," in lines["sgd"]
    assert "momentum=0.9" in lines["nag"] and "nesterov=True" in lines["nag"]
    assert "amsgrad=True" in lines["amsgrad"] and "amsgrad" not in lines["adam"]
    assert "eps=1e-16" in lines["adabelief"]


def test_list_into_a_closed_pipe_exits_quietly() -> None:
    command = [sys.executable, "-m", "optlab.cli", "list", "--verbose"]
    producer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert producer.stdout is not None
    producer.stdout.close()  # the reader leaves before optlab writes, like `| head -0`
    _, stderr = producer.communicate(timeout=60)
    assert producer.returncode == 0
    assert b"Traceback" not in stderr
