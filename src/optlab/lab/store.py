"""The results store: one directory per study, one JSON file per finished run.

Layout of a results directory::

    DIR/
      optlab-results.json    manifest: {"format": "optlab-results", "version": 1, ...}
      study.json             the study that last ran here (spec, command, machine)
      study.toml             the same study as a study file (``optlab run DIR/study.toml``)
      runs/<key>.json        one finished run: {"key": ..., "result": RunResult.to_dict()}
      optuna.sqlite3         Optuna's study (``--tuner optuna`` only)
      summary.csv, report.md, plots/*.png    written by :mod:`optlab.lab.report`

``<key>`` is :meth:`RunSpec.key`, so a run is looked up by what determines it
and a study that is run again skips every run already on disk.

Crash safety: a record is written to a temporary file in ``runs/``, flushed
and fsynced, then renamed over its final name (``os.replace`` is atomic), and
the directory is fsynced. A process killed at any moment leaves either the
complete record or none (at worst a ``.tmp`` file that readers ignore), so a
finished run is never lost and never half-written.

Files are created with the permissions of the process's umask (as
``open()`` would), not the 0600 of a bare temporary file.

Format version 2 added the validation columns (``valid_loss``,
``valid_metric``) to every history row and trains on the training data
without its validation part; version-1 directories are refused rather than
mixed with it.

Safety: a directory is used only when it is new, empty, or carries the
manifest with this format version. A non-empty directory without the
manifest, a manifest of another format or version, or a record that cannot be
read is an error (:class:`StoreError`) and nothing in the directory is
changed.

Records load into pandas with :func:`load_records` (one row per evaluation)
or :func:`load_runs` (one row per run).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optlab.lab.runs import RunResult, RunSpec

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Store",
    "StoreError",
    "load_records",
    "load_runs",
]

#: Name of the manifest that marks a directory as an optlab results directory.
MANIFEST_NAME = "optlab-results.json"
FORMAT = "optlab-results"
FORMAT_VERSION = 2
RUNS_DIR = "runs"
STUDY_NAME = "study.json"
LOCK_NAME = ".lock"


class StoreError(Exception):
    """The directory is not a usable optlab results directory (the message says why)."""


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable; not every platform can open a directory.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} value {value!r} in a JSON record")


def _umask() -> int:
    """The process's umask, read without changing it where the platform allows."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split(":", 1)[1].strip(), 8)
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a mix.

    The file gets the mode ``open()`` would give it (0666 minus the umask).
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def _dumps(data: Any) -> str:
    # allow_nan: a diverged run's NaN losses are data; Python's json reads them back.
    return json.dumps(data, indent=1, sort_keys=True, default=_json_default, allow_nan=True) + "\n"


class Store:
    """An optlab results directory.

    Use :meth:`open` (creates the directory when it is new or empty) or
    :meth:`open_existing` (for reading: the directory must already be one).
    """

    def __init__(self, root: Path, manifest: dict[str, Any], *, writing: bool = False) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self.writing = writing
        self._runs_dir = self.root / RUNS_DIR

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> Store:
        """Open ``root`` for writing, creating the manifest if the directory is new or empty."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise StoreError(
                f"results directory {str(root)!r} is a file, not a directory: choose a new "
                "or empty directory"
            )
        if (root / MANIFEST_NAME).exists() or (root.is_dir() and any(root.iterdir())):
            return cls.open_existing(root, writing=True)
        from optlab import __version__

        root.mkdir(parents=True, exist_ok=True)
        (root / RUNS_DIR).mkdir(exist_ok=True)
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "optlab": __version__}
        atomic_write_text(root / MANIFEST_NAME, _dumps(manifest))
        return cls(root, manifest, writing=True)

    @classmethod
    def open_existing(cls, root: str | os.PathLike[str], *, writing: bool = False) -> Store:
        """Open a directory that must already be an optlab results directory of this version.

        ``writing`` only shapes the error messages' advice: for writing (``optlab
        compare``), choose another directory; for reading (``optlab report``,
        :func:`load_records`), point at one that ``optlab compare`` wrote.
        Checks the manifest, every run record and ``study.json`` before returning.
        """
        root = Path(root)
        reading_advice = "give the directory that optlab compare wrote (its --out)"
        if root.exists() and not root.is_dir():
            raise StoreError(f"{str(root)!r} is a file, not a results directory; {reading_advice}")
        if not root.is_dir():
            raise StoreError(f"results directory {str(root)!r} does not exist; {reading_advice}")
        manifest_path = root / MANIFEST_NAME
        if not manifest_path.exists():
            if writing:
                raise StoreError(
                    f"{str(root)!r} is not an optlab results directory (no {MANIFEST_NAME}) "
                    "and is not empty; refusing to write into it: choose a new or empty "
                    "directory"
                )
            raise StoreError(
                f"{str(root)!r} is not an optlab results directory (no {MANIFEST_NAME}), so "
                f"there is nothing to report; {reading_advice}"
            )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise StoreError(
                f"cannot read the manifest {str(manifest_path)!r}: {error}; the directory "
                "was left untouched"
            ) from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise StoreError(
                f"{str(manifest_path)!r} is not an optlab results manifest (expected "
                f'"format": "{FORMAT}"); the directory was left untouched'
            )
        if manifest.get("version") != FORMAT_VERSION:
            raise StoreError(
                f"{str(root)!r} holds optlab results format version "
                f"{manifest.get('version')!r}; this optlab reads version {FORMAT_VERSION} only: "
                "use the optlab that wrote it, or a new directory"
            )
        if not (root / RUNS_DIR).is_dir():
            raise StoreError(
                f"{str(root)!r} has a manifest but no {RUNS_DIR}/ directory; it is damaged"
            )
        store = cls(root, manifest, writing=writing)
        store.results()  # validate every record now, before anything is written
        store.read_study()  # and the study file, before a command prints or trains anything
        return store

    # ---------------------------------------------------------------- records

    def record_path(self, key: str) -> Path:
        return self._runs_dir / f"{key}.json"

    def _read_record(self, path: Path) -> RunResult:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            result = RunResult.from_dict(data["result"])
            key = data["key"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
            raise StoreError(
                f"run record {str(path)!r} is unreadable or corrupt "
                f"({type(error).__name__}: {error}); move it away to re-run that run"
            ) from None
        if key != path.stem or result.spec.key() != key:
            raise StoreError(
                f"run record {str(path)!r} does not match its name (key {key!r}, spec key "
                f"{result.spec.key()!r}); move it away to re-run that run"
            )
        return result

    def __contains__(self, spec: RunSpec) -> bool:
        return self.record_path(spec.key()).exists()

    def get(self, spec: RunSpec) -> RunResult | None:
        """The stored result of ``spec``, or ``None`` when it has not run yet."""
        path = self.record_path(spec.key())
        return self._read_record(path) if path.exists() else None

    def put(self, result: RunResult) -> Path:
        """Persist one finished run atomically (replacing an earlier record of the same spec)."""
        key = result.spec.key()
        path = self.record_path(key)
        atomic_write_text(path, _dumps({"key": key, "result": result.to_dict()}))
        return path

    def keys(self) -> list[str]:
        return sorted(path.stem for path in self._runs_dir.glob("*.json"))

    def results(self) -> list[RunResult]:
        """Every stored run, in key order; :class:`StoreError` on the first bad record."""
        return [self._read_record(self.record_path(key)) for key in self.keys()]

    def __len__(self) -> int:
        return len(self.keys())

    # ------------------------------------------------------------ study file

    def write_study(self, data: Mapping[str, Any]) -> None:
        atomic_write_text(self.root / STUDY_NAME, _dumps(dict(data)))

    def write_text(self, name: str, text: str) -> Path:
        """Write a file of the study (e.g. ``study.toml``) atomically into the directory."""
        path = self.root / name
        atomic_write_text(path, text)
        return path

    def study_file_remedy(self) -> str:
        """What to do about a damaged ``study.json``, for the command at hand."""
        if self.writing:
            return (
                "move it away and run the command again (finished runs in runs/ are kept and "
                "the study file is rewritten)"
            )
        return (
            "move it away to report the run records without it (grouped by setting), or "
            "run the study's optlab compare command again to rewrite it"
        )

    def read_study(self) -> dict[str, Any] | None:
        path = self.root / STUDY_NAME
        if not path.exists():
            return None
        remedy = self.study_file_remedy()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise StoreError(f"cannot read {str(path)!r} ({error}); {remedy}") from None
        if not isinstance(data, dict):
            raise StoreError(f"{str(path)!r} does not hold a study description; {remedy}")
        return data

    # ------------------------------------------------------------------ lock

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock so two studies never write into one directory at once."""
        try:
            import fcntl
        except ImportError:  # not on POSIX: no lock, as before
            yield
            return
        with open(self.root / LOCK_NAME, "a") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise StoreError(
                    f"another optlab process is writing to {str(self.root)!r}; wait for it "
                    "or use another directory"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# -------------------------------------------------------------------- pandas


def _spec_columns(result: RunResult) -> dict[str, Any]:
    spec = result.spec
    columns: dict[str, Any] = {
        "key": spec.key(),
        "task": spec.task,
        "optimizer": spec.optimizer,
        "seed": spec.seed,
        "epochs": spec.epochs,
        "schedule": spec.schedule,
        "batch_size": spec.batch_size,
        "hparams": json.dumps(dict(spec.hparams), sort_keys=True, default=_json_default),
    }
    for name, value in spec.hparams.items():
        columns[f"hp_{name}"] = tuple(value) if isinstance(value, list) else value
    columns.update(
        status=result.status,
        metric_name=result.metric,
        higher_is_better=result.higher_is_better,
        seconds_per_epoch=result.seconds_per_epoch,
    )
    return columns


def load_runs(root: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per stored run: spec columns (``hp_<name>`` per explicit hyper-parameter),
    ``status``, ``seconds_per_epoch`` and the last evaluation's values as ``final_<column>``."""
    import pandas as pd

    rows = []
    for result in Store.open_existing(root).results():
        row = _spec_columns(result)
        row.update({f"final_{name}": value for name, value in result.final.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def load_records(root: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per evaluation of every stored run (long format, ready for ``groupby``).

    Columns: ``key``, ``task``, ``optimizer``, ``seed``, ``epochs``, ``schedule``,
    ``batch_size``, ``hparams`` (JSON of the explicit hyper-parameters), one
    ``hp_<name>`` column per explicit hyper-parameter, ``status``,
    ``metric_name``, ``higher_is_better``, ``seconds_per_epoch``, then the history
    columns (``epoch``, ``step``, ``train_loss``, ``valid_loss``, ``valid_metric``,
    ``test_loss``, ``metric``, ``wall_time``, ...).
    """
    import pandas as pd

    rows = []
    for result in Store.open_existing(root).results():
        columns = _spec_columns(result)
        for history_row in result.history:
            rows.append({**columns, **history_row})
    return pd.DataFrame(rows)


def finite(value: Any) -> bool:
    """Whether ``value`` is a real, finite number."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
