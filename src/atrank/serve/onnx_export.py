"""The scoring graph as ONNX: export it, and score :class:`Features` with ONNX Runtime.

:class:`ScoringGraph` is the model's serving path (:meth:`Predictor.logits
<atrank.serve.predictor.Predictor.logits>`: encode each request's history once, score every
candidate against its request's encoding) over flat tensors, so that it exports as one
graph. It runs the model's own code (``encode_history`` and ``score``), no second
implementation: what the export needs is that the traced code takes no data-dependent Python
branch that the example inputs would freeze, which :func:`example_inputs` sees to (both
groups in the history, an empty history, both groups among the candidates).

Inputs of the graph, in this order (``F`` = :data:`data_prep.contract.ID_FIELDS`)::

    hist_<field>   (R, T) int64   for each field F
    hist_action    (R, T) int64
    hist_time      (R, T) int64
    hist_group     (R, T) int64
    hist_mask      (R, T) bool
    target_<field> (N,)   int64   for each field F
    owner          (N,)   int64   the request (row of the history) of each candidate

Output: ``logits``, ``(N, n_tasks)`` float32, the tasks in the bundle's order (stored in the
file's metadata as ``atrank.tasks``). ``R``, ``T`` and ``N`` are dynamic axes.

Only the ``atrank`` and ``none`` encoders export; the baselines raise
:class:`NotImplementedError`.

Shape glossary: R requests, T history window, N candidates, F id fields, d d_model.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from atrank.data.batch import Batch
from atrank.model import ATRankModel
from atrank.model.encoder import ATRankEncoder, NoHistoryEncoder
from atrank.serve.bundle import Bundle, load_bundle
from atrank.serve.features import Features
from data_prep import contract as C

ONNX_FILE = "model.onnx"
#: Opset of the exported file (17 has LayerNormalization as one op).
OPSET = 17
OUTPUT = "logits"
TASKS_KEY = "atrank.tasks"
FIELDS_KEY = "atrank.fields"
HIST_EXTRA = ("hist_action", "hist_time", "hist_group", "hist_mask")
#: The encoders whose scoring graph exports (their code has no data-dependent shapes that
#: tracing would freeze).
EXPORTABLE = (ATRankEncoder, NoHistoryEncoder)


def input_names(fields: Sequence[str] = C.ID_FIELDS) -> list[str]:
    """The graph's input names, in the order :meth:`ScoringGraph.forward` takes them."""
    return [
        *(f"hist_{f}" for f in fields),
        *HIST_EXTRA,
        *(f"target_{f}" for f in fields),
        "owner",
    ]


class ScoringGraph(nn.Module):
    """The encode-once scoring path of a model over flat tensors (see the module docstring).

    Args:
        model: the model (its weights are shared, not copied); eval mode is the caller's.
        fields: the id fields, in input order.

    Raises:
        NotImplementedError: for an encoder other than ``atrank`` or ``none``.
    """

    def __init__(self, model: ATRankModel, fields: Sequence[str] = C.ID_FIELDS) -> None:
        super().__init__()
        if not isinstance(model.encoder, EXPORTABLE):
            raise NotImplementedError(
                f"ONNX export: encoder {type(model.encoder).__name__} is not supported; "
                "only the 'atrank' and 'none' encoders export (model.encoder=atrank|none)"
            )
        self.model = model
        self.fields = tuple(fields)
        self.tasks = tuple(model.task_groups)

    def forward(self, *inputs: Tensor) -> Tensor:
        """Scores every candidate against its request's history.

        Args:
            inputs: the tensors named by :func:`input_names`, in that order.

        Returns:
            ``(N, n_tasks)`` logits, the tasks in :attr:`tasks` order.
        """
        n = len(self.fields)
        hist = dict(zip(self.fields, inputs[:n], strict=True))
        action, time, group, mask = inputs[n : n + 4]  # each (R, T)
        target = dict(zip(self.fields, inputs[n + 4 : 2 * n + 4], strict=True))  # (N,) each
        owner = inputs[2 * n + 4]  # (N,)
        R = mask.shape[0]  # noqa: N806 (shape names)
        no_rows = owner.new_zeros(R)  # (R,) the batch's per-row fields the encoders never read
        history = Batch(
            hist=hist,
            hist_action=action,
            hist_time=time,
            hist_group=group,
            hist_mask=mask,
            target={},
            target_group=no_rows,
            labels={},
            label_mask={},
            user=no_rows,
        )
        memory, memory_mask = self.model.encode_history(history)  # (R, T', d), (R, T')
        out = self.model.score(memory, memory_mask, target, owner)
        return torch.stack([out.logits[t] for t in self.tasks], dim=1)  # (N, n_tasks)


def example_inputs(model: ATRankModel, fields: Sequence[str] = C.ID_FIELDS) -> tuple[Tensor, ...]:
    """Small inputs that take every branch of the graph's code, for tracing.

    Three requests of window 4: one with both groups in its history, one with one item, one
    empty; five candidates of both groups (the group of a position or a candidate is its
    index in the embedding's groups).

    Returns:
        The tensors of :func:`input_names`.
    """
    R, T = 3, 4  # noqa: N806 (shape names)
    mask = torch.tensor([[True, True, True, True], [False, False, False, True], [False] * T])
    group = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0], [0] * T]) * mask  # (R, T)
    groups = model.embedding.groups
    owner = torch.tensor([0, 0, 1, 2, 2])
    target_group = torch.tensor([0, 1, 0, 1, 0])  # (N,)
    hist: list[Tensor] = []
    target: list[Tensor] = []
    for f in fields:
        in_groups = [g for g, fs in model.embedding.group_fields.items() if f in fs]
        top = _rows(model.embedding.fields[f]) - 1 if in_groups else 1  # codes 1..top
        ids = torch.arange(R * T).reshape(R, T) % top + 1  # (R, T) valid codes
        of = torch.tensor([groups.index(g) for g in in_groups])
        hist.append(ids * (mask & torch.isin(group, of)))
        target.append((torch.arange(5) % top + 1) * torch.isin(target_group, of))
    n_actions, n_time = _rows(model.embedding.action), _rows(model.embedding.time)
    action = (torch.arange(R * T).reshape(R, T) % (n_actions - 1) + 1) * mask  # (R, T)
    time = (torch.arange(R * T).reshape(R, T) % (n_time - 1) + 1) * mask  # (R, T)
    return (*hist, action, time, group, mask, *target, owner)


def _rows(table: nn.Module) -> int:
    assert isinstance(table, nn.Embedding)
    return table.num_embeddings


def _source(source: ATRankModel | Bundle | Path | str) -> tuple[ATRankModel, Path | None]:
    if isinstance(source, ATRankModel):
        return source, None
    bundle = source if isinstance(source, Bundle) else load_bundle(Path(source))
    return bundle.build_model(), bundle.root


def export_onnx(source: ATRankModel | Bundle | Path | str, path: Path | str | None = None) -> Path:
    """Exports the scoring graph of a model or a bundle to an ONNX file.

    Uses the TorchScript-based exporter (``dynamo=False``): the dynamo-based one needs the
    ``onnxscript`` package, which the project does not depend on, and stops at the
    embedding's data-dependent ``if pos.numel() == 0`` (a group absent from the batch).
    Under tracing the task heads take their gathered layout (each candidate reads its
    request's projected keys and values), not the packed one whose shape depends on the data.

    Args:
        source: a model, a loaded bundle or a bundle directory.
        path: the file to write; None means ``<bundle>/model.onnx`` (a bundle source only).

    Returns:
        The written file.

    Raises:
        ValueError: ``path`` is None for a model source.
        NotImplementedError: the model's encoder does not export.
    """
    import onnx

    model, root = _source(source)
    if path is None:
        if root is None:
            raise ValueError("export_onnx: path is required when exporting a model")
        path = root / ONNX_FILE
    path = Path(path)
    graph = ScoringGraph(model).eval()
    names = input_names(graph.fields)
    axes: dict[str, dict[int, str]] = {n: {0: "R", 1: "T"} for n in names if n.startswith("hist_")}
    axes |= {n: {0: "N"} for n in names if not n.startswith("hist_")}
    axes[OUTPUT] = {0: "N"}
    with warnings.catch_warnings(), torch.no_grad():
        # (the tracer warns about Python bools of tensors: example_inputs takes every branch)
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            example_inputs(model, graph.fields),
            str(path),
            input_names=names,
            output_names=[OUTPUT],
            dynamic_axes=axes,  # type: ignore[arg-type]
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    for key, value in ((TASKS_KEY, list(graph.tasks)), (FIELDS_KEY, list(graph.fields))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(proto, str(path))
    return path


def onnx_inputs(features: Features, fields: Sequence[str] = C.ID_FIELDS) -> dict[str, Any]:
    """The graph's inputs of ``features``, as numpy arrays by input name."""
    h = features.history
    tensors = [
        *(h.hist[f] for f in fields),
        h.hist_action,
        h.hist_time,
        h.hist_group,
        h.hist_mask,
        *(features.target[f] for f in fields),
        features.owner,
    ]
    return {
        n: t.numpy() if t.dtype == torch.bool else t.long().numpy()
        for n, t in zip(input_names(fields), tensors, strict=True)
    }


class OnnxScorer:
    """Runs an exported scoring graph with ONNX Runtime (CPU).

    Args:
        path: the ONNX file (:func:`export_onnx`), or a bundle directory holding one.
        threads: ONNX Runtime's intra-op threads; None lets it choose.
    """

    def __init__(self, path: Path | str, threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if path.is_dir():
            path = path / ONNX_FILE
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.tasks: tuple[str, ...] = tuple(json.loads(meta[TASKS_KEY]))
        self.fields: tuple[str, ...] = tuple(json.loads(meta[FIELDS_KEY]))
        # (an exporter may drop inputs the graph never reads, e.g. the history of `none`)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def logits(self, features: Features) -> dict[str, Tensor]:
        """``task -> (N,)`` logits of every candidate, as :meth:`Predictor.logits`."""
        feeds = onnx_inputs(features, self.fields)
        (out,) = self.session.run([OUTPUT], {n: feeds[n] for n in self.inputs})
        logits = torch.from_numpy(out)  # (N, n_tasks)
        return {task: logits[:, i] for i, task in enumerate(self.tasks)}
