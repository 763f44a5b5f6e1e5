"""Score text multiple-choice tasks with lm-evaluation-harness, offline, into evals rows.

Each task's items are written as JSONL documents `{context, choices, label}` under a work folder,
and an lm-eval task config points at that file (`dataset_path: json`, `dataset_kwargs.data_files`),
with lm-eval's multiple-choice defaults: the prompt is `context`, each choice follows it after a
space, `acc` and `acc_norm` are its metrics, examples (k = `num_fewshot`) are drawn from the task's
own documents with lm-eval's default sampler and seed. The run holds `HF_DATASETS_OFFLINE` and
`HF_HUB_OFFLINE` (and the libraries' flags read from them at import) so nothing asks a hub.
lm-eval's per-task `acc` / `acc_norm` become the task's evals rows (`models.metrics.metric_rows`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from models.data.errors import DataError
from models.data.fewshot import FEWSHOT_DELIMITER, FEWSHOT_SEED, TARGET_DELIMITER, doc, supports_fewshot
from models.data.types import EvalTask
from models.harness import require_lm_eval
from models.metrics import metric_rows

OFFLINE_ENV = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
METRICS = ("acc", "acc_norm")  # lm-eval's multiple-choice metrics, the `multiple_choice` family's rows


def harness_scores(task: EvalTask) -> bool:
    """Whether lm-eval scores this task: text multiple choice (`acc`, `acc_norm`) with prompts as text."""
    return task.group == "text" and task.metric == "multiple_choice" and supports_fewshot(task)


def task_config(name: str, data_file: Path, num_fewshot: int, cache_dir: Path,
                fewshot_file: Path | None = None) -> dict[str, Any]:
    """The lm-eval task config of a local JSONL of `{context, choices, label}` documents; examples
    come from `fewshot_file` (same layout, the "train" split) or else the documents themselves."""
    files = {"test": str(data_file)} | ({"train": str(fewshot_file)} if fewshot_file else {})
    return {"task": name, "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": files, "cache_dir": str(cache_dir)},
            "test_split": "test", "output_type": "multiple_choice",
            "doc_to_text": "context", "doc_to_choice": "choices", "doc_to_target": "label",
            "target_delimiter": TARGET_DELIMITER, "fewshot_delimiter": FEWSHOT_DELIMITER,
            "fewshot_config": {"sampler": "default", "split": "train" if fewshot_file else "test"},
            "num_fewshot": num_fewshot,
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in METRICS],
            "metadata": {"version": 1.0}}


def _write_docs(items, path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(doc(item), ensure_ascii=False) + "\n")
    return path


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """The Hugging Face libraries told to stay offline, for the run only (environment and flags)."""
    saved = {k: os.environ.get(k) for k in OFFLINE_ENV}
    flags = []
    for module, attr in (("datasets.config", "HF_DATASETS_OFFLINE"), ("huggingface_hub.constants", "HF_HUB_OFFLINE")):
        with contextlib.suppress(ImportError):
            mod = __import__(module, fromlist=[attr])
            flags.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, True)
    os.environ.update({k: "1" for k in OFFLINE_ENV})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for mod, attr, value in flags:
            setattr(mod, attr, value)


def build_tasks(tasks: Sequence[EvalTask], workdir: Path, num_fewshot: Mapping[str, int]) -> dict[str, Any]:
    """lm-eval `ConfigurableTask`s of the tasks, their documents written under `workdir`."""
    from lm_eval.api.task import ConfigurableTask

    workdir.mkdir(parents=True, exist_ok=True)
    built = {}
    for task in tasks:
        k = int(num_fewshot.get(task.name, 0))
        pool = len(task.fewshot_pool) or len(task.items) - 1
        if k > pool:
            raise DataError(f"task {task.name!r}: {k}-shot needs {k} examples to draw from; there are {pool}")
        data_file = _write_docs(task.items, workdir / f"{task.name}.jsonl")
        shots = _write_docs(task.fewshot_pool, workdir / f"{task.name}.train.jsonl") if task.fewshot_pool else None
        lm_task = ConfigurableTask(config=task_config(task.name, data_file, k, workdir / "hf_datasets", shots))
        lm_task.set_fewshot_seed(FEWSHOT_SEED)
        built[task.name] = lm_task
    return built


def packaged_task(name: str, data_file: Path, num_fewshot: int, cache_dir: Path,
                  train_file: Path | None = None) -> Any:
    """lm-eval's own task definition `name` (its shipped YAML: prompts, document processing,
    metrics, few-shot rule) reading local files in the benchmark's published layout instead of the
    hub: `data_file` as its test split and `train_file` as its training split, which its examples
    come from; without one, examples come from `data_file`, drawn as `task_config`'s are."""
    import lm_eval
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    found = sorted(Path(lm_eval.__file__).parent.joinpath("tasks").rglob(f"{name}.yaml"))
    if not found:
        raise ValueError(f"lm-eval ships no task {name!r}")
    files = {"test": str(data_file)} | ({"train": str(train_file)} if train_file else {})
    cfg = load_yaml(found[0]) | {
        "dataset_path": "json", "dataset_name": None, "validation_split": None,
        "dataset_kwargs": {"data_files": files, "cache_dir": str(cache_dir)}, "test_split": "test",
        "training_split": "train" if train_file else None, "num_fewshot": num_fewshot}
    if not train_file:
        cfg["fewshot_config"] = {"sampler": "default", "split": "test"}
    for key in ("tag", "group"):
        cfg.pop(key, None)
    task = ConfigurableTask(config=cfg)
    task.set_fewshot_seed(FEWSHOT_SEED)
    return task


def run_tasks(lm: Any, built: Mapping[str, Any]) -> dict[str, Any]:
    """lm-eval's `evaluate` over built tasks (no bootstrap, no sample log): its results dict."""
    from lm_eval.evaluator import evaluate as lm_evaluate

    return lm_evaluate(lm=lm, task_dict={"tasks": dict(built), "groups": {}, "group_map": {}},
                       bootstrap_iters=0, log_samples=False)


def lm_eval_rows(model: Any, tok: Any, tasks: Sequence[EvalTask], *, workdir: Path,
                 num_fewshot: Mapping[str, int] | None = None, stable_metric: Mapping[str, str] | None = None,
                 batch_size: int = 64) -> list[dict[str, Any]]:
    """The evals rows of text multiple-choice tasks scored by lm-evaluation-harness."""
    if not tasks:
        return []
    require_lm_eval()
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    with offline():
        from models.harness.lm import VLMSweepLM

        built = build_tasks(tasks, Path(workdir), num_fewshot or {})
        results = run_tasks(VLMSweepLM(model, tok, batch_size=batch_size), built)
    rows = []
    for task in tasks:
        scores = results["results"][task.name]
        rows += metric_rows(task=task.name, group=task.group, family="multiple_choice", chance=task.chance,
                            n=len(task.items), values={m: float(scores[f"{m},none"]) for m in METRICS},
                            stable_metric=(stable_metric or {}).get(task.name))
    return rows
