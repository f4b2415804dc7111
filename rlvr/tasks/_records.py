"""Tasks backed by a fixed file of records (shared by ``math`` and ``code``).

``read_records`` yields the records of a JSONL, JSON or Parquet file, of a ``datasets``
directory written by ``save_to_disk``, or of a dataset name already in the local Hugging
Face cache (nothing is ever downloaded), each with a ``where`` string naming the file and
line / record / row for error messages. ``FileTask`` turns them into problems and splits
them.

**Held-out split.** A problem is held out when a SHA-256 hash of its id falls below
``heldout_fraction`` (``is_heldout``), so the split depends only on the ids: it does not
move when the file is reordered or grown, or when ``eval.problems`` / ``eval.seed``
change. ``sample_problems(count, seed, split="heldout")`` is the evaluator's call and draws
from the held-out split; a training call (``split="train"``) draws from the other problems
minus ``exclude``. The two never overlap, whatever the seeds. With ``heldout_fraction: 0``
there is no split and every call draws from the whole file minus ``exclude`` (the
base-class rule).
"""

from __future__ import annotations

import hashlib
import json
import random
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

from rlvr.tasks.base import Problem, Task, TooFewProblems, fill_with_repeats
from rlvr.typed_yaml import check_ranges

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass
class FileParams:
    """Parameters every file-backed task shares; a task's ``Params`` extends this."""

    path: str = field(default="", metadata={
        "help": "local .jsonl/.json/.parquet file, a datasets save_to_disk directory, or a "
                "dataset name already in the local Hugging Face cache (never downloaded)"})
    split: str = field(default="train", metadata={
        "help": "split to read from a datasets directory or dataset name (ignored for files)"})
    id_field: str = field(default="id", metadata={
        "help": "record field holding a stable problem id; records without it get a hash of the question"})
    chat: bool = field(default=True, metadata={
        "help": "render the prompt as one user chat message (true) or as plain text (false)"})
    heldout_fraction: float = field(default=0.1, metadata={
        "help": "fraction of problems held out for evaluation, chosen by a hash of the id", "ge": 0, "lt": 1})
    max_problems: int | None = field(default=None, metadata={
        "help": "read at most this many problems (the first in file order); null: all", "ge": 1})

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.path:
            raise ValueError("path is required: a data file, a save_to_disk directory or a cached dataset name")


class FileTask(Task):
    """A task whose problems are the records of ``params.path``, split by a hash of the id.

    Subclasses define ``to_problem(record, where)``; their ``Params`` extend ``FileParams``.
    """

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._splits: tuple[list[Problem], list[Problem]] | None = None  # (train, heldout), read on first use

    # The verifier pool pickles the task into each worker, which only scores: leave the data behind.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_splits": None}

    @abstractmethod
    def to_problem(self, record: dict[str, Any], where: str) -> Problem:
        """The problem in one record; errors name ``where`` (file and line) and the field."""

    def read_problems(self) -> list[Problem]:
        """The file's problems in order, one per distinct id, capped at ``max_problems``."""
        p = self.params
        return load_problems(p.path, p.split, p.max_problems, self.to_problem, self.name)

    @property
    def problems(self) -> list[Problem]:
        """Every problem, in file order."""
        train, heldout = self._load()
        return sorted(train + heldout, key=lambda p: p.metadata["index"])

    @property
    def heldout_ids(self) -> frozenset[str]:
        """Ids of the whole held-out split (not only the ones an evaluation drew)."""
        return frozenset(p.id for p in self._load()[1])

    def drop_problems(self, ids: set[str] | frozenset[str]) -> None:
        """Remove the problems with these ids from both splits (e.g. prompts too long for the
        run, ``data.overlong_prompts: drop``); the split of the others does not move."""
        train, heldout = self._load()
        self._splits = ([p for p in train if p.id not in ids], [p for p in heldout if p.id not in ids])

    def _load(self) -> tuple[list[Problem], list[Problem]]:
        if self._splits is None:
            problems = self.read_problems()
            fraction = self.params.heldout_fraction
            heldout = [p for p in problems if is_heldout(p.id, fraction)]
            train = [p for p in problems if not is_heldout(p.id, fraction)]
            self._splits = (train, heldout)
        return self._splits

    def sample_problems(
        self, count: int, seed: int, exclude: set[str] | frozenset[str] = frozenset(),
        split: Literal["train", "heldout"] = "train", replace: bool = False,
    ) -> list[Problem]:
        """``count`` distinct problems drawn with ``seed`` from ``split``: the held-out part
        of the file, or the training part minus ``exclude`` (module docstring). A part
        smaller than ``count`` is repeated in shuffled passes with ``replace`` (epochs), else
        `TooFewProblems`."""
        train, heldout = self._load()
        p = self.params
        if p.heldout_fraction == 0.0:
            pool = [q for q in train if q.id not in exclude]
            what = f"problems outside `exclude` ({len(exclude)} ids)"
        elif split == "heldout":
            pool = heldout
            what = (f"held-out problems ({p.heldout_fraction:g} of {len(train) + len(heldout)}, chosen by a "
                    f"hash of the id); lower eval.problems or raise heldout_fraction")
        else:
            pool = [q for q in train if q.id not in exclude]
            what = "training problems (outside the held-out split and `exclude`); ask for fewer or use a larger file"
        if count > len(pool):
            if replace and pool:
                return fill_with_repeats(pool, count, random.Random(seed))
            raise TooFewProblems(f"{self.name} task: asked for {count} problems but {p.path} has only {len(pool)} "
                                 f"{what}", available=len(pool), requested=count)
        return random.Random(seed).sample(pool, count)

    def generate(self, rng: random.Random) -> Problem:
        """A uniformly drawn problem of the training split (the file is a fixed list)."""
        train = self._load()[0]
        if not train:
            raise ValueError(f"{self.name} task: {self.params.path} has no problems outside the held-out split")
        return rng.choice(train)


def load_problems(path: str, split: str, max_problems: int | None,
                  to_problem: Callable[[dict[str, Any], str], Problem], task: str,
                  records: Iterable[tuple[str, dict[str, Any]]] | None = None) -> list[Problem]:
    """``to_problem(record, where)`` of each record in order, one per distinct id (the first
    wins), each with ``metadata["index"]`` its position, capped at ``max_problems``. The
    records are read from ``path`` unless given as (where, record) pairs."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, (where, record) in enumerate(read_records(path, split, task) if records is None else records):
        problem = to_problem(record, where)
        if problem.id in seen:
            continue
        seen.add(problem.id)
        problem.metadata["index"] = index
        problems.append(problem)
        if max_problems is not None and len(problems) >= max_problems:
            break
    if not problems:
        raise ValueError(f"{task} task: {path} holds no problems")
    return problems


def is_heldout(problem_id: str, fraction: float) -> bool:
    """Whether ``problem_id`` falls in the held-out split: SHA-256 of the id, read as a
    uniform number in [0, 1), is below ``fraction``. Stable across runs, machines and files."""
    digest = hashlib.sha256(f"rlvr-heldout:{problem_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def text_id(text: str, prefix: str = "q") -> str:
    """A stable id for a record without one: a hash of its text."""
    return prefix + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def require_field(record: dict[str, Any], name: str, where: str, param: str) -> Any:
    """``record[name]``, or an error naming the place, the missing field, the fields there
    are and the parameter that chooses the field."""
    if name not in record:
        fields = ", ".join(sorted(map(str, record))) or "none"
        raise ValueError(f"{where}: no field {name!r} (fields: {fields}); set {param}")
    if record[name] is None:
        raise ValueError(f"{where}: field {name!r} is null; fill it in or drop the record")
    return record[name]


# ----------------------------------------------------------------------------- readers


def read_records(path_str: str, split: str, task: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) pairs; ``where`` names the file and line/record/row for error messages."""
    path = Path(path_str).expanduser()
    if path.is_dir():
        yield from _dataset_rows(_load_from_disk(path, split, task), f"{path} [{split}]")
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            yield from _jsonl(path)
        elif suffix == ".json":
            yield from _json(path)
        elif suffix == ".parquet":
            yield from _parquet(path)
        else:
            raise ValueError(f"{task} task: {path} is not a .jsonl, .json or .parquet file")
    elif path.suffix.lower() in DATA_SUFFIXES or path_str.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"{task} task: no such file or directory: {path}")
    else:
        yield from _dataset_rows(_load_cached_dataset(path_str, split, task), f"dataset {path_str} [{split}]")


def _check_record(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object (one problem's fields), got {type(record).__name__}")
    return record


def _jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            where = f"{path} line {line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            yield where, _check_record(record, where)


def _json(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for i, record in enumerate(data):
        where = f"{path} record {i} (0-based)"
        yield where, _check_record(record, where)


def _parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise ValueError(f"{path}: cannot read as Parquet ({type(e).__name__}: {e})") from None
    for i, record in enumerate(rows):
        yield f"{path} row {i} (0-based)", record


def _load_from_disk(path: Path, split: str, task: str) -> Any:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise ValueError(f"{task} task: {path} is a directory but not a datasets save_to_disk one ({e})") from None
    return _pick_split(data, split, str(path), task)


def _load_cached_dataset(name: str, split: str, task: str) -> Any:
    """``datasets.load_dataset`` with the Hub switched off for the call: only the local cache."""
    import datasets
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as e:
        raise ValueError(
            f"{task} task: cannot load dataset {name!r} (split {split!r}) from the local cache ({type(e).__name__}: "
            f"{e}). Nothing is downloaded here: save it once with save_to_disk and point path at that "
            f"directory, or at a .jsonl/.parquet file") from None
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved
    return _pick_split(data, split, name, task)


def _pick_split(data: Any, split: str, source: str, task: str) -> Any:
    if hasattr(data, "keys") and not hasattr(data, "features"):  # a DatasetDict
        if split not in data:
            raise ValueError(f"{task} task: {source} has no split {split!r}; it has {', '.join(sorted(data))}")
        return data[split]
    return data


def _dataset_rows(data: Any, source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, record in enumerate(data):
        yield f"{source} row {i} (0-based)", record
