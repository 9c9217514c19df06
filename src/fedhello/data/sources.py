"""Loading a text-classification task into two ``datasets.Dataset`` splits.

Every source ends up as :class:`Splits`: ``train`` and ``test`` with exactly the
columns ``text`` (str) and ``label`` (int), and ``label_names``. The label set is
fixed by the training split (sorted; numerically when all labels are integers);
test rows with a label outside it are dropped and counted.

Local files are read with ``datasets.load_dataset("csv" | "json" | "parquet")``
into memory through a throw-away cache folder, so nothing is written under the
user's home and it works with ``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1``.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import datasets
from datasets import ClassLabel, Dataset, Features, Value

from fedhello.config import DataConfig
from fedhello.errors import DataError

from .demo import make_demo_splits

# format -> (datasets builder, accepted file extensions in order of preference)
LOCAL_FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "csv": ("csv", ("csv",)),
    "jsonl": ("json", ("jsonl", "json")),
    "parquet": ("parquet", ("parquet",)),
}

OUTPUT_FEATURES = Features({"text": Value("string"), "label": Value("int64")})


@dataclass
class Splits:
    train: Dataset
    test: Dataset
    label_names: list[str]
    # test rows dropped: label not among the training labels, or text/label missing
    dropped_test: int = 0
    # training rows dropped because their text or label was missing
    dropped_train: int = 0
    # where the data came from (file folder, hub name or "demo"), for reports
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else type(err).__name__
    return first if len(first) <= 300 else first[:297] + "..."


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


def _read_local(file: Path, builder: str) -> Dataset:
    if not _has_rows(file, builder):
        raise DataError(f"{file}: split is empty (no rows)")
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


def _load_local(cfg: DataConfig, fmt: str) -> tuple[tuple[Dataset, str], tuple[Dataset, str], str]:
    if not cfg.path:
        raise DataError(f"data.path must be set for data.format {fmt}")
    root = Path(cfg.path).expanduser()
    if not root.exists():
        raise DataError(f"data.path: {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data.path: {root} is not a directory (expected a folder with the split files)")
    builder, exts = LOCAL_FORMATS[fmt]
    out = []
    for split in (cfg.split_train, cfg.split_test):
        f = _split_file(root, split, exts)
        if f is None:
            alts = "".join(f" (or {root / f'{split}.{e}'})" for e in exts[1:])
            raise DataError(f"missing split file {root / f'{split}.{exts[0]}'}{alts}")
        out.append((_read_local(f, builder), str(f)))
    return out[0], out[1], str(root)


def _load_hub(cfg: DataConfig) -> tuple[tuple[Dataset, str], tuple[Dataset, str], str]:
    if not cfg.name:
        raise DataError("data.name must be set for data.format hub")
    datasets.disable_progress_bars()
    where = cfg.name + (f"/{cfg.subset}" if cfg.subset else "")
    try:
        dd = datasets.load_dataset(cfg.name, cfg.subset)
    except Exception as err:  # noqa: BLE001 - offline, missing, malformed: all data errors
        raise DataError(f"data.name: cannot load hub dataset {where}: {_one_line(err)}") from err
    out = []
    for split in (cfg.split_train, cfg.split_test):
        if split not in dd:
            raise DataError(
                f"hub dataset {where} has no split '{split}' (splits: {', '.join(dd.keys())})"
            )
        out.append((dd[split], f"{where}[{split}]"))
    return out[0], out[1], where


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


def _check_text_column(ds: Dataset, cfg: DataConfig, where: str) -> None:
    if cfg.text_column not in ds.column_names:
        cols = ", ".join(ds.column_names)
        raise DataError(f"data.text_column: column '{cfg.text_column}' not found in {where} (columns: {cols})")


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


def _to_int(v: Any) -> int | None:
    if isinstance(v, int):
        return v
    try:
        return int(str(v).strip())
    except ValueError:
        return None


def _subset(ds: Dataset, n: int | None, rng: np.random.Generator) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    idx = np.sort(rng.choice(len(ds), size=n, replace=False))
    return ds.select(idx, keep_in_memory=True)


def _build(texts: list[str], labels: list[int]) -> Dataset:
    return Dataset.from_dict({"text": texts, "label": labels}, features=OUTPUT_FEATURES)


def _clean(ds: Dataset, cfg: DataConfig, where: str) -> tuple[list[str], list[Any], int]:
    """(texts, canonical labels, dropped) keeping rows with both text and label."""
    _check_text_column(ds, cfg, where)
    label_col = _resolve_label_column(ds, cfg, where)
    raw = _raw_labels(ds, label_col, where)
    texts_in = ds[cfg.text_column]
    texts: list[str] = []
    labels: list[Any] = []
    dropped = 0
    for t, y in zip(texts_in, raw):
        y = _canonical(y)
        if t is None or y is None or (isinstance(t, float) and math.isnan(t)):
            dropped += 1
            continue
        texts.append(t if isinstance(t, str) else str(t))
        labels.append(y)
    return texts, labels, dropped


def _finish(
    train: tuple[Dataset, str], test: tuple[Dataset, str], cfg: DataConfig, seed: int, source: str
) -> Splits:
    (train_ds, train_where), (test_ds, test_where) = train, test
    for ds, where in ((train_ds, train_where), (test_ds, test_where)):
        if len(ds) == 0:
            raise DataError(f"{where}: split is empty (no rows)")
    rng = np.random.default_rng(seed)
    train_ds = _subset(train_ds, cfg.max_train_samples, rng)
    test_ds = _subset(test_ds, cfg.max_test_samples, rng)

    tr_texts, tr_labels, dropped_train = _clean(train_ds, cfg, train_where)
    te_texts, te_labels, dropped_test = _clean(test_ds, cfg, test_where)
    if not tr_texts:
        raise DataError(f"{train_where}: split is empty (no row has both a text and a label)")

    int_mode = all(isinstance(y, int) for y in tr_labels)
    if int_mode:
        keys: list[Any] = sorted(set(tr_labels))
        label_names = [str(k) for k in keys]
        te_keys = [_to_int(y) for y in te_labels]
    else:
        keys = sorted({str(y) for y in tr_labels})
        label_names = list(keys)
        tr_labels = [str(y) for y in tr_labels]
        te_keys = [str(y) for y in te_labels]
    if len(keys) < 2:
        col = cfg.label_column if isinstance(cfg.label_column, str) else "/".join(cfg.label_column)
        raise DataError(
            f"{train_where}: label column '{col}' has {len(keys)} class"
            f"{'' if len(keys) == 1 else 'es'}; need at least 2"
        )
    index = {k: i for i, k in enumerate(keys)}
    train_ids = [index[y] for y in tr_labels]

    test_texts: list[str] = []
    test_ids: list[int] = []
    for t, k in zip(te_texts, te_keys):
        i = index.get(k)
        if i is None:
            dropped_test += 1
            continue
        test_texts.append(t)
        test_ids.append(i)
    if not test_texts:
        raise DataError(f"{test_where}: split is empty after dropping rows whose label is not a training label")
    return Splits(
        train=_build(tr_texts, train_ids),
        test=_build(test_texts, test_ids),
        label_names=label_names,
        dropped_test=dropped_test,
        dropped_train=dropped_train,
        source=source,
    )


# --------------------------------------------------------------------------- public


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Load the train/test splits described by ``cfg`` (see :class:`DataConfig`)."""
    fmt = cfg.format
    if fmt == "demo":
        (tr_x, tr_y), (te_x, te_y) = make_demo_splits(cfg.demo_samples, seed)
        demo_cfg = cfg.model_copy(update={"text_column": "text", "label_column": "label"})
        return _finish(
            (Dataset.from_dict({"text": tr_x, "label": tr_y}), "demo[train]"),
            (Dataset.from_dict({"text": te_x, "label": te_y}), "demo[test]"),
            demo_cfg,
            seed,
            "demo",
        )
    if fmt == "auto":
        if cfg.path:
            root = Path(cfg.path).expanduser()
            if not root.is_dir():
                raise DataError(f"data.path: {root} " + ("is not a directory" if root.exists() else "does not exist"))
            fmt = _detect_format(root, cfg.split_train)
        elif cfg.name:
            fmt = "hub"
        else:
            raise DataError("data.format auto needs data.path (local files) or data.name (hub dataset)")
    if fmt == "hub":
        train, test, source = _load_hub(cfg)
    elif fmt in LOCAL_FORMATS:
        train, test, source = _load_local(cfg, fmt)
    else:  # pragma: no cover - DataConfig validates the format
        raise DataError(f"data.format: unknown format {fmt!r}")
    return _finish(train, test, cfg, seed, source)


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
