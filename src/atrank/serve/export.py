"""``atrank-export``: a training checkpoint -> a self-contained bundle (:mod:`.bundle`)."""

from __future__ import annotations

import json
from pathlib import Path

from atrank.build import data_shape
from atrank.model import build_model
from atrank.runtime import METRICS_FILE, checkpoint_run
from atrank.serve.bundle import BundleTask, write_bundle
from data_prep.meta import read_meta

MODEL_PREFIX = "model."


def export_bundle(
    ckpt_path: Path, out: Path, data_dir: Path | None = None, onnx: bool = False
) -> Path:
    """Writes the bundle of a training checkpoint.

    Args:
        ckpt_path: a checkpoint written by ``atrank-train``.
        out: the bundle directory (replaced if it exists).
        data_dir: the prepared data it was trained on; None = the one recorded in it.
        onnx: also write the scoring graph as ``model.onnx`` (:mod:`atrank.serve.onnx_export`).

    Returns:
        The bundle directory.
    """
    run, ckpt = checkpoint_run(Path(ckpt_path))
    hp = ckpt["hyper_parameters"]
    prepared = Path(data_dir) if data_dir is not None else Path(str(hp["data_dir"]))
    meta = read_meta(prepared)
    state = ckpt["state_dict"]
    assert isinstance(state, dict)
    weights = {k[len(MODEL_PREFIX) :]: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}
    metrics_file = Path(ckpt_path).resolve().parent.parent / METRICS_FILE
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    shape = data_shape(meta)
    tasks = {n: BundleTask(t.target, t.label_of(n)) for n, t in run.task.items()}

    def write_onnx(folder: Path) -> None:
        from atrank.serve.onnx_export import ONNX_FILE, export_onnx

        model = build_model(run.model, shape, {n: t.target for n, t in tasks.items()})
        model.load_state_dict(weights)
        export_onnx(model.eval(), folder / ONNX_FILE)

    return write_bundle(
        Path(out),
        weights,
        run.model,
        shape,
        tasks,
        meta.time,
        run.data.max_len,
        meta.fingerprint,
        prepared,
        metrics,
        extra=write_onnx if onnx else None,
    )
