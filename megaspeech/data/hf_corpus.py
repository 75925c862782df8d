"""Text corpora stored as Hugging Face `datasets` data, read through the `datasets` library.

Specs (megaspeech.data.corpora lists them beside the built-in corpora):
  parquet:GLOB[;OPT...]    parquet files, streamed (`load_dataset("parquet", streaming=True)`), file by file
  jsonl:GLOB[;OPT...]      JSON-lines files (.jsonl, .json, also .gz), streamed the same way
  hf_disk:DIR[;OPT...]     a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`,
                           opened with `load_from_disk`: memory-mapped Arrow, iterated in batches, so
                           memory stays bounded although it is not `streaming=True` (that mode has no
                           reader for a saved directory)
Options, `;`-separated after the path:
  text=COL     the column holding the document text (default `text`)
  id=COL       the column holding the document id; without it a document's id is
               `<file stem or directory name>/<row index within it>`
  split=NAME   hf_disk with a DatasetDict: the split to read (default `train`)
One row = one document; a null or empty text is skipped (an empty document).
Files are read in sorted path order, rows in file order, so the output is deterministic.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterator

HF_KINDS = ("parquet", "jsonl", "hf_disk")
_OPTIONS = ("text", "id", "split")
_BATCH = 1000  # rows per Arrow batch read; documents are yielded one at a time


def parse_spec(kind: str, arg: str) -> tuple[str, dict]:
    """`PATH;text=COL;id=COL` -> (PATH, {"text": COL, "id": COL|None, "split": NAME})."""
    path, *opts = arg.split(";")
    out = {"text": "text", "id": None, "split": "train"}
    for o in opts:
        key, eq, val = o.partition("=")
        if not eq or key.strip() not in _OPTIONS or not val.strip():
            raise ValueError(f"corpus '{kind}:{arg}': bad option {o!r}; options are "
                             f"{', '.join(k + '=NAME' for k in _OPTIONS)}, e.g. '{kind}:{path};text=content;id=url'")
        out[key.strip()] = val.strip()
    if not path:
        raise ValueError(f"corpus '{kind}:{arg}' names no path; e.g. '{kind}:data/*.{kind}'")
    return path, out


def _datasets():
    try:
        import datasets
    except ImportError:
        raise RuntimeError("Hugging Face corpora (parquet:, jsonl:, hf_disk:) need the `datasets` package: "
                           "pip install 'megaspeech[hf]'") from None
    datasets.disable_progress_bars()
    return datasets


def _check_columns(columns: list[str], where: str, opts: dict) -> None:
    for opt, what in (("text", "text"), ("id", "document id")):
        col = opts[opt]
        if col is not None and col not in columns:
            raise ValueError(f"{where}: no column {col!r} (columns: {', '.join(columns)}); name the {what} column "
                             f"with ';{opt}=COLUMN' in the corpus spec")


def _rows(batches, columns: list[str] | None, where: str, opts: dict, name: str) -> Iterator[tuple[str, str]]:
    """(doc id, text) of every row of `batches` (dicts of column -> list); the columns are checked
    before the first row (`columns` None: the schema is known only from the first batch)."""
    text_col, id_col = opts["text"], opts["id"]
    if columns is not None:
        _check_columns(columns, where, opts)
    row = 0
    for batch in batches:
        if columns is None:
            columns = list(batch)
            _check_columns(columns, where, opts)
        ids = batch[id_col] if id_col is not None else None
        for i, text in enumerate(batch[text_col]):
            if text is not None and not isinstance(text, str):
                raise ValueError(f"{where}: row {row}: column {text_col!r} holds {type(text).__name__}, not "
                                 f"text; name the text column with ';text=COLUMN'")
            if ids is None:
                doc = f"{name}/{row}"
            elif ids[i] is None or str(ids[i]) == "":
                raise ValueError(f"{where}: row {row}: id column {id_col!r} is empty; fill it or leave out "
                                 f"';id=' (ids are then '{name}/<row>')")
            else:
                doc = str(ids[i])
            row += 1
            if text:
                yield doc, text


def _stem(path: str) -> str:
    """`dir/wiki.en.jsonl.gz` -> `wiki.en`: the file name without its data and compression suffixes."""
    name = Path(path).name
    for suffix in (".gz", ".bz2", ".xz", ".zst", ".parquet", ".jsonl", ".json"):
        name = name[:-len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else name
    return name


def _files(kind: str, pattern: str, opts: dict) -> Iterator[tuple[str, str]]:
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    if not paths:
        raise RuntimeError(f"corpus '{kind}:{pattern}' matched no file; check the path and glob "
                           f"(e.g. '{kind}:/data/corpus/*.{'parquet' if kind == 'parquet' else 'jsonl'}')")
    datasets = _datasets()
    builder = "parquet" if kind == "parquet" else "json"
    for p in paths:
        # one streaming dataset per file: a document's id names its file, and no file is read whole
        ds = datasets.load_dataset(builder, data_files=[p], split="train", streaming=True)
        columns = list(ds.features) if ds.features is not None else None
        stem = _stem(p)
        yield from _rows(ds.iter(batch_size=_BATCH), columns, p, opts, stem)


def _disk(path: str, opts: dict) -> Iterator[tuple[str, str]]:
    p = Path(os.path.expanduser(path))
    datasets = _datasets()
    if not (p / "state.json").is_file() and not (p / "dataset_dict.json").is_file():
        raise RuntimeError(f"corpus 'hf_disk:{path}': {p} is not a directory written by save_to_disk (no "
                           f"state.json or dataset_dict.json); for data files use parquet:GLOB or jsonl:GLOB")
    ds = datasets.load_from_disk(str(p))
    if isinstance(ds, datasets.DatasetDict):
        if opts["split"] not in ds:
            raise ValueError(f"corpus 'hf_disk:{path}': no split {opts['split']!r} (splits: {', '.join(ds)}); "
                             f"choose one with ';split=NAME'")
        ds = ds[opts["split"]]
    yield from _rows(ds.to_iterable_dataset().iter(batch_size=_BATCH), list(ds.column_names), str(p), opts, p.name)


def iter_hf_corpus(kind: str, arg: str) -> Iterator[tuple[str, str]]:
    """(doc id, text) of one Hugging Face corpus spec `kind:arg` (see the module docstring)."""
    path, opts = parse_spec(kind, arg)
    return _disk(path, opts) if kind == "hf_disk" else _files(kind, path, opts)
