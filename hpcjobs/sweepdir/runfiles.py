"""The file contract between a job and whoever reads its run directory.

A run directory holds::

    .hydra/config.yaml      the composed config (written by Hydra; a compact run keeps it in
                            metrics.json's ``config`` instead)
    .hydra/overrides.yaml   this run's overrides, e.g. ["optimizer=adam", "seed=1"] (a run in
                            its own job; a worker's runs have theirs in sweep.json)
    metrics.json            status + metrics, rewritten atomically as the run progresses
    history.csv             one row per finished epoch
    checkpoint.pt           the workload's saved state while the run is unfinished (torch.save;
                            hpcjobs/run/checkpoint.py), so a restart resumes it
    trial.json              an adaptive sweep's run: its trial number, sampled params and
                            overrides (written by the worker before the run starts)
    accounting.json         what the scheduler's accounting says the task was given and used,
                            one entry per attempt (written by `status`/`collect` once it ended)

Every file here is written atomically (temp file in the same directory, then rename), so
a reader — the collector, `status`, a user's notebook — sees the old file or the new one,
never half of one. Readers are tolerant: a missing or corrupt file is reported, not fatal.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpcjobs import atomic

SCHEMA_VERSION = 1

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
CHECKPOINT_FILE = "checkpoint.pt"
OVERRIDES_FILE = ".hydra/overrides.yaml"
CONFIG_FILE = ".hydra/config.yaml"
ACCOUNTING_FILE = "accounting.json"
TRIAL_FILE = "trial.json"
# metrics.json's copy of the run's config, where .hydra/config.yaml is not written
# (hydra.launcher.run_files=compact)
CONFIG_KEY = "config"


class CorruptRunFile(ValueError):
    """A run file exists but cannot be parsed; the message names the path."""


class ExistingRunDirs:
    """Which of a sweep's run directories may exist, from one listing of the sweep directory:
    a run whose top folder is not listed has no files (yet). At 100,000 tasks of a sweep just
    submitted, one listdir instead of a failed open (or stat) per task. A snapshot: list after
    whatever the caller compares the files with (a poll), so that a run it saw has its files."""

    def __init__(self, sweep_dir: Path | str) -> None:
        try:
            self._top = frozenset(os.listdir(sweep_dir))
        except (FileNotFoundError, NotADirectoryError):
            self._top = frozenset()

    def may_exist(self, run_dir: str) -> bool:
        """``run_dir`` as the manifest has it: relative to the sweep directory."""
        top = run_dir.split("/", 1)[0]
        # absolute, or through '.'/'..' (which no listing shows): not this listing's to say
        return run_dir.startswith("/") or top in (".", "..") or top in self._top


def write_metrics(run_dir: Path, metrics: Mapping[str, Any], durable: bool = True) -> None:
    """``durable=False``: a record the run's next write supersedes (see atomic.replacing)."""
    atomic.write_json(
        run_dir / METRICS_FILE, {"schema_version": SCHEMA_VERSION, **metrics}, durable=durable
    )


def write_trial(run_dir: Path, trial: Mapping[str, Any]) -> None:
    atomic.write_json(Path(run_dir) / TRIAL_FILE, dict(trial))


def read_trial(run_dir: Path | str) -> dict[str, Any] | None:
    """trial.json as a dict; None if absent; CorruptRunFile if unreadable."""
    return _read_object(run_dir, TRIAL_FILE)


def read_metrics(run_dir: Path | str) -> dict[str, Any] | None:
    """metrics.json as a dict; None if absent; CorruptRunFile if unreadable."""
    path = _run_file(run_dir, METRICS_FILE)
    try:
        data = _read_bytes(path)
    except FileNotFoundError:
        return None
    data = _parse_json(path, data)
    if not isinstance(data, dict):
        raise CorruptRunFile(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _read_bytes(path: str) -> bytes:
    """The file's bytes: os.open/os.read, half the cost of open(path, "rb").read() when small."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _parse_json(path: str, data: bytes) -> Any:
    text = _decode(path, data)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CorruptRunFile(f"{path}: not valid JSON ({e})") from None


def _decode(path: str, data: bytes) -> str:
    """UTF-8 bytes -> text as open(path, encoding="utf-8").read() gives it (universal newlines)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptRunFile(f"{path}: not valid UTF-8 ({e})") from None
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _run_file(run_dir: Path | str, name: str) -> str:
    """str(Path(run_dir) / name) without pathlib's cost (run_dir: a Path or a normalized str)."""
    base = os.fspath(run_dir)
    if base == ".":
        return name
    return base + name if base.endswith("/") else f"{base}/{name}"


def write_accounting(run_dir: Path | str, accounting: Mapping[str, Any]) -> None:
    atomic.write_json(
        Path(run_dir) / ACCOUNTING_FILE, {"schema_version": SCHEMA_VERSION, **accounting}
    )


def read_accounting(run_dir: Path | str) -> dict[str, Any] | None:
    """accounting.json as a dict; None if absent; CorruptRunFile if unreadable."""
    return _read_object(run_dir, ACCOUNTING_FILE)


def _read_object(run_dir: Path | str, name: str) -> dict[str, Any] | None:
    path = _run_file(run_dir, name)
    try:
        data = _parse_json(path, _read_bytes(path))
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise CorruptRunFile(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def write_history(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite history.csv with every epoch so far (small: one row per epoch)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(run_dir / HISTORY_FILE, buf.getvalue())


def read_history(run_dir: Path | str) -> list[dict[str, str]]:
    """history.csv's rows as written (values as text); [] if absent. Tolerant: a torn or
    malformed file gives the rows that parse."""
    try:
        text = _decode(
            _run_file(run_dir, HISTORY_FILE), _read_bytes(_run_file(run_dir, HISTORY_FILE))
        )
    except (FileNotFoundError, CorruptRunFile):
        return []
    return [dict(row) for row in csv.DictReader(io.StringIO(text)) if None not in row]


def read_overrides(run_dir: Path | str) -> list[str] | None:
    """The run's Hydra overrides; None if Hydra wrote none (not a Hydra run directory)."""
    path = _run_file(run_dir, OVERRIDES_FILE)
    try:
        data = _read_bytes(path)
    except FileNotFoundError:
        return None
    text = _decode(path, data)
    # Hydra writes a YAML list of strings, one "- key=value" per line; parsing that by hand
    # is ~50x faster than a YAML parser, which matters at 10,000 runs. Quoted items fall back.
    items: list[str] = []
    for line in text.splitlines():
        if not line.startswith("- "):
            if line.strip() in ("", "[]"):
                continue
            return _yaml_list(path, text)
        item = line[2:]
        if item[:1] in ("'", '"'):
            return _yaml_list(path, text)
        items.append(item)
    return items


def _yaml_list(path: str, text: str) -> list[str]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CorruptRunFile(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, list):
        raise CorruptRunFile(f"{path}: expected a list of overrides")
    return [str(x) for x in data]


def parse_override(override: str) -> tuple[str, Any] | None:
    """'optimizer.lr=0.01' -> ('optimizer.lr', 0.01); '+x=1' -> ('x', 1); '~x' -> None."""
    if override.startswith("~") or "=" not in override:
        return None
    key, _, raw = override.lstrip("+").partition("=")
    return key, parse_scalar(raw)


def parse_scalar(raw: str) -> Any:
    """Best-effort typing of an override value: int, float, bool, null, else the string."""
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", "~"):
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in ("'", '"'):
        return raw[1:-1]
    return raw
