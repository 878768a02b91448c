"""Everything an experiment reads from the Hugging Face Hub, fetched once into the caches.

``hub_items(cfg)`` lists, without network, what the experiment's jobs would download on
first use:

- ``model``: ``model.path`` when it is a hub id (not null, the tiny testbed model; not an
  existing local directory; not a ``.gguf`` file). The tokenizer, the reference model and
  a critic all load from the same repository (or from the warm start built from it), so
  the model's snapshot holds them too.
- ``dataset``: each split of a ``math`` / ``code`` task whose ``source`` is a hub dataset
  id, fetched with the task's own call, ``datasets.load_dataset(source, config,
  split=split)``, so that the data step's later call finds the same cache entry.
- ``lm-eval``: each evaluation suite that reads its data from the hub: every suite in
  ``eval.suites`` but the task's own local suites (``chains_test``, ``math_test``, ...) and
  those ``eval.data_files`` points at a local file. Its task dict is built as evaluation
  builds it (``lm_eval.tasks.get_task_dict`` on ``creditbench.lmeval.suite_spec``), which
  loads each task's dataset into the datasets cache.

``fetch(cfg, out)`` fetches every item (or, offline, checks that each one is in the
caches), reports each on one line, and writes the manifest ``out`` (JSON: each item's
kind, hub id, revision, and the local folder it resolved to) once every item succeeded.
A failed item does not stop the others: all of them are tried, the failures are listed
one per line, and the status is 2 with no manifest written.

Models go to the hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``), read from the environment when ``fetch`` runs; datasets to
the datasets cache (``$HF_DATASETS_CACHE``, else ``$HF_HOME/datasets``). Later jobs that
run with ``HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1`` read them from there.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from creditbench.config import ExperimentConfig
from creditbench.utils import atomic_write_json

KINDS = ("model", "dataset", "lm-eval")
# the weights transformers loads first; a repository that has them needs no other format
_SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
# other formats of the same weights (PyTorch, TensorFlow, Flax, ONNX, GGUF, the original
# checkpoint), left out where the repository has safetensors weights
_DUPLICATE_WEIGHTS = [
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.h5",
    "*.msgpack",
    "*.onnx",
    "*.gguf",
    "original/*",
    "onnx/*",
]
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubItem:
    """One thing an experiment reads from the hub.

    ``kind``: ``model``, ``dataset`` or ``lm-eval``. ``id``: the hub repository (a suite's
    name for ``lm-eval``). ``revision``: the one the config names (none do yet: the
    default branch). ``config`` / ``split``: a dataset's configuration and split.
    ``data_files``: an ``lm-eval`` group's members read from local files
    (``eval.data_files``), as ``(task, path)`` pairs.
    """

    kind: str
    id: str
    revision: str | None = None
    config: str | None = None
    split: str | None = None
    data_files: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        text = f"{self.kind} {self.id}"
        details = [f"config {self.config}"] if self.config else []
        details += [f"split {self.split}"] if self.split else []
        details += [f"revision {self.revision}"] if self.revision else []
        return f"{text} ({', '.join(details)})" if details else text


# ------------------------------------------------------------------- gathering
def _hub_model(path: str | None) -> bool:
    if path is None or path.lower().endswith(".gguf"):
        return False
    return not Path(path).expanduser().exists()  # the config accepts no other local form


def _hub_dataset(source: str) -> bool:
    return not source.lower().endswith((".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz"))


def _local_suite(suite: str, data_file: Any) -> bool:
    """Whether ``eval.data_files`` reads the whole suite from a local file: a path, or
    ``{suite: path}`` (a group's ``{member: path}`` may leave members on the hub)."""
    return isinstance(data_file, str) or (isinstance(data_file, dict) and set(data_file) == {suite})


def hub_items(cfg: ExperimentConfig) -> list[HubItem]:
    """What the experiment reads from the hub, in a fixed order, without network (no hub
    library is imported)."""
    from creditbench.cli import suites_of
    from creditbench.tasks import make_task

    items: list[HubItem] = []
    if _hub_model(cfg.model.path):
        items.append(HubItem("model", cfg.model.path))
    for src in (getattr(cfg.task, "train", None), getattr(cfg.task, "test", None)):
        if src is not None and _hub_dataset(src.source):
            items.append(HubItem("dataset", src.source, config=src.config, split=src.split))
    if cfg.eval.backend == "lm-eval":
        local = make_task(cfg.task).suites
        for suite in suites_of(cfg):
            data_file = cfg.eval.data_files.get(suite)
            if suite in local or _local_suite(suite, data_file):
                continue
            members = tuple(sorted(data_file.items())) if isinstance(data_file, dict) else ()
            items.append(HubItem("lm-eval", suite, data_files=members))
    return list(dict.fromkeys(items))  # train and test may be the same split


# ----------------------------------------------------------------- environment
def hub_cache_dir() -> Path:
    """The hub cache as huggingface_hub computes it, from the environment now."""
    env = os.environ
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(env[key]).expanduser()
    home = env.get("HF_HOME") or Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / (
        "huggingface"
    )
    return Path(home).expanduser() / "hub"


def offline_requested() -> bool:
    """``HF_HUB_OFFLINE`` (or ``HF_DATASETS_OFFLINE``) set to a true value."""
    return any(
        os.environ.get(k, "").upper() in _TRUE for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


_OFFLINE_FLAGS = {
    "huggingface_hub.constants": ("HF_HUB_OFFLINE",),
    "datasets.config": ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"),
}


@contextmanager
def hub_offline() -> Iterator[None]:
    """Inside: no hub traffic, as under ``HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1``.

    The libraries read these variables when they are imported, so their flags are set
    too where they already are; everything is restored on the way out.
    """
    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    saved_env = {k: os.environ.get(k) for k in keys}
    saved_flags = []
    os.environ.update(dict.fromkeys(keys, "1"))
    for name, flags in _OFFLINE_FLAGS.items():
        module = sys.modules.get(name)
        for flag in flags if module is not None else ():
            if hasattr(module, flag):
                saved_flags.append((module, flag, getattr(module, flag)))
                setattr(module, flag, True)
    try:
        yield
    finally:
        for module, flag, value in saved_flags:
            setattr(module, flag, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -------------------------------------------------------------------- fetching
def _ignore_patterns(files: list[str]) -> list[str] | None:
    return _DUPLICATE_WEIGHTS if any(f in _SAFETENSORS for f in files) else None


def _fetch_model(item: HubItem, offline: bool, cache_dir: Path) -> dict:
    from huggingface_hub import HfApi, snapshot_download, try_to_load_from_cache

    if offline:
        config = try_to_load_from_cache(
            item.id, "config.json", cache_dir=cache_dir, revision=item.revision
        )
        if not isinstance(config, str):
            raise FileNotFoundError(f"no snapshot with a config.json in {cache_dir}")
        snapshot = Path(config).parent
        files = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*")]
    else:
        try:
            files = HfApi().list_repo_files(item.id, revision=item.revision)
        except Exception as e:  # the hub out of reach: a complete cached snapshot will do
            try:
                return _fetch_model(item, True, cache_dir)
            except Exception:
                raise e from None
    path = snapshot_download(
        item.id,
        revision=item.revision,
        cache_dir=cache_dir,
        local_files_only=offline,
        ignore_patterns=_ignore_patterns(files),
    )
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json")
    return {"path": str(path), "commit": Path(path).name}


def _dataset_folder(dataset) -> str | None:
    files = getattr(dataset, "cache_files", None) or []
    if isinstance(files, dict):  # a DatasetDict: {split: [...]}
        files = next(iter(files.values()), [])
    return str(Path(files[0]["filename"]).parent) if files else None


def _fetch_dataset(item: HubItem) -> dict:
    from datasets import load_dataset

    dataset = load_dataset(item.id, item.config, split=item.split)  # the task's own call
    return {"path": _dataset_folder(dataset), "rows": len(dataset)}


def _leaf_tasks(task_dict: dict) -> Iterator:
    for value in task_dict.values():
        if isinstance(value, dict):
            yield from _leaf_tasks(value)
        else:
            yield value


def _fetch_suite(item: HubItem, task_manager) -> dict:
    from lm_eval.tasks import get_task_dict

    from creditbench.lmeval import suite_spec

    data_file = dict(item.data_files) or None
    task_dict = get_task_dict([suite_spec(task_manager, item.id, data_file)], task_manager)
    datasets = []
    for task in _leaf_tasks(task_dict):
        config = getattr(task, "config", None)
        datasets.append(
            {
                "task": getattr(config, "task", None),
                "dataset": getattr(config, "dataset_path", None),
                "config": getattr(config, "dataset_name", None),
                "path": _dataset_folder(getattr(task, "dataset", None)),
            }
        )
    paths = {d["path"] for d in datasets if d["path"]}
    return {"path": paths.pop() if len(paths) == 1 else None, "datasets": datasets}


def _source(item: HubItem, offline: bool) -> str:
    if offline:
        return "the local cache"
    from huggingface_hub import constants

    prefix = {"model": "", "dataset": "datasets/"}.get(item.kind)
    if prefix is None:  # a suite: its tasks' datasets
        return f"the hub ({constants.ENDPOINT}, the suite's datasets)"
    return f"{constants.ENDPOINT}/{prefix}{item.id}"


def fetch(
    cfg: ExperimentConfig,
    out: str | Path,
    offline: bool | None = None,
    config_path: str | None = None,
) -> int:
    """Fetch (``offline``: check) every hub item of ``cfg``; write the manifest ``out``
    when all succeeded. Returns 0, or 2 after listing the failures on stderr.

    ``offline`` None: offline when ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` is set.
    ``config_path``: the experiment file, named in the hint of a missing item.
    """
    offline = offline_requested() if offline is None else offline
    items = hub_items(cfg)
    cache_dir = hub_cache_dir()
    records, failures = [], []
    task_manager = None
    with hub_offline() if offline else nullcontext():
        for item in items:
            try:
                if item.kind == "model":
                    got = _fetch_model(item, offline, cache_dir)
                elif item.kind == "dataset":
                    got = _fetch_dataset(item)
                else:
                    if task_manager is None:
                        from creditbench.lmeval import suite_task_manager

                        task_manager = suite_task_manager(
                            [i.id for i in items if i.kind == "lm-eval"]
                        )
                    got = _fetch_suite(item, task_manager)
            except Exception as e:  # every item is tried; the failures are listed at the end
                reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
                failures.append(
                    (item, f"{type(e).__name__}: {reason}" if reason else type(e).__name__)
                )
                print(f"fetch: {item.describe()}: {'missing' if offline else 'failed'}", flush=True)
                continue
            verb = "found" if offline else "fetched"
            print(
                f"fetch: {verb} {item.describe()} from {_source(item, offline)} -> {got['path']}",
                flush=True,
            )
            records.append(
                {
                    "kind": item.kind,
                    "id": item.id,
                    "revision": item.revision,
                    **(
                        {"config": item.config, "split": item.split}
                        if item.kind == "dataset"
                        else {}
                    ),
                    **got,
                }
            )
    if failures:
        hint = f"creditbench fetch -c {config_path}" if config_path else "creditbench fetch"
        for item, reason in failures:
            if offline:
                print(
                    f"creditbench: fetch: missing {item.describe()}: not in the local cache "
                    f"({reason}); run `{hint}` where the hub can be reached",
                    file=sys.stderr,
                )
            else:
                print(
                    f"creditbench: fetch: cannot fetch {item.describe()}: {reason}", file=sys.stderr
                )
        print(
            f"creditbench: fetch: {len(failures)} of {len(items)} item(s) failed; "
            f"no manifest written to {out}",
            file=sys.stderr,
        )
        return 2
    atomic_write_json(
        out,
        {
            "experiment": cfg.experiment,
            "offline": offline,
            "hub_cache": str(cache_dir),
            "items": records,
        },
    )
    print(f"fetch: {len(records)} item(s); manifest {out}", flush=True)
    return 0
