"""Loading a task's data into two ``datasets.Dataset`` splits.

Every source ends up as :class:`Splits`: ``train`` and ``test`` with exactly the
task's canonical columns (see :mod:`fedhello.tasks`): ``text`` (str) and ``label``
(int) for text-classification, plus ``text_pair`` for text-pair-classification,
``text``/``text_pair``/``choices`` for multiple-choice, ``image`` (an image
feature, not decoded here) for image-classification; and ``label_names``. The
label set is fixed by the training split (sorted; numerically when all labels are
integers); test rows with a label outside it are dropped and counted. Rows without
a label or an input, and rows whose text is only whitespace, are dropped and
counted by reason (``Splits.drops``, reported in the run directory's data.json). For
multiple choice the label is the option index and ``label_names`` are the option
columns. ``data.format: imagefolder`` reads ``<path>/<split>/<class>/<image>``.

Every task takes the same path (:func:`load_splits`): the format is resolved, the
wanted splits are read (only the training split when ``data.test_fraction`` carves
the test split out of it), then both are subsampled, cleaned and labelled by the
task's columns (:func:`_finish`).

Local files are read with ``datasets.load_dataset("csv" | "json" | "parquet")``
into memory through a throw-away cache folder, so nothing is written under the
user's home and it works with ``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import datasets
from datasets import ClassLabel, Dataset, Features, Value

from fedhello.config import DataConfig
from fedhello.errors import DataError, FedHelloError
from fedhello.tasks import get_task, one_line as _one_line, to_int as _to_int

from .demo import make_demo_splits

# format -> (datasets builder, accepted file extensions in order of preference)
LOCAL_FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "csv": ("csv", ("csv",)),
    "jsonl": ("json", ("jsonl", "json")),
    "parquet": ("parquet", ("parquet",)),
}


@dataclass
class Splits:
    """A task's data, loaded and cleaned: train and test splits, label names, what was dropped."""
    train: Dataset
    test: Dataset
    label_names: list[str]
    # test rows dropped: label not among the training labels, or text/label missing
    dropped_test: int = 0
    # training rows dropped because their text or label was missing
    dropped_train: int = 0
    # where the data came from (file folder, hub name or "demo"), for reports
    source: str = ""
    # rows dropped by split and reason: no_label, no_input (a text, option or image
    # missing), blank_text (whitespace only), bad_label (multiple choice: no option's
    # index), unknown_label (test: not a training label)
    drops: dict[str, dict[str, int]] = field(default_factory=dict)


# --------------------------------------------------------------------------- reading


def _has_rows(file: Path, builder: str) -> bool:
    """False for a file without data rows (``datasets`` fails on those obscurely)."""
    if builder == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_metadata(file).num_rows > 0
        except Exception:  # noqa: BLE001 - not parquet: let load_dataset report it
            return True
    needed = 2 if builder == "csv" else 1  # csv: a header line and a data line
    found = 0
    with open(file, "rb") as fh:
        for line in fh:
            if line.strip() and line.strip() not in (b"[", b"]", b"[]"):
                found += 1
                if found >= needed:
                    return True
    return False


def _check_csv_shape(file: Path) -> None:
    """Every CSV record has as many fields as the header (a ragged file is misread silently
    otherwise: an extra field turns the first column into an index and shifts the others)."""
    csv.field_size_limit(2**31 - 1)
    try:
        with open(file, newline="", encoding="utf-8", errors="replace") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                return
            for row in reader:
                if row and len(row) != len(header):
                    raise DataError(
                        f"{file}: line {reader.line_num} has {len(row)} fields, the header has {len(header)} "
                        "(quote a text that holds a comma)"
                    )
    except csv.Error as err:
        raise DataError(f"{file}: not a well-formed CSV file: {_one_line(err)}") from None


_WIDE_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16",
              b"\xfe\xff": "UTF-16"}


def _check_encoding(file: Path) -> None:
    """A text data file must be UTF-8: a UTF-16/32 one (byte-order mark, or NUL bytes in its first
    line) or invalid UTF-8 bytes is a DataError naming the file, the encoding and the line."""
    with open(file, "rb") as fh:
        head = fh.read(4)
        for bom, name in _WIDE_BOMS.items():
            if head.startswith(bom):
                raise DataError(f"{file}: the file is {name}-encoded text; save it as UTF-8")
        fh.seek(0)
        for i, line in enumerate(fh, 1):
            if i == 1 and b"\x00" in line:
                raise DataError(f"{file}: the file holds NUL bytes (UTF-16 or binary, not UTF-8 text); save it as UTF-8")
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{file}: line {i} is not valid UTF-8 (byte 0x{line[err.start]:02x} at column {err.start + 1}); "
                    "the file must be UTF-8 encoded (convert it, e.g. from latin-1)"
                ) from None


def _read_local(file: Path, builder: str) -> Dataset:
    if not _has_rows(file, builder):
        raise DataError(f"{file}: split is empty (no rows)")
    if builder in ("csv", "json"):
        _check_encoding(file)
    if builder == "csv":
        _check_csv_shape(file)
    datasets.disable_progress_bars()
    try:
        with tempfile.TemporaryDirectory(prefix="fedhello-ds-") as cache:
            dd = datasets.load_dataset(
                builder, data_files={"data": str(file)}, cache_dir=cache, keep_in_memory=True
            )
            ds = dd["data"]
    except Exception as err:  # noqa: BLE001 - any parse error is a data error
        raise DataError(f"{file}: cannot read it as {builder}: {_one_line(err)}") from err
    return ds


def _split_file(root: Path, split: str, exts: Sequence[str]) -> Path | None:
    for ext in exts:
        f = root / f"{split}.{ext}"
        if f.is_file():
            return f
    return None


def _detect_format(root: Path, split_train: str) -> str:
    for fmt, (_, exts) in LOCAL_FORMATS.items():
        if _split_file(root, split_train, exts) is not None:
            return fmt
    expected = ", ".join(f"{split_train}.{e}" for _, exts in LOCAL_FORMATS.values() for e in exts)
    raise DataError(f"data.path: no training file ({expected}) in {root}")


def data_folder(path: str, key: str = "data.path", error: type[FedHelloError] = DataError, hint: str = "") -> Path:
    """``path`` (``~`` expanded) when it is a folder; otherwise ``error`` naming ``key``: the path does not
    exist or is not a directory (then followed by ``hint``)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise error(f"{key}: {root} " + (f"is not a directory{hint}" if root.exists() else "does not exist"))
    return root


def _data_root(cfg: DataConfig, fmt: str, hint: str = "") -> Path:
    if not cfg.path:
        raise DataError(f"data.path must be set for data.format {fmt}")
    return data_folder(cfg.path, hint=hint)


# each loader: ([(split, where it came from) for the wanted splits], the source for reports)
Loaded = tuple[list[tuple[Dataset, str]], str]


def _load_local(cfg: DataConfig, fmt: str, splits: Sequence[str]) -> Loaded:
    # with a carved test split (only the training split wanted) the messages are the short ones:
    # no folder hint, no alternative file names
    both = len(splits) > 1
    root = _data_root(cfg, fmt, " (expected a folder with the split files)" if both else "")
    builder, exts = LOCAL_FORMATS[fmt]
    out = []
    for split in splits:
        f = _split_file(root, split, exts)
        if f is None:
            alts = "".join(f" (or {root / f'{split}.{e}'})" for e in exts[1:]) if both else ""
            raise DataError(f"missing split file {root / f'{split}.{exts[0]}'}{alts}")
        out.append((_read_local(f, builder), str(f)))
    return out, str(root)


def _load_hub(cfg: DataConfig, splits: Sequence[str]) -> Loaded:
    if not cfg.name:
        raise DataError("data.name must be set for data.format hub")
    datasets.disable_progress_bars()
    where = cfg.name + (f"/{cfg.subset}" if cfg.subset else "")
    try:
        dd = datasets.load_dataset(cfg.name, cfg.subset)
    except Exception as err:  # noqa: BLE001 - offline, missing, malformed: all data errors
        raise DataError(f"data.name: cannot load hub dataset {where}: {_one_line(err)}") from err
    out = []
    for split in splits:
        if split not in dd:
            raise DataError(f"hub dataset {where} has no split '{split}' (splits: {', '.join(dd.keys())})")
        out.append((dd[split], f"{where}[{split}]"))
    return out, where


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _load_imagefolder_split(root: Path, split: str) -> tuple[Dataset, str]:
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"missing split folder {folder} (expected {folder}/<class name>/<image files>)")
    paths: list[str] = []
    labels: list[str] = []
    for cls_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for f in sorted(cls_dir.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(str(f))
                labels.append(cls_dir.name)
    if not paths:
        raise DataError(f"{folder}: split is empty (no image files in class folders)")
    feats = Features({"image": datasets.Image(decode=False), "label": Value("string")})
    ds = Dataset.from_dict({"image": [{"path": p, "bytes": None} for p in paths], "label": labels}, features=feats)
    return ds, str(folder)


def _load_imagefolder(cfg: DataConfig, splits: Sequence[str]) -> Loaded:
    root = _data_root(cfg, "imagefolder")
    return [_load_imagefolder_split(root, s) for s in splits], str(root)


def _resolve_format(cfg: DataConfig, task: str) -> str:
    """``data.format`` with ``auto`` resolved: under ``data.path`` an image folder (a task whose data an
    image folder can hold, with a ``<split_train>`` folder) or the format of the training file found; else the hub's ``data.name``."""
    if cfg.format != "auto":
        return cfg.format
    if cfg.path:
        root = data_folder(cfg.path)
        if "imagefolder" in get_task(task).formats and (root / cfg.split_train).is_dir():
            return "imagefolder"
        return _detect_format(root, cfg.split_train)
    if cfg.name:
        return "hub"
    raise DataError("data.format auto needs data.path (local files) or data.name (hub dataset)")


# --------------------------------------------------------------------------- columns


def _resolve_label_column(ds: Dataset, cfg: DataConfig, where: str) -> str:
    candidates = [cfg.label_column] if isinstance(cfg.label_column, str) else list(cfg.label_column)
    for c in candidates:
        if c in ds.column_names:
            return c
    cols = ", ".join(ds.column_names)
    if len(candidates) == 1:
        raise DataError(f"data.label_column: column '{candidates[0]}' not found in {where} (columns: {cols})")
    names = ", ".join(f"'{c}'" for c in candidates)
    raise DataError(f"data.label_column: none of the columns {names} found in {where} (columns: {cols})")


def _raw_labels(ds: Dataset, col: str, where: str) -> list[Any]:
    feat = ds.features[col]
    values = ds[col]
    if isinstance(feat, ClassLabel):
        names = feat.names
        return [names[v] if v is not None and 0 <= v < len(names) else None for v in values]
    if not isinstance(feat, Value):
        raise DataError(f"data.label_column: column '{col}' in {where} must hold one label per row (it holds {feat})")
    return list(values)


def _canonical(v: Any) -> Any:
    """int for integer-valued labels, str otherwise, None for missing."""
    if v is None:
        return None
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return None
        return int(v) if float(v).is_integer() else str(v)
    s = str(v)
    return s if s.strip() else None


def _subset(ds: Dataset, n: int | None, rng: np.random.Generator) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    idx = np.sort(rng.choice(len(ds), size=n, replace=False))
    return ds.select(idx, keep_in_memory=True)


def _missing_text(t: Any) -> bool:
    return t is None or (isinstance(t, float) and math.isnan(t))


def _text_problem(t: Any) -> str | None:
    """Why a text cannot be trained on (``no_input``: missing, ``blank_text``: only whitespace), or None."""
    if _missing_text(t):
        return "no_input"
    if isinstance(t, str) and not t.strip():
        return "blank_text"
    return None


def _clean(
    ds: Dataset, cfg: DataConfig, task: str, where: str
) -> tuple[dict[str, list], list[Any], dict[str, int]]:
    """(input columns, canonical labels, rows dropped by reason) keeping rows with every input and a label."""
    spec = get_task(task)
    columns = spec.read_columns(ds, cfg, where)
    raw = spec.read_labels(ds, cfg, where)
    if raw is None:
        raw = _raw_labels(ds, _resolve_label_column(ds, cfg, where), where)
    out: dict[str, list] = {k: [] for k in columns}
    labels: list[Any] = []
    drops: dict[str, int] = {}
    # texts that must hold words (multiple choice: the question is optional, "" when absent)
    worded = set(spec.worded)
    for i, y in enumerate(raw):
        y = _canonical(y)
        row = {k: v[i] for k, v in columns.items()}
        why = "no_label" if y is None else None
        if why is None:
            y, why = spec.row_label(y, cfg)
        for k, v in row.items():
            if why is not None:
                break
            if k == "choices":
                why = "no_input" if any(_missing_text(o) for o in v) else None
                row[k] = [o if isinstance(o, str) else str(o) for o in v] if why is None else v
            elif k == "image":
                why = "no_input" if v is None else None
            else:
                why = _text_problem(v) if k in worded else ("no_input" if _missing_text(v) else None)
                if why is None and not isinstance(v, str):
                    row[k] = str(v)
        if why is not None:
            drops[why] = drops.get(why, 0) + 1
            continue
        for k, v in row.items():
            out[k].append(v)
        labels.append(y)
    return out, labels, drops


def _build(columns: dict[str, list], labels: list[int]) -> Dataset:
    feats: dict[str, Any] = {}
    for k in columns:
        if k == "choices":
            feats[k] = datasets.Sequence(Value("string"))
        elif k == "image":
            feats[k] = datasets.Image(decode=True)
        else:
            feats[k] = Value("string")
    feats["label"] = Value("int64")
    data = dict(columns, label=labels)
    if "image" in columns:
        # keep the encoded bytes/paths; decoding happens per batch (fedhello.data.images)
        ds = Dataset.from_dict(data, features=Features(dict(feats, image=datasets.Image(decode=False))))
        return ds.cast_column("image", datasets.Image(decode=True))
    return Dataset.from_dict(data, features=Features(feats))


def _subsets(
    train: tuple[Dataset, str], test: tuple[Dataset, str], cfg: DataConfig, seed: int
) -> tuple[tuple[Dataset, str], tuple[Dataset, str]]:
    """Both splits checked non-empty, then cut to ``max_train_samples`` / ``max_test_samples``."""
    (train_ds, train_where), (test_ds, test_where) = train, test
    for ds, where in ((train_ds, train_where), (test_ds, test_where)):
        if len(ds) == 0:
            raise DataError(f"{where}: split is empty (no rows)")
    rng = np.random.default_rng(seed)
    return (_subset(train_ds, cfg.max_train_samples, rng), train_where), \
        (_subset(test_ds, cfg.max_test_samples, rng), test_where)


def _finish(
    train: tuple[Dataset, str], test: tuple[Dataset, str], cfg: DataConfig, seed: int, source: str, task: str
) -> Splits:
    """The task's :class:`Splits`: both splits subsampled, cleaned and labelled with the training split's label set."""
    (train_ds, train_where), (test_ds, test_where) = _subsets(train, test, cfg, seed)
    tr_cols, tr_labels, tr_drops = _clean(train_ds, cfg, task, train_where)
    te_cols, te_labels, te_drops = _clean(test_ds, cfg, task, test_where)
    if not tr_labels:
        raise DataError(f"{train_where}: split is empty (no row has {get_task(task).row_inputs} and a label)")
    fixed = get_task(task).fixed_label_names(cfg)
    if fixed is not None:  # the labels are ids already
        label_names = fixed
        train_ids, test_ids = tr_labels, te_labels
    else:
        label_names, index, train_ids, te_keys = _label_set(tr_labels, te_labels, cfg, train_where)
        keep = [i for i, k in enumerate(te_keys) if k in index]
        if len(te_keys) > len(keep):
            te_drops["unknown_label"] = len(te_keys) - len(keep)
        te_cols = {c: [v[i] for i in keep] for c, v in te_cols.items()}
        test_ids = [index[te_keys[i]] for i in keep]
    if not test_ids:
        raise DataError(f"{test_where}: split is empty after dropping rows whose label is not a training label")
    return Splits(
        train=_build(tr_cols, train_ids),
        test=_build(te_cols, test_ids),
        label_names=label_names,
        dropped_test=sum(te_drops.values()),
        dropped_train=sum(tr_drops.values()),
        source=source,
        drops={"train": tr_drops, "test": te_drops},
    )


def _label_set(tr_labels: list, te_labels: list, cfg: DataConfig, train_where: str):
    """The label set, fixed from the training split: integers stay integers (sorted
    numerically), anything else is compared as a string. Returns the label names,
    key -> id, the training ids and the test keys (a test key outside the set is
    the caller's to drop)."""
    if all(isinstance(y, int) for y in tr_labels):
        keys: list[Any] = sorted(set(tr_labels))
        te_keys = [_to_int(y) for y in te_labels]
    else:
        keys = sorted({str(y) for y in tr_labels})
        tr_labels = [str(y) for y in tr_labels]
        te_keys = [str(y) for y in te_labels]
    if len(keys) < 2:
        col = cfg.label_column if isinstance(cfg.label_column, str) else "/".join(cfg.label_column)
        raise DataError(
            f"{train_where}: label column '{col}' has {len(keys)} class"
            f"{'' if len(keys) == 1 else 'es'}; need at least 2"
        )
    index = {k: i for i, k in enumerate(keys)}
    return [str(k) for k in keys], index, [index[y] for y in tr_labels], te_keys


# --------------------------------------------------------------------------- public


def _carve_test(cfg: DataConfig, train: tuple[Dataset, str], seed: int) -> tuple[tuple[Dataset, str], tuple[Dataset, str]]:
    """``data.test_fraction``: the test split carved (seeded) out of the training split."""
    ds, where = train
    n = int(round(cfg.test_fraction * len(ds)))
    if n < 1:
        raise DataError(f"data.test_fraction: {cfg.test_fraction} of the {len(ds)} rows of {where} is no test row")
    rest, test = carve(ds, n, seed + 7919)
    return (rest, where), (test, f"{where} (test share {cfg.test_fraction:g})")


def load_splits(cfg: DataConfig, seed: int, task: str = "text-classification") -> Splits:
    """Load the train/test splits of ``task`` described by ``cfg`` (see :class:`DataConfig`)."""
    fmt = _resolve_format(cfg, task)
    if fmt == "demo":
        (tr_x, tr_y), (te_x, te_y) = make_demo_splits(cfg.demo_samples, seed)
        train = (Dataset.from_dict({"text": tr_x, "label": tr_y}), "demo[train]")
        test = (Dataset.from_dict({"text": te_x, "label": te_y}), "demo[test]")
        return _finish(train, test, cfg.model_copy(update={"text_column": "text", "label_column": "label"}),
                       seed, "demo", task)
    wanted = [cfg.split_train] if cfg.test_fraction > 0 else [cfg.split_train, cfg.split_test]
    if fmt == "imagefolder":
        loaded, source = _load_imagefolder(cfg, wanted)
        # the folder's splits have the columns image and label whatever the config names
        cfg = cfg.model_copy(update={"image_column": "image", "label_column": "label"})
    elif fmt == "hub":
        loaded, source = _load_hub(cfg, wanted)
    else:
        loaded, source = _load_local(cfg, fmt, wanted)
    train, test = _carve_test(cfg, loaded[0], seed) if cfg.test_fraction > 0 else loaded
    return _finish(train, test, cfg, seed, source, task)


def _column_digest(ds: Dataset, col: str) -> bytes:
    h = hashlib.sha256(col.encode())
    if isinstance(ds.features[col], datasets.Image):  # the encoded image bytes (or the file's)
        for v in ds.cast_column(col, datasets.Image(decode=False))[col]:
            data = v.get("bytes") or (Path(v["path"]).read_bytes() if v.get("path") else b"")
            h.update(hashlib.sha256(data).digest())
    else:
        h.update(json.dumps(list(ds[col]), ensure_ascii=False, default=str).encode("utf-8"))
    return h.digest()


def dataset_digest(ds: Dataset) -> str:
    """sha256 of a split's rows as loaded (every column, in row order)."""
    h = hashlib.sha256()
    for col in sorted(ds.column_names):
        h.update(_column_digest(ds, col))
    return h.hexdigest()


def fingerprint(splits: Splits) -> dict[str, str]:
    """The data's identity for resuming: hashes of the label set, the training rows and the test rows."""
    labels = json.dumps([str(x) for x in splits.label_names], ensure_ascii=False).encode("utf-8")
    return {
        "labels": hashlib.sha256(labels).hexdigest(),
        "train": dataset_digest(splits.train),
        "test": dataset_digest(splits.test),
    }


DROP_REASONS = {
    "no_label": "no label",
    "no_input": "no text/input",
    "blank_text": "whitespace-only text",
    "bad_label": "label not an option's index",
    "unknown_label": "label not among the training labels",
}


def drops_line(splits: Splits) -> str | None:
    """One console line on the rows dropped while loading (None when nothing was dropped)."""
    parts = []
    for split, kept in (("train", len(splits.train)), ("test", len(splits.test))):
        d = {k: v for k, v in splits.drops.get(split, {}).items() if v}
        n = sum(d.values())
        if n:
            why = ", ".join(f"{DROP_REASONS.get(k, k)} {v}" for k, v in sorted(d.items()))
            parts.append(f"{n} of {n + kept} {'training' if split == 'train' else 'test'} rows ({why})")
    return "data: dropped " + " and ".join(parts) if parts else None


def carve(ds: Dataset, n: int, seed: int) -> tuple[Dataset, Dataset]:
    """``(rest, carved)``: a seeded random ``n`` rows carved out of ``ds``.

    Both keep the original row order. ``n == 0`` carves nothing; carving all rows
    (or more) is an error since the rest must stay usable.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    if n >= len(ds):
        raise DataError(f"cannot carve {n} rows out of a training split of {len(ds)} rows")
    perm = np.random.default_rng(seed).permutation(len(ds))
    carved = np.sort(perm[:n])
    rest = np.sort(perm[n:])
    return ds.select(rest, keep_in_memory=True), ds.select(carved, keep_in_memory=True)
