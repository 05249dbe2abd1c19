"""Trajectories on test functions: formulas, minima, runs, tuning, pictures, the CLI.

Oracles: hand-computed function values, central finite differences, the
closed-form iterates of gradient descent on quadratics, torch.optim.SGD, and
trajectories written out by hand for the table logic.
"""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from PIL import Image

from optlab.cli import main
from optlab.lab.plots import optimizer_color
from optlab.lab.trajectories import outputs, plots
from optlab.lab.trajectories.functions import FUNCTIONS, get_function
from optlab.lab.trajectories.paper import PAPER_CASES, PaperCase, paper_table, run_paper
from optlab.lab.trajectories.run import (
    ESCAPE_FACTOR,
    Trajectory,
    run_optimizer,
    simulate,
    steps_to_tolerance,
    summary_row,
    tune_lr,
)

# The arguments of every |.| in the non-smooth functions: finite differences
# are only compared where each of them is clearly away from zero.
KINKS = {
    "abs": lambda x, y: (x, y),
    "abs-rotated": lambda x, y: (x + y, x - y),
    "abs-scaled": lambda x, y: (x, y),
}


def _value(name: str, *point: float) -> float:
    return float(get_function(name)(torch.tensor(point, dtype=torch.float64)))


# ---------------------------------------------------------------- functions


@pytest.mark.parametrize(
    ("name", "point", "expected"),
    [
        ("rosenbrock", (0.0, 0.0), 1.0),
        ("rosenbrock", (-1.0, 2.0), 4.0 + 100.0),
        ("rastrigin", (0.5, 0.5), 20 + 0.25 + 10 + 0.25 + 10),
        ("rastrigin", (1.0, 0.0), 20 + 1 - 10 - 10),
        ("beale", (0.0, 0.0), 1.5**2 + 2.25**2 + 2.625**2),
        ("beale", (1.0, 1.0), 1.5**2 + 2.25**2 + 2.625**2),
        ("beale", (2.0, -1.0), (1.5 - 4) ** 2 + 2.25**2 + (2.625 - 4) ** 2),
        ("himmelblau", (0.0, 0.0), 121.0 + 49.0),
        ("booth", (0.0, 0.0), 49.0 + 25.0),
        ("saddle", (2.0, 3.0), -5.0),
        ("ill-conditioned", (-5.0, -2.0), 2.5 + 8.0),
        ("parabola", (5.0,), 25.0),
        ("abs", (-2.0, 0.5), 2.5),
        ("abs-rotated", (2.0, 1.0), 3.0 + 0.1),
        ("quadratic-rotated", (2.0, 1.0), 9.0 + 0.1),
        ("abs-scaled", (-2.0, 0.5), 0.2 + 0.5),
    ],
)
def test_function_values_match_the_published_formulas(name, point, expected):
    assert _value(name, *point) == pytest.approx(expected, rel=1e-14, abs=1e-14)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_gradient_equals_central_finite_difference(name):
    function = FUNCTIONS[name]
    rng = np.random.default_rng(0)
    (x_low, x_high), (y_low, y_high) = function.window
    checked = 0
    while checked < 6:
        point = [rng.uniform(x_low, x_high)]
        if function.dim == 2:
            point.append(rng.uniform(y_low, y_high))
        if name in KINKS and min(abs(v) for v in KINKS[name](*point)) < 0.05:
            continue
        xy = torch.tensor(point, dtype=torch.float64, requires_grad=True)
        value = function(xy)
        (gradient,) = torch.autograd.grad(value, xy)
        step = 1e-6
        estimate = torch.empty_like(gradient)
        with torch.no_grad():
            for axis in range(function.dim):
                shift = torch.zeros_like(xy)
                shift[axis] = step
                estimate[axis] = (function(xy + shift) - function(xy - shift)) / (2 * step)
        scale = 1.0 + abs(float(value.detach()))
        torch.testing.assert_close(gradient, estimate, rtol=1e-6, atol=1e-5 * scale)
        checked += 1


@pytest.mark.parametrize("name", [n for n, f in FUNCTIONS.items() if f.minima])
def test_every_listed_minimum_is_stationary_with_the_stated_value(name):
    function = FUNCTIONS[name]
    for minimum in function.minima:
        xy = torch.tensor(minimum, dtype=torch.float64, requires_grad=True)
        value = function(xy)
        assert float(value.detach()) == pytest.approx(function.min_value, abs=1e-12)
        if function.smooth:
            (gradient,) = torch.autograd.grad(value, xy)
            assert float(gradient.norm()) < 1e-9
            hessian = torch.autograd.functional.hessian(function, xy.detach())
            assert float(torch.linalg.eigvalsh(hessian).min()) > 0
        else:
            # a kink: no gradient to test; every nearby point must be higher
            rng = np.random.default_rng(1)
            for _ in range(64):
                direction = torch.from_numpy(rng.normal(size=function.dim))
                nearby = xy.detach() + 1e-3 * direction / direction.norm()
                assert float(function(nearby)) > function.min_value


def test_saddle_has_no_minimum_so_distance_and_steps_are_not_available():
    saddle = get_function("saddle")
    assert saddle.minima == () and saddle.min_value is None
    trajectory = run_optimizer(saddle, "adam", lr=0.01, steps=50)
    row = summary_row(saddle, trajectory, 1e-2)
    assert row["final_distance"] is None and row["steps_to_tolerance"] == "n/a"
    assert abs(trajectory.points[-1, 1]) > abs(saddle.start[1])  # it left the ridge
    with pytest.raises(ValueError, match="no minimum"):
        tune_lr(saddle, "adam", steps=10, grid=[0.1])


def test_himmelblau_distance_is_to_the_nearest_of_its_four_minima():
    himmelblau = get_function("himmelblau")
    points = torch.tensor([[3.0, 2.5], [-2.8, 3.1], [-3.7, -3.2], [3.6, -1.9]], dtype=torch.float64)
    expected = [
        0.5,
        math.hypot(0.005118086952745, 0.031312518250573),
        math.hypot(0.079310253377747, 0.0831859912861696),
        math.hypot(0.0155716596695083, 0.0518734730355966),
    ]
    np.testing.assert_allclose(himmelblau.distance_to_minimum(points).numpy(), expected, rtol=1e-9)


def test_unknown_function_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown function 'nope'; valid names: rosenbrock"):
        get_function("nope")


# ---------------------------------------------------------------- runs


def test_gradient_descent_on_x_squared_with_lr_half_reaches_zero_in_one_step():
    parabola = get_function("parabola")
    for optimizer in (torch.optim.SGD, "sgd"):
        trajectory = run_optimizer(parabola, optimizer, lr=0.5, steps=3, label="gd")
        np.testing.assert_array_equal(trajectory.points[:, 0], [5.0, 0.0, 0.0, 0.0])
        assert steps_to_tolerance(trajectory.distances(parabola), 1e-12) == 1
        assert summary_row(parabola, trajectory, 1e-12)["steps_to_tolerance"] == 1


def test_steps_to_tolerance_is_the_first_step_below_it():
    distances = np.array([3.0, 2.0, 0.5, 0.05, 0.2, 0.001])
    assert steps_to_tolerance(distances, 0.1) == 3
    assert steps_to_tolerance(distances, 0.01) == 5
    assert steps_to_tolerance(distances, 1e-4) is None
    assert steps_to_tolerance(distances, 10.0) == 0


def test_every_iterate_is_recorded_in_float64_as_gradient_descent_prescribes():
    # f = 0.1x² + 2y²: GD multiplies x by (1 - 0.2 lr) and y by (1 - 4 lr) each step
    quadratic = get_function("ill-conditioned")
    lr, steps = 0.1, 40
    trajectory = run_optimizer(quadratic, "sgd", lr=lr, steps=steps)
    t = np.arange(steps + 1)
    expected = np.stack([-5.0 * (1 - 0.2 * lr) ** t, -2.0 * (1 - 4 * lr) ** t], axis=1)
    assert trajectory.points.dtype == np.float64 and trajectory.points.shape == (steps + 1, 2)
    np.testing.assert_allclose(trajectory.points, expected, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(
        trajectory.losses(quadratic),
        0.1 * expected[:, 0] ** 2 + 2 * expected[:, 1] ** 2,
        rtol=1e-12,
    )


def test_adam_reaches_the_rosenbrock_minimum_within_bounded_steps():
    rosenbrock = get_function("rosenbrock")
    trajectory = run_optimizer(rosenbrock, "adam", lr=0.2, steps=2500)
    distances = trajectory.distances(rosenbrock)
    reached = steps_to_tolerance(distances, 1e-2)
    assert reached is not None and reached <= 2200
    assert distances[-1] < 1e-3
    assert trajectory.diverged_at is None


@pytest.mark.parametrize("optimizer", ["adam", "adabelief", "momentum", "rmsprop"])
def test_learning_rates_run_together_follow_the_same_paths_as_runs_alone(optimizer):
    beale = get_function("beale")
    lrs = [1e-3, 1e-2, 5e-2]
    together, diverged = simulate(beale, optimizer, lrs, steps=60)
    for index, lr in enumerate(lrs):
        alone = run_optimizer(beale, optimizer, lr=lr, steps=60)
        assert diverged[index] == alone.diverged_at
        np.testing.assert_array_equal(together[: len(alone.points), index], alone.points)


def test_tuning_picks_the_grid_lr_that_ends_nearest_the_minimum():
    quadratic = get_function("ill-conditioned")
    grid, steps = [0.01, 0.1, 0.3, 0.45, 1.0], 30
    trajectory = tune_lr(quadratic, "sgd", steps=steps, grid=grid)

    def final_distance(lr):  # closed form of GD on 0.1x² + 2y²
        return math.hypot(-5 * (1 - 0.2 * lr) ** steps, -2 * (1 - 4 * lr) ** steps)

    expected = {lr: final_distance(lr) for lr in grid}
    best = min(expected, key=expected.get)
    assert best == 0.45 and trajectory.lr == best and trajectory.lr_source == "tuned"
    assert trajectory.tuning["grid"] == grid
    for lr, recorded in zip(grid, trajectory.tuning["final_distances"], strict=True):
        if lr == 1.0:  # y is multiplied by -3 each step: diverged
            assert recorded is None
        else:
            assert recorded == pytest.approx(expected[lr], rel=1e-10)


def test_a_run_that_blows_up_is_marked_diverged_where_it_leaves():
    quadratic = get_function("ill-conditioned")
    trajectory = run_optimizer(quadratic, "sgd", lr=1.0, steps=40)
    escape = ESCAPE_FACTOR * max(high - low for low, high in quadratic.window)
    # y_t = -2 (-3)^t; x_t = -5 (0.8)^t stays put
    first = next(t for t in range(41) if abs(-2 * (-3) ** t + 2) > escape)
    assert trajectory.diverged_at == first
    assert len(trajectory.points) == first
    assert summary_row(quadratic, trajectory, 0.01)["status"] == f"diverged at step {first}"


def test_gradient_clipping_happens_only_when_asked_and_is_recorded():
    parabola = get_function("parabola")
    clipped = run_optimizer(parabola, "sgd", lr=1.0, steps=4, clip_grad_norm=0.5)
    np.testing.assert_allclose(clipped.points[:, 0], [5.0, 4.5, 4.0, 3.5, 3.0])
    assert clipped.clip_grad_norm == 0.5
    plain = run_optimizer(parabola, "sgd", lr=0.1, steps=1)
    assert plain.points[1, 0] == pytest.approx(5.0 - 0.1 * 10.0) and plain.clip_grad_norm is None


# ---------------------------------------------------------------- tables


def _hand_trajectory(name: str, xs: list[float], diverged_at: int | None = None) -> Trajectory:
    points = np.array([[x, 0.0] for x in xs])
    return Trajectory(name, {"lr": 0.1}, points, steps=len(xs) - 1, diverged_at=diverged_at)


def test_paper_table_counts_steps_to_the_optimum_and_names_the_fastest():
    case = PaperCase("(x)", "abs", (2.0, 0.0), ((-3.0, 3.0), (-3.0, 3.0)))
    function = case.build()
    results = [
        (
            case,
            function,
            [
                _hand_trajectory("slow", [2.0, 1.0, 0.5, 0.005]),
                _hand_trajectory("fast", [2.0, 0.001, 0.5, 0.5]),
                _hand_trajectory("never", [2.0, 1.9, 1.8, 1.7]),
                _hand_trajectory("boom", [2.0, 3.0], diverged_at=2),
            ],
        )
    ]
    columns, rows, records = paper_table(results, 0.01)
    assert columns == ["case", "f", "start", "slow", "fast", "never", "boom", "fastest"]
    assert rows == [["(x)", "|x| + |y|", "(2, 0)", "3", "1", "never", "diverged (2)", "fast"]]
    assert [r["steps_to_tolerance"] for r in records] == [3, 1, None, None]


def test_paper_cases_start_where_documented():
    starts = {case.function: case.start for case in PAPER_CASES}
    assert starts["beale"] == (-2.5, -2.5) and starts["rosenbrock"] == (-4.0, -4.0)
    assert [case.function for case in PAPER_CASES] == [
        "abs",
        "abs-rotated",
        "quadratic-rotated",
        "abs-scaled",
        "beale",
        "rosenbrock",
    ]


# ---------------------------------------------------------------- pictures


@pytest.fixture(scope="module")
def booth_paths():
    booth = get_function("booth")
    return booth, [run_optimizer(booth, name, lr=0.05, steps=40) for name in ("sgd", "adam")]


def test_contour_plot_is_a_png_of_the_requested_size(tmp_path, booth_paths):
    booth, trajectories = booth_paths
    path = plots.plot_paths(booth, trajectories, tmp_path / "p.png", figsize=(6.0, 4.0), dpi=50)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (300, 200)
        # the paths are drawn: each optimizer's colour appears in the picture
        colours = _colours(image)
    assert {_rgb(optimizer_color("sgd")), _rgb(optimizer_color("adam"))} <= colours


def _rgb(colour) -> tuple[int, int, int]:
    return tuple(round(255 * channel) for channel in to_rgb(colour))


def _colours(image) -> set[tuple[int, int, int]]:
    return {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 20)}


def test_an_optimizer_has_the_lab_colour_in_every_figure_whatever_its_position(tmp_path):
    # Positions differ on purpose: adam is first here, second in the paper figure.
    booth = get_function("booth")
    alone = [run_optimizer(booth, name, lr=0.05, steps=30) for name in ("adam", "momentum")]
    single = plots.plot_paths(booth, alone, tmp_path / "t.png", figsize=(6.0, 4.0), dpi=50)
    results = run_paper(lr=0.05, steps=30, cases=PAPER_CASES[:2])
    assert [t.optimizer for t in results[0][2]] == ["momentum", "adam", "adabelief"]
    panels = [(function, paths, case.label) for case, function, paths in results]
    paper = plots.plot_panels(panels, tmp_path / "p.png", columns=2, panel_size=(3, 3), dpi=50)
    with Image.open(single) as first, Image.open(paper) as second:
        pictures = [_colours(first), _colours(second)]
    for name in ("adam", "momentum"):
        for picture in pictures:
            assert _rgb(optimizer_color(name)) in picture, name
    for name in ("sgd", "adam", "momentum", "adabelief", "yogi"):
        assert plots.path_style(name)["color"] == optimizer_color(name)
    assert plots.path_style("adabelief")["linewidth"] > plots.path_style("adam")["linewidth"]


def test_gif_has_several_frames_of_the_requested_size(tmp_path, booth_paths):
    booth, trajectories = booth_paths
    path = plots.animate_paths(
        booth, trajectories, tmp_path / "a.gif", frames=8, figsize=(4.0, 3.0), dpi=40
    )
    with Image.open(path) as image:
        assert image.format == "GIF" and image.size == (160, 120)
        assert 6 <= image.n_frames <= 10


def test_one_dimensional_function_plots_too(tmp_path):
    parabola = get_function("parabola")
    trajectory = run_optimizer(parabola, "rmsprop", lr=0.4, steps=20)
    path = plots.plot_paths(parabola, [trajectory], tmp_path / "p.png", figsize=(5, 4), dpi=40)
    with Image.open(path) as image:
        assert image.size == (200, 160)


def test_json_record_redraws_the_same_paths(tmp_path, booth_paths):
    booth, trajectories = booth_paths
    document = outputs.document(booth, trajectories, tolerance=0.01, settings={"steps": 40})
    outputs.write_json(tmp_path / "t.json", document)
    function, loaded, data = outputs.load_document(tmp_path / "t.json")
    assert function.name == "booth" and function.start == booth.start
    for before, after in zip(trajectories, loaded, strict=True):
        np.testing.assert_array_equal(before.points, after.points)
        assert after.hparams == {"lr": 0.05}
        assert after.effective_hparams == before.effective_hparams
        assert after.effective_hparams["lr"] == 0.05
    assert data["table"][0]["optimizer"] == "sgd"


# ---------------------------------------------------------------- command line


def _cli(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_every_output_for_a_small_case(tmp_path, capsys):
    out = tmp_path / "booth"
    code, stdout, _ = _cli(
        [
            "trajectories",
            "--function",
            "booth",
            "--optimizers",
            "sgd,adam",
            "--lr",
            "0.05",
            "--steps",
            "30",
            "--frames",
            "5",
            "--start=-4,-3",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0
    names = {"trajectories.png", "trajectories.gif", "table.csv", "table.md", "trajectories.json"}
    assert names <= {p.name for p in out.iterdir()}
    assert "| sgd " in stdout and "| adam " in stdout
    data = json.loads((out / "trajectories.json").read_text())
    assert data["function"]["start"] == [-4.0, -3.0]
    assert len(data["trajectories"][0]["points"]) == 31
    assert data["settings"]["clip_grad_norm"] is None
    with (out / "table.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["optimizer"] for r in rows] == ["sgd", "adam"]
    assert float(rows[0]["lr"]) == 0.05


def test_cli_tune_records_the_sweep(tmp_path, capsys):
    code, stdout, _ = _cli(
        [
            "trajectories",
            "-f",
            "ill-conditioned",
            "-o",
            "sgd",
            "--tune",
            "--lr-grid",
            "0.01,1,5",
            "--steps",
            "20",
            "--no-gif",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0 and "(tuned)" in stdout
    data = json.loads((tmp_path / "trajectories.json").read_text())
    tuning = data["trajectories"][0]["tuning"]
    assert len(tuning["grid"]) == 5 and tuning["best_lr"] in tuning["grid"]
    assert data["trajectories"][0]["hparams"]["lr"] == tuning["best_lr"]


def test_cli_paper_writes_the_panel_figure_and_the_steps_table(tmp_path, capsys):
    code, stdout, _ = _cli(
        ["trajectories", "--paper", "--steps", "15", "--lr", "0.01", "--out", str(tmp_path)], capsys
    )
    assert code == 0
    assert {"paper.png", "paper.md", "paper.csv", "paper.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
    with Image.open(tmp_path / "paper.png") as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]
    data = json.loads((tmp_path / "paper.json").read_text())
    assert len(data["cases"]) == 6 and len(data["table"]) == 18
    assert {r["optimizer"] for r in data["table"]} == {"momentum", "adam", "adabelief"}
    assert all(r["lr"] == 0.01 for r in data["table"])
    assert "| (f)  |" in stdout


def test_cli_list_names_every_function(capsys):
    code, stdout, _ = _cli(["trajectories", "--list"], capsys)
    assert code == 0
    for name in FUNCTIONS:
        assert name in stdout


def test_cli_help_shows_an_example(capsys):
    code, stdout, _ = _cli(["trajectories", "--help"], capsys)
    assert code == 0 and "optlab trajectories --function rosenbrock" in stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--function", "nope"], "unknown function 'nope'"),
        (["--function", "booth", "--optimizers", "adam,nope"], "unknown optimizer 'nope'"),
        (["--function", "booth", "--lr", "fast"], "expected a number"),
        (["--function", "booth", "--lr", "-1"], "finite number > 0"),
        (["--function", "booth", "--start", "1,2,3"], "must have 2 coordinate(s)"),
        (["--function", "booth", "--start", "a,b"], "comma-separated numbers"),
        (["--function", "booth", "--lr", "0.1", "--tune"], "not allowed with argument"),
        (["--function", "saddle", "--tune"], "no minimum"),
        (["--function", "booth", "-o", "adam", "--option", "adam.eps"], "NAME.KEY=VALUE"),
        (["--function", "booth", "-o", "adam", "--option", "adam.nope=1"], "does not take"),
        (["--function", "booth", "-o", "adam", "--option", "adam.eps=-1"], "eps"),
        (["--function", "booth", "--steps", "0"], "whole number >= 1"),
        ([], "give --function"),
    ],
)
def test_cli_bad_arguments_print_one_line_and_exit_2(argv, message, capsys, tmp_path):
    code, _, stderr = _cli(["trajectories", *argv, "--out", str(tmp_path)], capsys)
    assert code == 2
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1


def _markdown_cells(line: str) -> list[str]:
    """The cells of one Markdown table row: split at the pipes that are not escaped."""
    inner = line.strip()[1:-1]
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def test_markdown_tables_keep_formulas_with_pipes_in_their_column(tmp_path, capsys):
    code, _, _ = _cli(
        ["trajectories", "--paper", "--steps", "5", "--lr", "0.01", "--out", str(tmp_path)], capsys
    )
    assert code == 0
    lines = [line for line in (tmp_path / "paper.md").read_text().splitlines() if line[:1] == "|"]
    header = _markdown_cells(lines[0])
    rows = [_markdown_cells(line) for line in lines[2:]]
    assert all(len(row) == len(header) for row in rows), lines
    formulas = [row[header.index("f")] for row in rows]
    assert formulas == [case.build().formula for case in PAPER_CASES]
    assert "|x| + |y|" in formulas

    out = tmp_path / "abs"
    argv = ["trajectories", "-f", "abs", "-o", "sgd", "--lr", "0.1", "--steps", "5"]
    code, _, _ = _cli([*argv, "--no-gif", "--out", str(out)], capsys)
    assert code == 0
    lines = [line for line in (out / "table.md").read_text().splitlines() if line[:1] == "|"]
    assert len(_markdown_cells(lines[2])) == len(_markdown_cells(lines[0])) == 7


def _small_run(out, capsys, *extra):
    argv = ["trajectories", "-f", "booth", "-o", "sgd", "--lr", "0.05", "--steps", "5"]
    return _cli([*argv, "--no-gif", *extra, *(["--out", str(out)] if out else [])], capsys)


@pytest.mark.parametrize("command", ["function", "paper", "redraw"])
def test_out_refuses_a_non_empty_directory_without_our_output(tmp_path, capsys, command):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine\n")
    if command == "function":
        code, _, stderr = _small_run(foreign, capsys)
    elif command == "paper":
        argv = ["trajectories", "--paper", "--steps", "5", "--out", str(foreign)]
        code, _, stderr = _cli(argv, capsys)
    else:
        assert _small_run(tmp_path / "ours", capsys)[0] == 0
        argv = ["trajectories", "--redraw", str(tmp_path / "ours"), "--no-gif"]
        code, _, stderr = _cli([*argv, "--out", str(foreign)], capsys)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1
    assert "is not empty and holds no optlab trajectories output" in stderr
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert (foreign / "notes.txt").read_text() == "mine\n"


def test_out_accepts_a_new_or_empty_directory_our_own_output_and_the_default(
    tmp_path, capsys, monkeypatch
):
    (tmp_path / "empty").mkdir()
    assert _small_run(tmp_path / "empty", capsys)[0] == 0
    assert _small_run(tmp_path / "empty", capsys)[0] == 0  # our own output: re-run there
    (tmp_path / "empty" / "extra.txt").write_text("x")  # ours plus something else: still ours
    assert _small_run(tmp_path / "empty", capsys)[0] == 0
    monkeypatch.chdir(tmp_path)
    assert _small_run(None, capsys)[0] == 0
    assert _small_run(None, capsys)[0] == 0
    assert (tmp_path / "results" / "trajectories" / "booth" / "trajectories.json").is_file()


def test_default_learning_rate_and_hyper_parameters_are_recorded_with_their_values(
    tmp_path, capsys
):
    # Oracle: torch.optim's own defaults (optlab's Adam and SGD follow torch.optim 2.13).
    adam = torch.optim.Adam([torch.zeros(1, requires_grad=True)]).defaults
    sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)]).defaults
    argv = ["trajectories", "-f", "booth", "-o", "adam,momentum", "--steps", "5", "--no-gif"]
    code, stdout, _ = _cli([*argv, "--out", str(tmp_path)], capsys)
    assert code == 0
    with (tmp_path / "table.csv").open() as handle:
        rows = {row["optimizer"]: row for row in csv.DictReader(handle)}
    assert float(rows["adam"]["lr"]) == adam["lr"]
    assert float(rows["momentum"]["lr"]) == sgd["lr"]
    assert rows["adam"]["lr_source"] == "default"
    recorded = json.loads(rows["adam"]["hparams"])
    assert recorded["betas"] == list(adam["betas"]) and recorded["eps"] == adam["eps"]
    assert recorded["weight_decay"] == adam["weight_decay"]
    assert json.loads(rows["momentum"]["hparams"])["momentum"] == 0.9
    data = json.loads((tmp_path / "trajectories.json").read_text())
    effective = data["trajectories"][0]["effective_hparams"]
    assert effective["lr"] == adam["lr"] and effective["betas"] == list(adam["betas"])
    assert data["trajectories"][0]["hparams"] == {}  # what was given: nothing
    assert data["table"][0]["lr"] == adam["lr"]
    assert f"{adam['lr']:.3g} (default)" in stdout

    paper = tmp_path / "paper"
    argv = ["trajectories", "--paper", "--steps", "5", "--out", str(paper)]
    assert _cli(argv, capsys)[0] == 0
    with (paper / "paper.csv").open() as handle:
        records = list(csv.DictReader(handle))
    momentum = next(r for r in records if r["optimizer"] == "momentum")
    assert json.loads(momentum["hparams"])["momentum"] == 0.9
    assert json.loads(momentum["hparams"])["lr"] == float(momentum["lr"])


def test_a_schedule_free_path_records_the_averaged_point_x_not_the_gradient_point_y():
    """Schedule-Free is evaluated at x (after ``eval()``): the path records x at every step."""
    from optlab.optim.schedule_free import AdamWScheduleFree

    function = get_function("rosenbrock")
    steps, lr = 30, 0.05
    path = run_optimizer(function, "adamw-schedulefree", steps=steps, lr=lr)
    point = torch.tensor(function.start, dtype=torch.float64, requires_grad=True)
    optimizer = AdamWScheduleFree([point], lr=lr)
    xs, ys = [], []
    for _ in range(steps):
        optimizer.zero_grad()
        function(point.unsqueeze(0)).sum().backward()
        optimizer.step()
        ys.append(point.detach().clone())
        optimizer.eval()
        xs.append(point.detach().clone())
        optimizer.train()
    np.testing.assert_allclose(path.points[1:], torch.stack(xs).numpy(), rtol=0, atol=1e-12)
    assert np.abs(path.points[1:] - torch.stack(ys).numpy()).max() > 1e-3  # y differs
