"""The results store: atomic records, resumable look-ups, refusal to touch foreign or damaged
directories, pandas loading."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from optlab.lab import store as store_module
from optlab.lab.runs import RunResult, RunSpec
from optlab.lab.store import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    Store,
    StoreError,
    load_records,
    load_runs,
)


def make_result(seed: int = 0, lr: float = 1e-3, *, status: str = "ok", rows: int = 3):
    spec = RunSpec(
        "digits-mlp", "adam", {"lr": lr, "betas": (0.9, 0.99)}, seed=seed, epochs=rows - 1
    )
    history = [
        {
            "epoch": float(i),
            "step": 5 * i,
            "examples": 50 * i,
            "lr": lr,
            "train_loss": 2.0 / (i + 1),
            "valid_loss": 2.05 / (i + 1),
            "valid_metric": 0.25 * i,
            "test_loss": 2.1 / (i + 1),
            "metric": 0.3 * i,
            "wall_time": 0.5 * i,
        }
        for i in range(rows)
    ]
    if status == "diverged":
        history[-1]["train_loss"] = math.nan
        history[-1]["test_loss"] = math.inf
    return RunResult(spec, history, "accuracy", True, status, 0.5, {"threads": 1})


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: proof that nothing was changed."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_new_directory_gets_a_manifest_and_records_round_trip(tmp_path):
    store = Store.open(tmp_path / "new" / "study")
    manifest = json.loads((tmp_path / "new" / "study" / MANIFEST_NAME).read_text())
    assert manifest["format"] == "optlab-results" and manifest["version"] == FORMAT_VERSION
    results = [make_result(seed) for seed in range(3)] + [make_result(7, status="diverged")]
    for result in results:
        assert result.spec not in store
        store.put(result)
        assert result.spec in store
    reopened = Store.open_existing(tmp_path / "new" / "study")
    for result in results:
        again = reopened.get(result.spec)
        assert again.spec == result.spec and again.spec.key() == result.spec.key()
        assert json.dumps(again.to_dict(), sort_keys=True) == json.dumps(
            result.to_dict(), sort_keys=True
        )  # NaN and inf survive
    assert reopened.get(make_result(99).spec) is None
    assert len(reopened) == 4
    # Nothing but the records themselves: no temporary file is left behind.
    assert sorted(p.name for p in (tmp_path / "new" / "study" / "runs").iterdir()) == sorted(
        f"{r.spec.key()}.json" for r in results
    )


def test_empty_existing_directory_is_accepted(tmp_path):
    Store.open(tmp_path)
    assert (tmp_path / MANIFEST_NAME).is_file()


def test_foreign_non_empty_directory_is_refused_and_left_untouched(tmp_path):
    (tmp_path / "notes.txt").write_text("my thesis")
    (tmp_path / "runs").mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match="not an optlab results directory"):
        Store.open(tmp_path)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_a_file_in_place_of_the_directory_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        Store.open(tmp_path / "out")


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("{not json", "cannot read the manifest"),
        (json.dumps({"format": "something-else", "version": 1}), "not an optlab results manifest"),
        (json.dumps(["a", "list"]), "not an optlab results manifest"),
        (json.dumps({"format": "optlab-results", "version": 99}), "format version 99"),
    ],
)
def test_unreadable_foreign_or_newer_manifest_is_an_error_that_changes_nothing(
    tmp_path, manifest, message
):
    Store.open(tmp_path).put(make_result())
    (tmp_path / MANIFEST_NAME).write_text(manifest)
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match=message):
        Store.open(tmp_path)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: "\x00\x01garbage",
        lambda text: json.dumps({"key": "x"}),  # no result
        lambda text: text.replace('"seed": 0', '"seed": 5'),  # spec does not match its key
    ],
)
def test_corrupt_record_is_named_in_the_error_and_left_untouched(tmp_path, damage):
    store = Store.open(tmp_path)
    path = store.put(make_result())
    store.put(make_result(seed=1))
    path.write_text(damage(path.read_text()))
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match=path.name):
        Store.open(tmp_path)
    with pytest.raises(StoreError, match=path.name):
        load_records(tmp_path)
    assert snapshot(tmp_path) == before


def test_a_failed_write_leaves_the_previous_record_intact(tmp_path, monkeypatch):
    store = Store.open(tmp_path)
    path = store.put(make_result())
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(store_module.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.put(make_result())
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [path.name]  # temp file removed


def test_leftover_temporary_file_of_a_killed_writer_is_ignored(tmp_path):
    store = Store.open(tmp_path)
    store.put(make_result())
    (tmp_path / "runs" / ".abc.json.x1y2.tmp").write_text('{"half": ')
    assert len(Store.open_existing(tmp_path).results()) == 1


def test_records_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        store_module.os, "fsync", lambda fd: calls.append("fsync") or real_fsync(fd)
    )
    monkeypatch.setattr(
        store_module.os, "replace", lambda a, b: calls.append("replace") or real_replace(a, b)
    )
    Store.open(tmp_path).put(make_result())
    assert calls[-3:] == ["fsync", "replace", "fsync"]  # file, rename, directory


def test_two_writers_on_one_directory_are_refused(tmp_path):
    store = Store.open(tmp_path)
    with store.lock():
        with pytest.raises(StoreError, match="another optlab process"):
            with Store.open(tmp_path).lock():
                pass
    with Store.open(tmp_path).lock():  # released again
        pass


def test_open_existing_needs_the_directory(tmp_path):
    with pytest.raises(StoreError, match="does not exist; give the directory that optlab"):
        Store.open_existing(tmp_path / "missing")


def test_reading_errors_advise_reading_and_writing_errors_advise_writing(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(StoreError) as error:
        Store.open_existing(tmp_path / "file.txt")
    assert "is a file, not a results directory" in str(error.value)
    assert "does not exist" not in str(error.value)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(StoreError) as error:
        Store.open_existing(foreign)
    assert "nothing to report; give the directory that optlab compare wrote" in str(error.value)
    assert "refusing to write" not in str(error.value)
    with pytest.raises(StoreError, match="refusing to write into it: choose a new or empty"):
        Store.open(foreign)


def test_a_damaged_study_file_is_found_on_opening_with_a_remedy_for_the_command(tmp_path):
    store = Store.open(tmp_path)
    store.put(make_result())
    (tmp_path / "study.json").write_text('{"study": ')
    with pytest.raises(StoreError) as error:
        Store.open(tmp_path)
    assert "study.json" in str(error.value)
    assert "move it away and run the command again" in str(error.value)
    with pytest.raises(StoreError) as error:
        Store.open_existing(tmp_path)
    assert "move it away to report the run records without it" in str(error.value)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_are_created_with_the_umask_not_0600(tmp_path, umask):
    previous = os.umask(umask)
    try:
        store = Store.open(tmp_path / "out")
        record = store.put(make_result())
        store.write_study({"study": None})
        plain = tmp_path / "plain.txt"
        plain.write_text("what open() gives")  # the oracle: an ordinary file
    finally:
        os.umask(previous)
    expected = plain.stat().st_mode & 0o777
    assert expected == 0o666 & ~umask
    for path in (record, tmp_path / "out" / MANIFEST_NAME, tmp_path / "out" / "study.json"):
        assert path.stat().st_mode & 0o777 == expected, path.name


def test_results_of_an_older_format_version_are_refused_not_mixed(tmp_path):
    Store.open(tmp_path).put(make_result())
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({**manifest, "version": 1}))
    with pytest.raises(StoreError, match="format version 1; this optlab reads version 2 only"):
        Store.open(tmp_path)


def test_load_records_gives_one_row_per_evaluation_with_spec_columns(tmp_path):
    store = Store.open(tmp_path)
    results = [make_result(0, 1e-3), make_result(1, 1e-2, rows=4)]
    for result in results:
        store.put(result)
    frame = load_records(tmp_path)
    assert len(frame) == 3 + 4
    by_seed = frame.groupby("seed")
    assert by_seed.size().to_dict() == {0: 3, 1: 4}
    assert by_seed["hp_lr"].first().to_dict() == {0: 1e-3, 1: 1e-2}
    assert frame["hp_betas"].iloc[0] == (0.9, 0.99)
    assert set(frame["optimizer"]) == {"adam"} and set(frame["task"]) == {"digits-mlp"}
    seed1 = frame[frame.seed == 1].sort_values("epoch")
    assert seed1["metric"].tolist() == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert seed1["key"].iloc[0] == results[1].spec.key()

    runs = load_runs(tmp_path)
    assert len(runs) == 2
    assert runs.set_index("seed")["final_metric"].to_dict() == pytest.approx({0: 0.6, 1: 0.9})
