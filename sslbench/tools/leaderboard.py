"""The leaderboard: every ``result.json`` below a folder as one table, one row per checkpoint.

Shaped like the FT paper's tables (Zhu et al. ICCV 2021, Tables 2-5): one row per pretrained checkpoint,
one column per (dataset, protocol, metric); a cell is the mean over seeds, with the sample std and the
number of seeds. Rules:

* A checkpoint is its sha256. Its row is named by a label (``--label``, or a ``labels.json`` that the
  suite and the quickstart write beside their runs), else by its file name.
* A baseline (``--baseline``, or a ``baselines.json`` list of sha256s, e.g. the quickstart's random
  init) is a reference point, not a method: its row is marked and never counted as a column's best.
* Records are averaged only when they agree on the protocol: the column key carries a hash of the
  protocol name and settings and of the dataset description (without paths and without the values in
  :data:`RUN_SPECIFIC_SETTINGS`). Records of one column that disagree are shown as separate columns,
  each titled with its hash, and a warning names the settings that differ.
* Two records of one checkpoint, column and seed (a re-run elsewhere) are not both counted: the newest
  is kept, with a warning.
* A record that cannot be read (corrupt, half-written, invalid: a non-finite or out-of-range
  metric, a malformed time, a NaN seed) is reported by path and skipped; so is anything named
  ``result.json`` that is not a regular file (a FIFO or device is never opened). A record of a failed
  run is listed with its error, never counted.
* Published numbers are rows marked †, cited under the table, never a column's best, matched to
  columns by (task, dataset, protocol-name prefix, metric) or given a column of their own. A run
  of a checkpoint read as ``zoo:NAME`` (its record's ``checkpoint.zoo``) always gets the row
  ``zoo:NAME (published)`` right after its own, from the zoo table; ``--with-published`` adds the
  FT paper's rows (:mod:`sslbench.tools.published`).
* Text from records (labels, dataset and protocol names) is made safe for each output: control
  characters (terminal escapes) are dropped, a newline never splits a Markdown row, and a CSV cell
  that a spreadsheet would run as a formula (starting with ``= + - @``) is prefixed with ``'``.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sslbench.atomic import write_text
from sslbench.errors import ConfigError, RecordError
from sslbench.tools.published import IMAGENET_1K, PUBLISHED, SOURCE, PublishedKey, published_key
from sslbench.tools.records import RECORD_NAME, ResultRecord, parse_timestamp, read_record

LABELS_NAME = "labels.json"
BASELINES_NAME = "baselines.json"
BASELINE_MARK = "(baseline)"
# Settings that describe how a run went rather than what was measured: an outcome of the protocol
# (``best_C``, chosen on val), where it ran (``device``, ``world_size``: the detection batch is the
# total), how the exact search was chunked (``index``, ``query_chunk``), and the seed (a row's seeds
# are averaged).
RUN_SPECIFIC_SETTINGS = frozenset({"best_C", "device", "world_size", "index", "query_chunk", "seed"})
# Dataset fields that differ between machines without changing the data.
DATASET_PATHS = frozenset({"root"})
TASK_ORDER = ("linear", "knn", "finetune", "detection")
# Shown by default: each dataset's headline metric (DatasetSpec.headline_metric) plus top-1, and the
# detection columns of the MoCo / FT tables (VOC AP50 / AP / AP75; COCO box and mask AP).
DETECTION_METRICS = ("AP50", "AP", "AP75", "bbox_AP", "segm_AP")
_METRIC_ORDER = ("top1", "mean_per_class", "top5", *DETECTION_METRICS)
_COLUMN_FIELDS = ["task", "dataset", "protocol", "metric"]


@dataclass(frozen=True)
class Column:
    """One leaderboard column: a metric of one protocol on one dataset (``settings``: hash, or '')."""

    task: str
    dataset: str
    protocol: str
    metric: str
    settings: str = ""

    @property
    def title(self) -> str:
        suffix = f" [{self.settings}]" if self.settings else ""
        return f"{self.dataset} {self.protocol} {self.metric}{suffix}"

    def sort_key(self) -> tuple[Any, ...]:
        task = TASK_ORDER.index(self.task) if self.task in TASK_ORDER else len(TASK_ORDER)
        metric = _METRIC_ORDER.index(self.metric) if self.metric in _METRIC_ORDER else len(_METRIC_ORDER)
        return (task, self.dataset, self.protocol, metric, self.metric, self.settings)

    def matches(self, key: PublishedKey) -> bool:
        return (self.task, self.dataset, self.metric) == (
            key.task,
            key.dataset,
            key.metric,
        ) and self.protocol.startswith(key.protocol)


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str


@dataclass
class Leaderboard:
    """``cells``: one row per (row, column) with mean, std, n, published; plus what was left out."""

    rows: list[str]
    columns: list[Column]
    cells: pd.DataFrame
    published_rows: set[str] = field(default_factory=set)
    baseline_rows: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)  # unreadable records
    failed: list[Problem] = field(default_factory=list)  # records of failed runs
    sources: dict[str, str] = field(default_factory=dict)  # published row -> the note citing it

    def cell(self, row: str, column: Column) -> pd.Series | None:
        hit = self.cells[(self.cells["row"] == row) & (self.cells["column"] == column)]
        return None if hit.empty else hit.iloc[0]

    def best(self, column: Column) -> float | None:
        """The best run in ``column``: published rows and baselines are never counted."""
        aside = self.baseline_rows | self.published_rows
        counted = (self.cells["column"] == column) & ~self.cells["row"].isin(aside)
        values = self.cells.loc[counted, "mean"]
        return None if values.empty else float(values.max())


def printable(text: str) -> str:
    """``text`` without control characters (terminal escape sequences); line breaks become spaces."""
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ").replace("\t", " ")
    return "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf"))


def csv_safe(value: Any) -> Any:
    """A text cell a spreadsheet would evaluate as a formula (``= + - @``) gets a leading ``'``."""
    if isinstance(value, str):
        value = printable(value)
        if value[:1] in ("=", "+", "-", "@"):
            return "'" + value
    return value


def _regular_files(root: Path, name: str) -> tuple[list[Path], list[Problem]]:
    """The regular files called ``name`` below ``root``; anything else of that name (a FIFO, a
    device, a folder) is a problem, never opened."""
    found, odd = [], []
    for path in sorted(root.rglob(name)):
        (found if path.is_file() else odd).append(path)
    return found, [Problem(p, "not a regular file; not opened") for p in odd]


def collect_records(root: str | Path) -> tuple[list[tuple[Path, ResultRecord]], list[Problem]]:
    """Every readable ``result.json`` below ``root`` (sorted by path), and the unreadable ones."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such results folder")
    records = []
    paths, skipped = _regular_files(root, RECORD_NAME)
    for path in paths:
        try:
            records.append((path, read_record(path)))
        except RecordError as exc:
            skipped.append(Problem(path, str(exc)))
    return records, skipped


def read_labels(root: str | Path) -> tuple[dict[str, str], list[Problem]]:
    """sha256 -> label from every ``labels.json`` below ``root`` (written by the suite and quickstart),
    and the files that could not be used."""
    labels: dict[str, str] = {}
    paths, problems = _regular_files(Path(root), LABELS_NAME)
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            problems.append(Problem(path, f"not a readable labels file ({exc})"))
            continue
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            problems.append(Problem(path, "expected a JSON object mapping checkpoint sha256 to a label"))
            continue
        labels.update({str(k): printable(v) for k, v in data.items()})
    return labels, problems


def read_baselines(root: str | Path) -> set[str]:
    """sha256s of baseline checkpoints from every ``baselines.json`` below ``root`` (a JSON list)."""
    shas: set[str] = set()
    for path in sorted(Path(root).rglob(BASELINES_NAME)):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable baselines file ({exc})") from None
        if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
            raise ConfigError(f"{path}: expected a JSON list of checkpoint sha256s")
        shas.update(data)
    return shas


def _baseline_shas(records: Iterable[ResultRecord], keys: Iterable[str]) -> set[str]:
    """The sha256s ``keys`` name (a sha256 prefix of 8+ hex digits or a checkpoint file name)."""
    paths = {r.checkpoint["sha256"]: str(r.checkpoint.get("path") or "") for r in records}
    shas = set()
    for key in keys:
        hits = {
            sha
            for sha, path in paths.items()
            if (len(key) >= 8 and sha.startswith(key.lower())) or key in (path, Path(path).name)
        }
        if not hits:
            raise ConfigError(f"--baseline {key}: no record's checkpoint has that sha256 prefix or file name")
        shas |= hits
    return shas


def parse_label_options(options: Sequence[str]) -> dict[str, str]:
    """``KEY=LABEL`` pairs; KEY is a sha256 (or a prefix of 8+ hex digits) or a checkpoint file name."""
    labels = {}
    for option in options:
        key, sep, label = option.partition("=")
        if not sep or not key or not label:
            raise ConfigError(f"--label {option!r}: expected KEY=LABEL (KEY a sha256 prefix or a file name)")
        labels[key] = printable(label)
    return labels


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def protocol_identity(record: ResultRecord) -> dict[str, Any]:
    """What must be equal for two records' numbers to be averaged (see the module docstring)."""
    settings = record.protocol.get("settings", {})
    return {
        "protocol": record.protocol["name"],
        "settings": {k: v for k, v in settings.items() if k not in RUN_SPECIFIC_SETTINGS},
        "dataset": {k: v for k, v in record.dataset.items() if k not in DATASET_PATHS},
    }


def settings_hash(identity: Mapping[str, Any]) -> str:
    """A short, stable hash of :func:`protocol_identity` (6 hex digits)."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:6]


def dataset_label(dataset: Mapping[str, Any]) -> str:
    """The dataset's column name: its registry name; an ImageFolder is named by its class list, and an
    ImageFolder of 1000 classes without one is ImageNet-1k."""
    name = str(dataset["name"])
    if name != "imagefolder":
        return name
    class_list = (dataset.get("options") or {}).get("class_list")
    if class_list:
        return f"imagefolder:{Path(class_list).stem}"
    return IMAGENET_1K if dataset.get("num_classes") == 1000 else name


def shown_metrics(record: ResultRecord, all_metrics: bool) -> list[str]:
    if all_metrics:
        return list(record.metrics)
    if record.task == "detection":
        wanted = list(DETECTION_METRICS)
    else:
        from sslbench.data.registry import DATASETS

        spec = DATASETS.get(record.dataset["name"])
        wanted = ["top1"] + ([spec.headline_metric] if spec is not None else [])
    return [m for m in dict.fromkeys(wanted) if m in record.metrics]


def _row_labels(
    records: Iterable[ResultRecord], found: Mapping[str, str], given: Mapping[str, str]
) -> dict[str, str]:
    """sha256 -> row label: ``given`` (sha prefix or file name), then ``found`` (labels.json), then
    ``zoo:NAME`` for a checkpoint read by its zoo name, then the file name (with a sha prefix where
    two checkpoints share a name)."""
    paths: dict[str, str] = {}
    zoo_names: dict[str, str] = {}
    for record in records:
        paths.setdefault(record.checkpoint["sha256"], str(record.checkpoint.get("path") or ""))
        if record.checkpoint.get("zoo"):
            zoo_names.setdefault(record.checkpoint["sha256"], f"zoo:{record.checkpoint['zoo']}")
    for key in given:
        if not any(
            sha.startswith(key.lower()) or Path(p).name == key or p == key for sha, p in paths.items()
        ):
            raise ConfigError(
                f"--label {key}=...: no record's checkpoint has that sha256 prefix or file name"
            )
        if all(c in "0123456789abcdef" for c in key.lower()) and len(key) < 8:
            raise ConfigError(f"--label {key}=...: a sha256 prefix needs at least 8 hex digits")
    labels: dict[str, str] = {}
    for sha, path in paths.items():
        name = zoo_names.get(sha) or Path(path).name or sha[:12]
        chosen = next(
            (v for k, v in given.items() if sha.startswith(k.lower()) or k in (path, Path(path).name)), None
        )
        labels[sha] = printable(chosen or found.get(sha) or name)
    counts = pd.Series(list(labels.values())).value_counts()
    for sha, label in labels.items():
        if counts[label] > 1:
            labels[sha] = f"{label} ({sha[:8]})"
    return labels


def _differing_settings(identities: Sequence[Mapping[str, Any]]) -> list[str]:
    flat = [_flatten(identity) for identity in identities]
    keys = sorted(set().union(*flat))
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]


def _record_rows(
    path: Path, record: ResultRecord, names: Mapping[str, str], all_metrics: bool
) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """One long-format row per shown metric of ``record``, with its protocol identity and hash."""
    identity = protocol_identity(record)
    digest = settings_hash(identity)
    finished = parse_timestamp(record.finished_at).timestamp() if record.finished_at else -math.inf
    rows = [
        {
            "sha256": record.checkpoint["sha256"],
            "row": names[record.checkpoint["sha256"]],
            "task": record.task,
            "dataset": printable(dataset_label(record.dataset)),
            "protocol": printable(record.protocol["name"]),
            "metric": printable(metric),
            "settings": digest,
            "seed": record.seed,
            "value": float(record.metrics[metric]),
            "finished_at": finished,
            "path": str(path),
        }
        for metric in shown_metrics(record, all_metrics)
    ]
    return rows, identity, digest


@dataclass
class _Runs:
    """What the records below a folder hold: one long-format row per (record, shown metric)."""

    frame: pd.DataFrame
    identities: dict[str, dict[str, Any]]  # settings hash -> protocol identity
    names: dict[str, str]  # sha256 -> row label
    position: dict[str, int]  # row label -> place in labels.json
    baseline_rows: set[str]
    zoo_names: dict[str, str]  # sha256 -> zoo entry the run read it as (zoo:NAME)
    skipped: list[Problem]
    failed: list[Problem]


def _read_runs(
    root: str | Path, labels: Mapping[str, str], all_metrics: bool, baselines: Sequence[str]
) -> _Runs:
    """Every record, label and baseline below ``root``, as rows to aggregate."""
    loaded, skipped = collect_records(root)
    failed = [Problem(p, printable(r.error or "failed")) for p, r in loaded if r.status == "failed"]
    ok = [(p, r) for p, r in loaded if r.status == "ok" and r.task != "pretrain"]
    found, label_problems = read_labels(root)
    skipped += label_problems
    names = _row_labels((r for _, r in ok), found, labels)
    # rows in the order of labels.json (the suite's order of checkpoints), then by name
    position = {names[sha]: i for i, sha in enumerate(found) if sha in names}
    baseline_shas = read_baselines(root) | _baseline_shas((r for _, r in ok), baselines)
    long_rows, identities, zoo_names = [], {}, {}
    for path, record in ok:
        try:
            rows, identity, digest = _record_rows(path, record, names, all_metrics)
        except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
            skipped.append(Problem(path, f"cannot be tabulated ({type(exc).__name__}: {exc})"))
            continue
        identities[digest] = identity
        long_rows += rows
        if record.checkpoint.get("zoo") and rows:
            zoo_names[record.checkpoint["sha256"]] = record.checkpoint["zoo"]
    frame = pd.DataFrame(
        long_rows,
        columns=["sha256", "row", *_COLUMN_FIELDS, "settings", "seed", "value", "finished_at", "path"],
    )
    baseline_rows = {names[sha] for sha in baseline_shas if sha in names}
    return _Runs(frame, identities, names, position, baseline_rows, zoo_names, skipped, failed)


def _aggregate(
    frame: pd.DataFrame, identities: Mapping[str, Mapping[str, Any]]
) -> tuple[pd.DataFrame, list[str]]:
    """Cells (row, column, mean, std, n) over seeds, the newest record per seed, one column per
    protocol variant; and the warnings about what was dropped or split."""
    warnings = []
    # one value per (checkpoint, column, seed): the newest record wins
    key = ["sha256", *_COLUMN_FIELDS, "settings", "seed"]
    frame = frame.sort_values(["finished_at", "path"])
    repeated = frame[frame.duplicated(key, keep=False)]
    for _, group in repeated.groupby(key, sort=True):
        paths = ", ".join(dict.fromkeys(group["path"]))
        warnings.append(f"{len(group)} records of one checkpoint, column and seed ({paths}); kept the newest")
    frame = frame.drop_duplicates(key, keep="last")

    # protocol mismatch: one column per settings hash, never averaged
    variants = frame.groupby(_COLUMN_FIELDS)["settings"].nunique()
    split = {k for k, n in variants.items() if n > 1}
    for k in sorted(split):
        hashes = sorted(frame.loc[(frame[_COLUMN_FIELDS] == list(k)).all(axis=1), "settings"].unique())
        differ = _differing_settings([identities[h] for h in hashes])
        warnings.append(
            f"{k[1]} {k[2]} {k[3]}: records disagree on the protocol ({', '.join(differ)}); "
            f"shown as separate columns {', '.join(hashes)}, never averaged"
        )
    frame["column"] = [
        Column(t, d, p, m, s if (t, d, p, m) in split else "")
        for t, d, p, m, s in frame[[*_COLUMN_FIELDS, "settings"]].itertuples(index=False)
    ]
    cells = (
        frame.groupby(["row", "column"], sort=False)["value"]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )
    cells["published"] = False
    return cells, warnings


@dataclass(frozen=True)
class PublishedRow:
    """Published numbers shown as a row: ``note`` cites them; ``beside``: the run row it follows."""

    label: str
    values: Mapping[PublishedKey, float]
    note: str
    beside: str | None = None


def paper_rows() -> list[PublishedRow]:
    """The FT paper's and MoCo README's reference rows (``--with-published``)."""
    note = (
        "Rows marked † are published reference numbers (ResNet-50, ImageNet-1k, 200 epochs), "
        f"not runs: {SOURCE}."
    )
    return [PublishedRow(f"{label} (published)", values, note) for label, values in PUBLISHED.items()]


def zoo_rows(zoo_names: Mapping[str, str], names: Mapping[str, str]) -> tuple[list[PublishedRow], list[str]]:
    """For each run of a zoo:NAME checkpoint, the zoo table's published numbers for it, as the row
    "zoo:NAME (published)" beside the run's row; and warnings for runs the table cannot vouch for."""
    if not zoo_names:
        return [], []
    from sslbench.checkpoints.zoo import load_table

    table = load_table()
    rows: dict[str, PublishedRow] = {}
    warnings = []
    for sha, name in zoo_names.items():
        entry = table.get(name)
        if entry is None or (entry.sha256 is not None and entry.sha256 != sha):
            why = "is not in the zoo table" if entry is None else "has another sha256 in the zoo table"
            warnings.append(f"{names[sha]}: its checkpoint zoo:{name} {why}; no published row beside it")
            continue
        if name in rows or not entry.published:
            continue
        values = {
            published_key(n["protocol"], n["dataset"], n["metric"]): float(n["value"])
            for n in entry.published
        }
        cites = "; ".join(
            f"{n['dataset']} {n['protocol']} {n['metric']} {n['value']}: {n['cite']}" for n in entry.published
        )
        note = (
            f"Row zoo:{name} (published) † holds what {entry.source} publishes for the checkpoint of row "
            f"{names[sha]} ({entry.citation}), not runs: {cites}."
        )
        rows[name] = PublishedRow(f"zoo:{name} (published)", values, note, beside=names[sha])
    return list(rows.values()), warnings


def _add_published(
    rows: list[str], columns: list[Column], cells: pd.DataFrame, published: Sequence[PublishedRow]
) -> pd.DataFrame:
    """Insert each published row (after the run it belongs beside, else last) and its values, in
    every matching column, or in a column of its own where none matches; returns the cells."""
    extra = []
    for entry in published:
        at = rows.index(entry.beside) + 1 if entry.beside in rows else len(rows)
        rows.insert(at, entry.label)
        for key, value in entry.values.items():
            targets = [c for c in columns if c.matches(key)]
            if not targets:
                targets = [Column(key.task, key.dataset, key.protocol, key.metric)]
                columns.append(targets[0])
            for column in targets:
                extra.append({"row": entry.label, "column": column, "mean": value, "std": math.nan, "n": 0})
    if not extra:
        return cells
    values = pd.DataFrame(extra, columns=["row", "column", "mean", "std", "n"])
    values["published"] = True
    columns.sort(key=Column.sort_key)
    return pd.concat([cells, values], ignore_index=True)


def build_leaderboard(
    root: str | Path,
    labels: Mapping[str, str] | None = None,
    with_published: bool = False,
    all_metrics: bool = False,
    baselines: Sequence[str] = (),
) -> Leaderboard:
    """Read every record below ``root`` and aggregate it (see the module docstring); ``baselines``:
    checkpoints (sha256 prefix or file name) to mark as baselines, beside ``baselines.json``. Runs of
    a zoo:NAME checkpoint always get the zoo table's published row beside them; ``with_published``
    adds the FT paper's rows."""
    runs = _read_runs(root, labels or {}, all_metrics, baselines)
    cells, warnings = _aggregate(runs.frame, runs.identities)
    columns = sorted(set(cells["column"]), key=Column.sort_key)
    rows = sorted(set(cells["row"]), key=lambda r: (runs.position.get(r, len(runs.position)), r))
    published, zoo_warnings = zoo_rows(runs.zoo_names, runs.names)
    published += paper_rows() if with_published else []
    cells = _add_published(rows, columns, cells, published)
    return Leaderboard(
        rows,
        columns,
        cells,
        published_rows={p.label for p in published},
        baseline_rows=runs.baseline_rows,
        warnings=warnings + zoo_warnings,
        skipped=runs.skipped,
        failed=runs.failed,
        sources={p.label: p.note for p in published},
    )


# ---------------------------------------------------------------- rendering


def format_cell(cell: pd.Series | None) -> str:
    """``mean``, or ``mean ± std (n=N)`` over N > 1 seeds; empty when there is no value."""
    if cell is None or pd.isna(cell["mean"]):
        return ""
    if cell["published"] or cell["n"] <= 1:
        return f"{cell['mean']:.2f}"
    return f"{cell['mean']:.2f} ± {cell['std']:.2f} (n={int(cell['n'])})"


def _is_best(board: Leaderboard, row: str, column: Column) -> bool:
    cell, best = board.cell(row, column), board.best(column)
    return cell is not None and best is not None and math.isclose(float(cell["mean"]), best)


def notes(board: Leaderboard) -> list[tuple[str, str]]:
    """(kind, text) lines under the table: ``note`` (how to read it, and the sources of published
    rows) or ``warning``."""
    aside = board.baseline_rows or board.published_rows
    lines = [
        (
            "note",
            "Cells: mean ± sample std over seeds (n = number of seeds; no ± for one seed). "
            "Best per column in bold" + (" (published rows and baselines aside)." if aside else "."),
        )
    ]
    if board.baseline_rows:
        lines.append(
            (
                "note",
                f"Rows marked {BASELINE_MARK} are reference points, not pretrained methods: the same "
                "protocol on a checkpoint such as a random init.",
            )
        )
    lines += [
        ("note", text) for text in dict.fromkeys(board.sources[r] for r in board.rows if r in board.sources)
    ]
    lines += [("warning", w) for w in board.warnings]
    lines += [("warning", f"skipped unreadable record {p.path}: {p.message}") for p in board.skipped]
    lines += [("warning", f"failed run {p.path}: {p.message}") for p in board.failed]
    return lines


def row_title(board: Leaderboard, row: str) -> str:
    """The row's name as shown: published rows carry †, baselines their mark."""
    if row in board.published_rows:
        return f"{row} †"
    return f"{row} {BASELINE_MARK}" if row in board.baseline_rows else row


def to_markdown(board: Leaderboard) -> str:
    def escape(text: str) -> str:
        return printable(text).replace("|", "\\|")

    header = ["checkpoint", *(escape(c.title) for c in board.columns)]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(board.columns)]
    for row in board.rows:
        label = row_title(board, row)
        cells = []
        for column in board.columns:
            text = format_cell(board.cell(row, column))
            cells.append(f"**{text}**" if text and _is_best(board, row, column) else text)
        lines.append("| " + " | ".join([escape(label), *cells]) + " |")
    return (
        "\n".join(lines)
        + "\n\n"
        + "\n".join(
            f"- {'Warning: ' if kind == 'warning' else ''}{escape(text)}" for kind, text in notes(board)
        )
        + "\n"
    )


def to_frame(board: Leaderboard) -> pd.DataFrame:
    """The wide table: one row per checkpoint (``published``, ``baseline``: what the row is; ``source``:
    the citation of a published row); ``<column> mean``, ``<column> std``, ``<column> n``."""
    data: dict[str, list[Any]] = {"checkpoint": [csv_safe(row) for row in board.rows]}
    data["published"] = [row in board.published_rows for row in board.rows]
    data["baseline"] = [row in board.baseline_rows for row in board.rows]
    data["source"] = [csv_safe(board.sources.get(row, "")) for row in board.rows]
    for column in board.columns:
        cells = [board.cell(row, column) for row in board.rows]
        for stat in ("mean", "std", "n"):
            data[csv_safe(f"{column.title} {stat}")] = [math.nan if c is None else c[stat] for c in cells]
    return pd.DataFrame(data)


_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th:first-child, td:first-child { text-align: left; }
td.best { font-weight: bold; background: #e3f4e3; }
tr.published td { font-style: italic; color: #555; background: #f7f7fb; }
tr.baseline td { color: #555; background: #fafaf2; }
th .arrow { color: #888; font-size: 11px; }
li.warning { color: #a15c00; }
"""

_SCRIPT = """
document.querySelectorAll("table.leaderboard th").forEach((th, col) => {
  th.addEventListener("click", () => {
    const body = th.closest("table").tBodies[0];
    const desc = th.dataset.order !== "desc";
    th.closest("tr").querySelectorAll("th").forEach(h => {
      delete h.dataset.order;
      h.querySelector(".arrow").textContent = "";
    });
    th.dataset.order = desc ? "desc" : "asc";
    th.querySelector(".arrow").textContent = desc ? " \\u25BC" : " \\u25B2";
    const key = row => {
      const cell = row.cells[col];
      return cell.dataset.value === undefined ? cell.textContent : parseFloat(cell.dataset.value);
    };
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = key(a), y = key(b);
      if (typeof x === "number" || typeof y === "number") {
        if (isNaN(x)) return 1; if (isNaN(y)) return -1;
        return desc ? y - x : x - y;
      }
      return desc ? y.localeCompare(x) : x.localeCompare(y);
    });
    rows.forEach(r => body.appendChild(r));
  });
});
"""


def to_html(board: Leaderboard, title: str = "sslbench leaderboard") -> str:
    """A self-contained page: the table (click a header to sort), best per column marked, and notes."""
    esc = html.escape
    head = "".join(f'<th>{esc(c.title)}<span class="arrow"></span></th>' for c in board.columns)
    body = []
    for row in board.rows:
        published = row in board.published_rows
        label = row_title(board, row)
        cells = [f"<td>{esc(label)}</td>"]
        for column in board.columns:
            cell = board.cell(row, column)
            text = format_cell(cell)
            value = "" if cell is None or pd.isna(cell["mean"]) else f"{float(cell['mean']):.6g}"
            cls = ' class="best"' if text and _is_best(board, row, column) else ""
            cells.append(f'<td{cls} data-value="{value or "NaN"}">{esc(text)}</td>')
        cls = ' class="published"' if published else ' class="baseline"' if row in board.baseline_rows else ""
        body.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    items = "".join(f'<li class="{kind}">{esc(text)}</li>' for kind, text in notes(board))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{esc(title)}</h1>\n"
        '<table class="leaderboard">\n<thead><tr><th>checkpoint<span class="arrow"></span></th>'
        f"{head}</tr></thead>\n"
        f"<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>\n"
        f"<ul>{items}</ul>\n<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def write_leaderboard(board: Leaderboard, out_dir: str | Path, name: str = "leaderboard") -> dict[str, Path]:
    """Write ``name.md``, ``name.csv`` and ``name.html`` into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    paths = {suffix: out / f"{name}.{suffix}" for suffix in ("md", "csv", "html")}
    write_text(paths["md"], to_markdown(board))
    write_text(paths["csv"], to_frame(board).to_csv(index=False))
    write_text(paths["html"], to_html(board))
    return paths
