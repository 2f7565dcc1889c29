"""Per task and stage: ROC and precision-recall curves, calibration, score distributions and
AUC by segment, as one :class:`ChartSection`.

The numbers come from torchmetrics and the project's exact AUC
(:func:`atrank.system.metrics.grouped_auc`, the one ``<stage>/<task>/auc`` logs, so the
segment table's "all" row is that metric); matplotlib draws them (``Figure`` objects, no
pyplot: no GUI backend, no global figure state; fixed margins rather than a layout engine,
which would double the drawing time).

Segments: the history window's length (none: 0 behaviours, short: 1..``short``, medium:
up to ``medium``, long: more; ``report.history_bounds``), and whether the target object is in
the history window. On simulated data the oracle's AUC (the true probabilities') sits beside
the model's on every segment.

Shape glossary: N labelled samples of the task and stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_average_precision,
    binary_calibration_error,
    binary_precision_recall_curve,
    binary_roc,
)

from atrank.report.collect import TaskOutputs
from atrank.report.section import Section, Table
from atrank.system.metrics import grouped_auc


@dataclass
class Curve:
    """Points of a curve that W&B draws with its own chart preset (beside the image).

    Attributes:
        kind: ``auc`` (W&B's ROC/PR area-under-curve preset) or ``line``.
        x: the x column of ``points``.
        y: the y column of ``points``.
        points: columns ``["class", x, y]``, one line per class (``model``, ``oracle``).
        title: the chart's title.
    """

    kind: str
    x: str
    y: str
    points: Table
    title: str


@dataclass
class ChartSection(Section):
    """A :class:`Section` whose curves W&B also draws natively (``curves``: name -> curve)."""

    curves: dict[str, Curve] = field(default_factory=dict)


def probabilities(logits: Tensor) -> Tensor:
    """``sigmoid(logits)`` in float64 (float32 saturates large logits into ties)."""
    return torch.sigmoid(logits.double())


def exact_auc(scores: Tensor, labels: Tensor) -> float | None:
    """ROC AUC (Mann-Whitney, ties half, float64); None with one class only."""
    if scores.numel() == 0:
        return None
    v = float(grouped_auc(scores.double(), labels, torch.zeros_like(labels)))
    return None if v != v else v  # (NaN: one class)


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int) -> float | None:
    """ECE with ``n_bins`` equal-width bins (torchmetrics, L1); None without samples."""
    if probs.numel() == 0:
        return None
    return float(binary_calibration_error(probs.float(), labels, n_bins=n_bins, norm="l1"))


def calibration_bins(probs: Tensor, labels: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """The reliability diagram's bins: equal-width over [0, 1].

    Returns:
        ``(mean_predicted, observed_rate, count)``, each ``(n_bins,)``; NaN in empty bins.
    """
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    idx = torch.bucketize(probs.double(), edges[1:-1], right=True)  # (N,) in [0, n_bins)
    count = torch.bincount(idx, minlength=n_bins).double()
    pred = torch.bincount(idx, weights=probs.double(), minlength=n_bins)
    pos = torch.bincount(idx, weights=labels.double(), minlength=n_bins)
    empty = count == 0
    nan = torch.full_like(count, float("nan"))
    return (
        torch.where(empty, nan, pred / count.clamp(min=1)),
        torch.where(empty, nan, pos / count.clamp(min=1)),
        count,
    )


def segments(outs: TaskOutputs, history_bounds: list[int]) -> list[tuple[str, Tensor]]:
    """The report's segments: ``(name, (N,) bool mask)``, the whole split first."""
    short, medium = history_bounds
    h = outs.hist_len
    return [
        ("all", torch.ones_like(outs.labels, dtype=torch.bool)),
        ("history none (0)", h == 0),
        (f"history short (1-{short})", (h >= 1) & (h <= short)),
        (f"history medium ({short + 1}-{medium})", (h > short) & (h <= medium)),
        (f"history long (>{medium})", h > medium),
        ("target in history", outs.in_hist),
        ("target not in history", ~outs.in_hist),
    ]


SEGMENT_COLUMNS = ["segment", "rows", "positive rate", "model AUC", "oracle AUC"]


def segment_table(outs: TaskOutputs, history_bounds: list[int]) -> tuple[Table, list[str]]:
    """AUC by segment: model and oracle (None where unknown or one class only).

    Returns:
        The table (:data:`SEGMENT_COLUMNS`) and a note per segment whose AUC is undefined.
    """
    rows, notes = [], []
    for name, mask in segments(outs, history_bounds):
        sub = outs.subset(mask)
        n = len(sub)
        rate = float(sub.labels.double().mean()) if n else None
        auc = exact_auc(sub.logits, sub.labels)
        oracle = None
        if sub.prob is not None:
            known = ~torch.isnan(sub.prob)
            oracle = exact_auc(sub.prob[known], sub.labels[known])
        if n and auc is None:
            notes.append(f"segment '{name}': one class only ({n} rows), no AUC")
        rows.append([name, n, rate, auc, oracle])
    return Table(SEGMENT_COLUMNS, rows), notes


def _thin(x: Tensor, y: Tensor, max_points: int) -> tuple[Tensor, Tensor]:
    """At most ``max_points`` points of a curve, evenly spaced along it, both ends kept."""
    if x.numel() <= max_points:
        return x, y
    idx = torch.linspace(0, x.numel() - 1, max_points).round().long().unique()
    return x[idx], y[idx]


def _curve_points(
    curves: dict[str, tuple[Tensor, Tensor]], x: str, y: str, max_points: int
) -> Table:
    rows: list[list[Any]] = []
    for cls, (xs, ys) in curves.items():
        xs, ys = _thin(xs, ys, max_points)
        rows += [[cls, float(a), float(b)] for a, b in zip(xs.tolist(), ys.tolist(), strict=True)]
    return Table(["class", x, y], rows)


def _oracle(outs: TaskOutputs) -> tuple[Tensor, Tensor] | None:
    """The oracle's probabilities and labels where known and of both classes, else None."""
    if outs.prob is None:
        return None
    known = ~torch.isnan(outs.prob)
    labels = outs.labels[known]
    if labels.numel() == 0 or int(labels.sum()) in (0, labels.numel()):
        return None
    return outs.prob[known].double(), labels


def _summary(outs: TaskOutputs, probs: Tensor, n_bins: int) -> Table:
    oracle = _oracle(outs)

    def both(fn: Callable[[Tensor, Tensor], float | None]) -> list[float | None]:
        return [fn(probs, outs.labels), None if oracle is None else fn(*oracle)]

    def ap(p: Tensor, y: Tensor) -> float | None:
        return None if int(y.sum()) in (0, y.numel()) else float(binary_average_precision(p, y))

    rows: list[list[Any]] = [
        ["rows", len(outs), None if oracle is None else int(oracle[1].numel())],
        ["observed positive rate", float(outs.labels.double().mean()), None],
        ["mean predicted probability", *both(lambda p, y: float(p.mean()))],
        [f"ECE ({n_bins} bins)", *both(lambda p, y: expected_calibration_error(p, y, n_bins))],
        ["AUC", *both(exact_auc)],
        ["average precision", *both(ap)],
    ]
    return Table(["quantity", "model", "oracle"], rows)


def _pr_points(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    precision, recall, _ = binary_precision_recall_curve(probs, labels)
    return recall, precision


def _roc_pr(
    probs: Tensor, outs: TaskOutputs, title: str, max_points: int
) -> tuple[Figure, dict[str, Curve]]:
    labels = outs.labels
    roc = {"model": binary_roc(probs, labels)[:2]}
    pr = {"model": _pr_points(probs, labels)}
    if (oracle := _oracle(outs)) is not None:
        roc["oracle"] = binary_roc(*oracle)[:2]
        pr["oracle"] = _pr_points(*oracle)
    fig = Figure(figsize=(9, 4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.85, wspace=0.22)
    ax_roc, ax_pr = fig.subplots(1, 2)
    for cls, (fpr, tpr) in roc.items():
        fpr, tpr = _thin(fpr, tpr, max_points)
        ax_roc.plot(fpr.numpy(), tpr.numpy(), label=cls, ls="-" if cls == "model" else "--")
    ax_roc.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="chance")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    for cls, (rec, prec) in pr.items():
        rec, prec = _thin(rec, prec, max_points)
        ax_pr.plot(rec.numpy(), prec.numpy(), label=cls, ls="-" if cls == "model" else "--")
    rate = float(labels.double().mean())
    ax_pr.axhline(rate, color="grey", lw=0.8, ls=":", label="positive rate")
    ax_pr.set(xlabel="recall", ylabel="precision", title="precision-recall", ylim=(0, 1.02))
    for ax in (ax_roc, ax_pr):
        ax.legend(loc="lower right" if ax is ax_roc else "upper right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    curves = {
        "roc": Curve("auc", "fpr", "tpr", _curve_points(roc, "fpr", "tpr", max_points), "ROC"),
        "pr": Curve(
            "auc",
            "recall",
            "precision",
            _curve_points(pr, "recall", "precision", max_points),
            "precision-recall",
        ),
    }
    return fig, curves


def _calibration(
    probs: Tensor, labels: Tensor, title: str, n_bins: int
) -> tuple[Figure, Curve, float | None]:
    pred, observed, count = calibration_bins(probs, labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    fig = Figure(figsize=(5, 5.5))
    fig.subplots_adjust(left=0.15, right=0.96, bottom=0.09, top=0.87, hspace=0.08)
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="perfectly calibrated")
    ax.plot(pred.numpy(), observed.numpy(), marker="o", label="model")
    ax.set(ylabel="observed positive rate", title=f"reliability (ECE {ece:.4f})", ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    centres = (torch.arange(n_bins, dtype=torch.float64) + 0.5) / n_bins
    ax_n.bar(centres.numpy(), count.numpy(), width=1.0 / n_bins, color="tab:blue", alpha=0.6)
    ax_n.set(xlabel="predicted probability", ylabel="samples", yscale="log", xlim=(0, 1))
    fig.suptitle(title)
    keep = count > 0
    diag = torch.tensor([0.0, 1.0], dtype=torch.float64)
    points = _curve_points(
        {"model": (pred[keep], observed[keep]), "perfect": (diag, diag)},
        "mean predicted",
        "observed rate",
        n_bins + 2,
    )
    return fig, Curve("line", "mean predicted", "observed rate", points, "reliability"), ece


def _scores(probs: Tensor, labels: Tensor, title: str) -> Figure:
    fig = Figure(figsize=(5, 3.5))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.9)
    ax = fig.add_subplot()
    pos, neg = probs[labels == 1].numpy(), probs[labels == 0].numpy()
    ax.hist(
        [neg, pos],
        bins=40,
        range=(0, 1),
        density=True,
        histtype="stepfilled",
        alpha=0.5,
        label=[f"negatives ({neg.size})", f"positives ({pos.size})"],
    )
    ax.set(xlabel="predicted probability", ylabel="density", title=title)
    ax.legend(fontsize=8)
    return fig


def _segments(table: Table, title: str) -> Figure | None:
    rows = [r for r in table.rows if r[3] is not None or r[4] is not None]
    if not rows:
        return None
    height = 0.45 * len(rows) + 1.4  # inches: the bars, then fixed margins for the text
    fig = Figure(figsize=(6.5, height))
    fig.subplots_adjust(left=0.36, right=0.96, bottom=0.85 / height, top=1 - 0.4 / height)
    ax = fig.add_subplot()
    y = torch.arange(len(rows), dtype=torch.float64).numpy()
    model = [r[3] if r[3] is not None else float("nan") for r in rows]
    bars = [ax.barh(y - 0.2, model, height=0.4, label="model")]
    if any(r[4] is not None for r in rows):
        oracle = [r[4] if r[4] is not None else float("nan") for r in rows]
        bars.append(ax.barh(y + 0.2, oracle, height=0.4, label="oracle", alpha=0.7))
    for b in bars:
        ax.bar_label(b, fmt="%.3f", fontsize=7, padding=2)
    ax.set_yticks(y, [f"{r[0]} (n={r[1]})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.5, color="grey", lw=0.8, ls=":")
    low = min(v for r in rows for v in r[3:5] if v is not None)
    ax.set(xlabel="AUC", xlim=(max(0.0, min(0.4, low - 0.05)), 1.05), title=title)
    fig.legend(fontsize=8, loc="lower center", ncols=2)
    return fig


def task_section(
    stage: str,
    task: str,
    outs: TaskOutputs,
    label: str | None = None,
    max_points: int = 1000,
    n_bins: int = 15,
    history_bounds: list[int] | None = None,
) -> ChartSection:
    """The report of one task at one stage.

    Args:
        stage: ``val`` or ``test`` (the section's key is ``<stage>/<task>``).
        task: the task's name.
        outs: the task's labelled samples of the stage.
        label: how the stage is named in titles (e.g. ``validation, best epoch 3``).
        max_points: most points kept per drawn curve.
        n_bins: reliability bins.
        history_bounds: ``[short, medium]`` history-length bounds (see :func:`segments`).

    Returns:
        Figures ``roc_pr``, ``calibration``, ``scores``, ``segment_auc``; tables ``summary``
        and ``segments``; curves ``roc``, ``pr``, ``calibration``. With no sample, or one
        class only, the figures are left out and a note says why.
    """
    bounds = history_bounds or [5, 15]
    name = f"{label or stage} · {task}"
    sec = ChartSection(key=f"{stage}/{task}", title=name)
    n = len(outs)
    if n == 0:
        sec.notes.append(f"{task}: no labelled sample in this split; nothing to show")
        return sec
    probs = probabilities(outs.logits)
    sec.tables["summary"] = _summary(outs, probs, n_bins)
    sec.tables["segments"], notes = segment_table(outs, bounds)
    n_pos = int(outs.labels.sum())
    if n_pos in (0, n):
        which = "positives" if n_pos else "negatives"
        sec.notes.append(
            f"{task}: only {which} in this split ({n} rows): curves, calibration and score "
            "figures skipped, AUCs left empty"
        )
        return sec
    sec.notes += notes
    sec.figures["roc_pr"], roc_pr = _roc_pr(probs, outs, name, max_points)
    sec.curves.update(roc_pr)
    sec.figures["calibration"], sec.curves["calibration"], _ = _calibration(
        probs, outs.labels, name, n_bins
    )
    sec.figures["scores"] = _scores(probs, outs.labels, f"{name}: score distributions")
    seg = _segments(sec.tables["segments"], f"{name}: AUC by segment")
    if seg is not None:
        sec.figures["segment_auc"] = seg
    return sec
