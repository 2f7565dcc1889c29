"""``atrank-predict``: batch scoring of request files with a bundle of ``atrank-export``.

``atrank-predict bundle=... events=... requests=... out=scores.parquet`` writes one row per
(request, candidate) with ``p_<task>``; see :mod:`atrank.serve.batch` for the output layout
and :mod:`atrank.serve.chunks` for how the inputs are streamed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from atrank.cli.errors import friendly_errors
from atrank.config import ConfigError, predict_config, register_configs

register_configs()  # the schemas every composed config is checked against


def predict(cfg: DictConfig) -> dict[str, Any] | None:
    """Runs one batch scoring from a composed ``predict`` config.

    Returns:
        The merged summary on rank 0 (also written next to the output), None elsewhere.
    """
    import lightning as L

    from atrank.runtime import procs_per_node, set_threads
    from atrank.serve.batch import PartWriter, Ranking, run_predict
    from atrank.serve.bundle import BundleError
    from atrank.serve.chunks import events_table, find_source
    from atrank.serve.predictor import Predictor

    job = predict_config(cfg)
    set_threads(job.threads, 0, procs_per_node(job.trainer or {}))
    requests = find_source(job.requests, "requests")
    requests.schema()  # a missing column fails before the model is loaded
    events = find_source(job.events, "events")
    try:
        predictor = Predictor(job.bundle)
    except BundleError as e:
        raise ConfigError(f"config key 'bundle': {e}") from None
    ranking = Ranking(job.top_k, job.rank_by, dict(job.blend))
    for key, why in ranking.check(list(predictor.bundle.tasks)):
        raise ConfigError(f"config key '{key}': {why}")
    writer = PartWriter(Path(job.out))
    with tempfile.TemporaryDirectory(prefix="atrank-predict-") as tmp:
        ev = events_table(events, Path(tmp))
        trainer: L.Trainer = hydra.utils.instantiate(job.trainer, callbacks=[writer], logger=False)
        _check_out(Path(job.out), trainer.world_size)
        summary = run_predict(trainer, writer, predictor, requests, ev, job.chunk_rows, ranking)
    if summary is not None:
        _report(summary)
    return summary


def _check_out(out: Path, world: int) -> None:
    """Refuses an ``out`` that exists as the other kind (a file where parts go, or the folder
    of an earlier run where one file goes)."""
    from atrank.serve.batch import output_layout

    folder, _, single = output_layout(out, world)
    if single is not None and single.is_dir():
        raise ConfigError(
            f"config key 'out': {out} is a folder (an earlier run's parts?); with one process "
            "a .parquet/.csv out is one file: remove the folder or choose another path"
        )
    if single is None and folder.is_file():
        raise ConfigError(
            f"config key 'out': {out} is a file, but {world} processes write a folder of "
            "parts there: remove it or choose another path"
        )


def _report(summary: dict[str, Any]) -> None:
    n = summary.get("candidates", 0)
    print(
        f"scored {n:,} candidates of {summary.get('requests', 0):,} requests in "
        f"{summary['seconds']:.1f} s ({summary['candidates_per_second']:,}/s) on "
        f"{summary['ranks']} process(es)"
    )
    unscorable = summary.get("unscorable", 0)
    if unscorable:
        why = json.dumps(summary.get("unscorable_by_reason", {}))
        print(f"{unscorable:,} candidates could not be scored (written, scorable=false): {why}")
    dropped = summary.get("events_dropped_by_reason", {})
    if dropped:
        print(f"event rows dropped: {json.dumps(dropped)}")
    print(f"{summary.get('rows_written', 0):,} rows written to {summary['out']}")


@hydra.main(version_base="1.3", config_path="pkg://atrank.conf", config_name="predict")
@friendly_errors
def _main(cfg: DictConfig) -> None:
    predict(cfg)


def main() -> None:
    """Console-script entry point."""
    _main()
