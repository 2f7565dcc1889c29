"""What the attention looks at: the paper's attention maps by behaviour type, as report sections.

The weights are recomputed from the model's own modules (nothing is changed or hooked): the
encoder's self-attention block by block, each task head's target attention over the encoded
memory. They are aggregated over the given (test) batches, padding excluded, each sample's
weights summing to 1 over its real behaviours: the mean attention *mass* on each behaviour
group, action and time bucket; the mean *share* of those behaviours in the histories; and the
*lift* ``mass / share``. A head that attends uniformly has lift 1 everywhere, so a lift above 1
is specialisation, not frequency. The weights themselves come from
:mod:`atrank.report.attention_weights`.

Shape glossary: B batch size, T history length (padded; right-aligned), nh attention heads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl
import torch
from matplotlib.figure import Figure
from torch import Tensor

from atrank.data.batch import Batch
from atrank.model.atrank import ATRankModel
from atrank.model.encoder import ATRankEncoder
from atrank.report.attention_weights import (
    RELATIONS,
    MassAccumulator,
    attention_block,
    encoder_rerun,
    head_weights,
    target_relation,
    task_rows,
)
from atrank.report.section import Section, Table
from data_prep import contract as C
from data_prep.meta import PreparedMeta

_UNITS = {86_400: "d", 3_600: "h", 60: "min", 1: "s"}
_DIGITS = 4  # rounding of the values in tables
_TASKS_TITLE = "What the task heads attend to"
_ENCODER_TITLE = "What the self-attention heads attend to"


def time_bucket_names(unit_seconds: int, n_buckets: int) -> tuple[str, ...]:
    """Readable names of the log2 time-gap buckets (``contract.time_bucket_thresholds``).

    Bucket ``k`` holds gaps of ``2**k - 1 .. 2**(k+1) - 2`` whole units (bucket 0 the same
    unit, the last one everything older): ``0d, 1-2d, 3-6d, ..., 4095d+`` for 13 day buckets.
    """
    unit = _UNITS.get(unit_seconds, f"x{unit_seconds}s")
    names = [f"0{unit}"]
    for k in range(1, n_buckets - 1):
        names.append(f"{2**k - 1}-{2 ** (k + 1) - 2}{unit}")
    names.append(f"{2 ** (n_buckets - 1) - 1}{unit}+")
    return tuple(names[:n_buckets])


@dataclass(frozen=True)
class AttentionNames:
    """How to name what a batch codes as integers.

    Attributes:
        groups: group names by group index (``Batch.hist_group``).
        actions: action names by action index (``<pad>``, ``<oov>``, then the actions).
        time_buckets: bucket names by bucket (``Batch.hist_time - 1``).
        group_fields: ``group -> fields`` of its objects, the id field first.
        values: ``field -> coded index -> raw value`` known so far (a code without one is
            shown as ``#index``).
        vocab_dir: the prepared vocabularies (``vocab/<field>.parquet``), read on demand for
            the values a table shows (:meth:`with_values`); None reads nothing.
    """

    groups: tuple[str, ...]
    actions: tuple[str, ...]
    time_buckets: tuple[str, ...]
    group_fields: dict[str, tuple[str, ...]]
    values: dict[str, dict[int, str]] = field(default_factory=dict)
    vocab_dir: Path | None = None

    @classmethod
    def from_meta(cls, meta: PreparedMeta, data_dir: Path | None = None) -> AttentionNames:
        """The names of a prepared-data directory.

        Args:
            meta: its ``meta.json``.
            data_dir: the directory, whose vocabularies give the raw id values (None shows
                coded indices).
        """
        group_fields = meta.group_fields
        return cls(
            groups=tuple(group_fields),
            actions=meta.actions,
            time_buckets=time_bucket_names(meta.time.unit_seconds, meta.time.n_buckets),
            group_fields=group_fields,
            vocab_dir=None if data_dir is None else data_dir / C.VOCAB_DIR,
        )

    def with_values(self, codes: dict[str, set[int]]) -> AttentionNames:
        """These names, with the raw values of ``field -> codes`` read from the vocabularies
        (only those: a vocabulary may have millions of rows)."""
        values = {f: dict(v) for f, v in self.values.items()}
        for f, wanted in codes.items():
            path = None if self.vocab_dir is None else self.vocab_dir / f"{f}.parquet"
            if path is None or not path.is_file() or not wanted:
                continue
            df = (
                pl.scan_parquet(path)
                .filter(pl.col("index").is_in(sorted(wanted)))
                .select("index", "value")
                .collect()
            )
            values.setdefault(f, {}).update(
                zip(df["index"].to_list(), df["value"].cast(pl.String).to_list(), strict=True)
            )
        return replace(self, values=values)

    def value(self, field_name: str, code: int) -> str:
        """The raw value of a coded field (``#code`` when unknown, ``""`` for absent)."""
        if code == C.PAD_INDEX:
            return ""
        if code == C.OOV_INDEX:
            return "<oov>"
        return self.values.get(field_name, {}).get(code, f"#{code}")


def _codes(batch: Batch, by: str, id_field: str, n_actions: int) -> Tensor:
    if by == "action":
        return batch.hist_action
    if by == "group":
        return batch.hist_group
    if by == "relation":  # relation-major: code = relation * n_actions + action
        return target_relation(batch, id_field) * n_actions + batch.hist_action
    return (batch.hist_time - 1).clamp(min=0)  # hist_time is bucket + 1


_BY = ("action", "group", "time", "relation")


@dataclass
class _Totals:
    """Everything accumulated over the batches."""

    tasks: dict[str, dict[str, MassAccumulator]]  # task -> by -> heads averaged (H = 1)
    task_heads: dict[str, MassAccumulator]  # task -> action mass per head (H = nh)
    layers: list[MassAccumulator]  # per encoder block: action mass of the keys per head
    rerun_error: float = 0.0
    first: Batch | None = None
    first_heads: dict[str, Tensor] | None = None


def _accumulate(
    model: ATRankModel, batches: Iterable[Batch], names: AttentionNames, max_batches: int | None
) -> _Totals:
    n_act = len(names.actions)
    n = {"action": n_act, "group": len(names.groups), "time": len(names.time_buckets)}
    n["relation"] = len(RELATIONS) * n_act
    totals = _Totals(tasks={}, task_heads={}, layers=[])
    device = next(model.parameters()).device
    for i, cpu_batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        batch = cpu_batch.to(device)
        mask = batch.hist_mask
        if isinstance(model.encoder, ATRankEncoder):
            memory, layers = encoder_rerun(model, batch)
            real = model.encode_history(batch)[0]
            totals.rerun_error = max(totals.rerun_error, float((memory - real).abs().max()))
            for j, w in enumerate(layers):  # (B, nh, T, T) -> mean over real queries
                if len(totals.layers) <= j:
                    totals.layers.append(MassAccumulator(n["action"], w.shape[1]))
                per_key = w.sum(2) / mask.sum(1).clamp(min=1)[:, None, None]  # (B, nh, T)
                totals.layers[j].add(per_key, batch.hist_action, mask)
        heads = head_weights(model, batch)
        if totals.first is None:  # kept on the CPU for the timelines table
            totals.first = cpu_batch.to("cpu")
            totals.first_heads = None if heads is None else {t: w.cpu() for t, w in heads.items()}
        for task, w in (heads or {}).items():
            rows = task_rows(model, batch, task)
            id_field = names.group_fields[model.task_groups[task]][0]
            by = totals.tasks.setdefault(task, {b: MassAccumulator(n[b]) for b in _BY})
            for b in _BY:
                codes = _codes(batch, b, id_field, n_act)[rows]
                by[b].add(w[rows].mean(1, keepdim=True), codes, mask[rows])
            acc = totals.task_heads.setdefault(task, MassAccumulator(n["action"], w.shape[1]))
            acc.add(w[rows], batch.hist_action[rows], mask[rows])
    return totals


def _num(x: float) -> float | None:
    return None if x != x else round(x, _DIGITS)  # NaN -> None


def _present(accs: Iterable[MassAccumulator]) -> list[int]:
    """Categories with behaviours in any accumulator (padding never counts, so it is out)."""
    shares = [a.share() for a in accs]
    if not shares:
        return []
    share = torch.stack(shares).sum(0)  # (n,)
    return [k for k in range(len(share)) if share[k] > 0]


def _rows(
    label: list[object], acc: MassAccumulator, cats: list[int], names: Sequence[tuple[str, ...]]
) -> list[list[object]]:
    """Long-format rows ``[*label, (series,) *category, share, mass, lift]``; the series
    column only where the accumulator holds several (heads)."""
    mass, lift, share = acc.mass(), acc.lift(), acc.share()
    series = mass.shape[0]
    return [
        [*label, *([h] if series > 1 else []), *names[k]]
        + [_num(float(share[k])), _num(float(mass[h, k])), _num(float(lift[h, k]))]
        for h in range(series)
        for k in cats
    ]


def _bars(title: str, categories: list[str], panels: dict[str, dict[str, list[float]]]) -> Figure:
    """Grouped bar charts, one panel per entry: ``panel -> series -> value per category``."""
    size = (max(6.0, 0.9 * len(categories) + 3), 3.2 * len(panels))
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (panel, series) in zip(axes, panels.items(), strict=True):
        width = 0.8 / max(len(series), 1)
        for s, (name, values) in enumerate(series.items()):
            xs = [k + (s - (len(series) - 1) / 2) * width for k in range(len(categories))]
            ax.bar(xs, [0.0 if v != v else v for v in values], width, label=name)
        if panel.startswith("lift"):
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(categories)), categories, rotation=30 if len(categories) > 7 else 0)
        ax.set_title(panel)
        ax.legend(fontsize="small", ncol=min(len(series), 4))
    fig.suptitle(title)
    return fig


def _category_names(names: AttentionNames) -> dict[str, list[tuple[str, ...]]]:
    """Each aggregation's category names, by code, as table cells (one or two columns)."""
    return {
        "action": [(a,) for a in names.actions],
        "group": [(g,) for g in names.groups],
        "time": [(t,) for t in names.time_buckets],
        "relation": [(r, a) for r in RELATIONS for a in names.actions],
    }


def _task_section(totals: _Totals, names: AttentionNames) -> Section:
    section = Section("attention/tasks", _TASKS_TITLE)
    labels = _category_names(names)
    for by in _BY:
        accs = {task: t[by] for task, t in totals.tasks.items()}
        cats = _present(accs.values())
        columns = ["relation", "action"] if by == "relation" else [by]
        section.tables[f"by_{by}"] = Table(
            ["task", *columns, "share", "mass", "lift"],
            [r for task, a in accs.items() for r in _rows([task], a, cats, labels[by])],
        )
        if by == "group" or not cats:
            continue
        panels = {
            f"{m} by {by}": {
                task: [float(getattr(a, m)()[0, k]) for k in cats] for task, a in accs.items()
            }
            for m in ("mass", "lift")
        }
        ticks = [": ".join(labels[by][k]) for k in cats]
        section.figures[by] = _bars(f"Task-head attention by {by} (mean over heads)", ticks, panels)
    cats = _present(totals.task_heads.values())
    section.tables["by_head_action"] = Table(
        ["task", "head", "action", "share", "mass", "lift"],
        [
            r
            for task, a in totals.task_heads.items()
            for r in _rows([task], a, cats, labels["action"])
        ],
    )
    counts = ", ".join(f"{task} {t['action'].samples}" for task, t in totals.tasks.items())
    section.notes += [
        f"Target attention of each task head over the encoded history, on the rows whose "
        f"target is of the task's type ({counts} rows). mass: mean attention on the "
        f"behaviours of that kind (each row's weights sum to 1, averaged over the heads); "
        f"share: their mean share of the behaviours; lift = mass / share (1 = attends by "
        f"frequency alone).",
    ]
    return section


def _encoder_section(totals: _Totals, names: AttentionNames) -> Section:
    section = Section("attention/encoder", _ENCODER_TITLE)
    cats = _present(totals.layers)
    labels = _category_names(names)["action"]
    rows = [r for j, a in enumerate(totals.layers) for r in _rows([j], a, cats, labels)]
    section.tables["by_head_action"] = Table(
        ["layer", "head", "action", "share", "mass", "lift"], rows
    )
    panels = {
        f"{m}, layer {j}": {
            f"head {h}": [float(getattr(a, m)()[h, k]) for k in cats]
            for h in range(a.mass_sum.shape[0])
        }
        for j, a in enumerate(totals.layers)
        for m in ("mass", "lift")
    }
    if cats:
        section.figures["heads"] = _bars(
            "Self-attention by action of the key", [names.actions[k] for k in cats], panels
        )
    samples = totals.layers[0].samples if totals.layers else 0
    section.notes.append(
        f"Per block and head: the attention mass of a behaviour's query on the keys of each "
        f"action, averaged over the real behaviours of a history, then over {samples} "
        f"histories; share and lift as for the task heads."
    )
    if totals.rerun_error > 1e-4:
        section.notes.append(
            f"The block-by-block re-run differs from the encoder's output by up to "
            f"{totals.rerun_error:.2e}: these weights may not be the ones the model used."
        )
    return section


def _pick_rows(model: ATRankModel, batch: Batch, tasks: list[str], n_users: int) -> list[int]:
    """Rows of ``n_users`` distinct users, longest histories first, taking the tasks' target
    groups in turn (so every task's weights appear); ties by row order."""
    lengths = batch.hist_mask.sum(1).tolist()
    queues: list[list[int]] = []
    for group in dict.fromkeys(model.task_groups[t] for t in tasks):
        rows = (batch.target_group == model.embedding.groups.index(group)).nonzero()[:, 0]
        queues.append(sorted(rows.tolist(), key=lambda r: (-lengths[r], r)))
    picked: list[int] = []
    users: set[int] = set()
    while len(picked) < n_users and any(queues):
        for q in queues:
            while q and (int(batch.user[q[0]]) in users or lengths[q[0]] == 0):
                q.pop(0)
            if q and len(picked) < n_users:
                picked.append(q.pop(0))
                users.add(int(batch.user[picked[-1]]))
    return picked


def _timeline_section(
    model: ATRankModel, batch: Batch, heads: dict[str, Tensor], names: AttentionNames, n_users: int
) -> Section:
    tasks = list(heads)
    section = Section("attention/timelines", "Attention on a few test users' timelines")
    weights = {t: heads[t].mean(1) for t in tasks}  # (B, T) each
    picked = _pick_rows(model, batch, tasks, n_users)
    codes: dict[str, set[int]] = {}
    for f, x in [*batch.hist.items(), *batch.target.items()]:
        codes.setdefault(f, set()).update(x[picked].reshape(-1).tolist())
    names = names.with_values(codes)
    rows: list[list[object]] = []
    for b in picked:
        t_group = names.groups[int(batch.target_group[b])]
        t_id = names.group_fields[t_group][0]
        target = f"{t_group} {names.value(t_id, int(batch.target[t_id][b]))}"
        positions = batch.hist_mask[b].nonzero()[:, 0].tolist()
        for i, t in enumerate(positions):
            group = names.groups[int(batch.hist_group[b, t])]
            fields = names.group_fields[group]
            rows.append(
                [
                    int(batch.user[b]),
                    target,
                    i,
                    group,
                    names.actions[int(batch.hist_action[b, t])],
                    names.time_buckets[int(batch.hist_time[b, t]) - 1],
                    names.value(fields[0], int(batch.hist[fields[0]][b, t])),
                    ", ".join(
                        f"{f}={names.value(f, int(batch.hist[f][b, t]))}" for f in fields[1:]
                    ),
                    *(
                        _num(float(weights[task][b, t]))
                        if model.task_groups[task] == t_group
                        else None
                        for task in tasks
                    ),
                ]
            )
    section.tables["timelines"] = Table(
        ["user", "target", "position", "group", "action", "time", "object", "fields", *tasks], rows
    )
    section.notes.append(
        "Each user's behaviours in time order (position 0 = oldest in the window), with the "
        "weight each task head gives it (mean over the heads) for the row's target; empty "
        "where the target is not of the task's type."
    )
    return section


def attention_sections(
    model: ATRankModel,
    batches: Iterable[Batch],
    names: AttentionNames,
    n_users: int = 5,
    max_batches: int | None = None,
) -> list[Section]:
    """The attention report: task heads, self-attention heads and a few users' timelines.

    Args:
        model: the trained model (put in eval mode for the analysis, then restored).
        batches: the batches to aggregate over (the test split), on any device.
        names: how to name groups, actions, time buckets and ids
            (:meth:`AttentionNames.from_meta`).
        n_users: users shown in the timelines table.
        max_batches: read at most this many batches (None: all).

    Returns:
        Sections ``attention/tasks`` (tables ``by_action``, ``by_group``, ``by_time``,
        ``by_relation``, ``by_head_action``; figures ``action``, ``time``, ``relation``),
        ``attention/encoder`` (table ``by_head_action``, figure ``heads``) and
        ``attention/timelines`` (table ``timelines``). Where an attention does not exist
        (pooled or history-blind encoders, DIN's heads, no self-attention) its section holds
        only a note, and there is no timelines section.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            totals = _accumulate(model, batches, names, max_batches)
    finally:
        model.train(was_training)
    kind = type(model.encoder).__name__
    if totals.layers:
        encoder = _encoder_section(totals, names)
    else:
        encoder = Section("attention/encoder", _ENCODER_TITLE)
        encoder.notes.append(f"The {kind} encoder has no self-attention: nothing to show.")
    missing = [t for t in model.task_groups if attention_block(model, t) is None]
    skipped = (
        f"The heads of {', '.join(missing)} read the history without an attention block "
        f"(e.g. DIN's activation unit, whose weights are not normalised): skipped."
    )
    why = None
    if len(missing) == len(model.task_groups):
        why = skipped
    elif totals.first is None:
        why = "No batch given: nothing to show."
    elif totals.first_heads is None:
        why = (
            f"The {kind} encoder's memory slots are not behaviours (pooled or history-blind): "
            "the heads' attention says nothing about the behaviours."
        )
    if why is not None:
        return [Section("attention/tasks", _TASKS_TITLE, notes=[why]), encoder]
    assert totals.first is not None and totals.first_heads is not None
    tasks = _task_section(totals, names)
    if missing:
        tasks.notes.append(skipped)
    timelines = _timeline_section(model, totals.first, totals.first_heads, names, n_users)
    return [tasks, encoder, timelines]
