"""Read tracker runs back from disk, with each tracker's own reader where it has one: TensorBoard's
EventAccumulator, MLflow's client over a file store, Lightning's metrics.csv, and W&B's offline
run files (a LevelDB-style log of protobuf records, read here since wandb ships no reader)."""

from __future__ import annotations

import csv
import struct
from pathlib import Path
from typing import Any

_BLOCK = 32 * 1024
_HEADER = 7  # W&B file header: ":W&B", magic (2 bytes), version (1)


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def mlflow_runs(uri: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiments = client.search_experiments()
    return [run for e in experiments for run in client.search_runs([e.experiment_id])]


def mlflow_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


def _wandb_payloads(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pending, pos = [], b"", _HEADER
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            out.append(pending + chunk)
    return out


def wandb_offline_runs(save_dir: Path) -> list[dict[str, Any]]:
    """Every offline run under save_dir/wandb: its id, group, name, history steps and summary."""
    from wandb.proto import wandb_internal_pb2 as pb

    runs = []
    for folder in sorted((save_dir / "wandb").glob("offline-run-*")):
        run: dict[str, Any] = {"folder": folder, "history": [], "summary": {}, "config": {}}
        for path in folder.glob("run-*.wandb"):
            for payload in _wandb_payloads(path):
                record = pb.Record()
                record.ParseFromString(payload)
                which = record.WhichOneof("record_type")
                if which == "run":
                    run.update(id=record.run.run_id, group=record.run.run_group,
                               name=record.run.display_name, project=record.run.project,
                               entity=record.run.entity)
                    run["config"].update({i.key: i.value_json for i in record.run.config.update})
                elif which == "history":
                    items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
                    run["history"].append(items)
                elif which == "summary":
                    run["summary"].update({i.key or "/".join(i.nested_key): i.value_json
                                           for i in record.summary.update})
                elif which == "config":
                    run["config"].update({i.key or "/".join(i.nested_key): i.value_json
                                          for i in record.config.update})
        runs.append(run)
    return runs
