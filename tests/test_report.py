"""The run report: its numbers on synthetic scores, its writers, and short real runs that write
it into the run folder (csv, fdr) and into an offline W&B run (charts, tables, the model)."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_SIM
from omegaconf import DictConfig
from torchmetrics.functional.classification import binary_auroc

from atrank.config import ConfigError, train_config
from atrank.data.batch import Batch
from atrank.report.collect import StageCollector, TaskOutputs, target_in_history
from atrank.report.figures import (
    ChartSection,
    calibration_bins,
    expected_calibration_error,
    segment_table,
    task_section,
)
from atrank.report.record import data_section, flatten, git_commit
from atrank.report.section import Section, Table
from atrank.report.write import png_name, wandb_payload, write_html, write_pngs
from atrank.runtime import read_checkpoint
from atrank.train import train
from data_prep.meta import read_meta

Compose = Callable[..., DictConfig]
TASKS = ("click", "purchase", "coupon")


def _outputs(n: int = 4000, seed: int = 0, scale: float = 1.0, shift: float = 0.0) -> TaskOutputs:
    """Samples whose labels are drawn from the oracle's probabilities; the model's logits are
    the oracle's logits times ``scale`` plus ``shift`` (1, 0: perfectly calibrated)."""
    g = torch.Generator().manual_seed(seed)
    prob = torch.rand(n, generator=g) * 0.9 + 0.05
    labels = torch.bernoulli(prob, generator=g).long()
    logits = torch.logit(prob) * scale + shift + 0.3 * torch.randn(n, generator=g) * (scale != 1)
    hist_len = torch.randint(0, 31, (n,), generator=g)
    in_hist = torch.rand(n, generator=g) < 0.3
    return TaskOutputs(logits.float(), labels, hist_len, in_hist, prob)


def test_calibrated_scores_have_a_low_ece_and_miscalibrated_ones_a_high_one() -> None:
    good, bad = _outputs(20_000), _outputs(20_000, scale=3.0, shift=1.0)
    ece_good = expected_calibration_error(torch.sigmoid(good.logits), good.labels, 15)
    ece_bad = expected_calibration_error(torch.sigmoid(bad.logits), bad.labels, 15)
    assert ece_good is not None and ece_bad is not None
    assert ece_good < 0.02 < 0.1 < ece_bad
    # the reliability diagram's bins give the same ECE (sample-weighted gaps)
    pred, observed, count = calibration_bins(torch.sigmoid(good.logits.double()), good.labels, 15)
    keep = count > 0
    ece_bins = float(((pred - observed).abs()[keep] * count[keep]).sum() / count.sum())
    assert ece_bins == pytest.approx(ece_good, abs=1e-4)
    # the summary table reports the ECE of the model and of the oracle (calibrated: low)
    rows = {r[0]: r for r in task_section("test", "click", bad).tables["summary"].rows}
    assert rows["ECE (15 bins)"][1] == pytest.approx(ece_bad, abs=1e-6)
    assert rows["ECE (15 bins)"][2] < 0.02


def test_segment_aucs_are_torchmetrics_auc_on_each_subset() -> None:
    outs = _outputs(3000, scale=0.7)
    table, notes = segment_table(outs, [5, 15])
    assert notes == []
    assert table.columns == ["segment", "rows", "positive rate", "model AUC", "oracle AUC"]
    masks = {
        "all": torch.ones(3000, dtype=torch.bool),
        "history none (0)": outs.hist_len == 0,
        "history short (1-5)": (outs.hist_len >= 1) & (outs.hist_len <= 5),
        "history medium (6-15)": (outs.hist_len >= 6) & (outs.hist_len <= 15),
        "history long (>15)": outs.hist_len > 15,
        "target in history": outs.in_hist,
        "target not in history": ~outs.in_hist,
    }
    assert [r[0] for r in table.rows] == list(masks)
    assert sum(r[1] for r in table.rows[1:5]) == 3000
    assert outs.prob is not None
    for name, n, rate, auc, oracle in table.rows:
        m = masks[name]
        assert n == int(m.sum()) and rate == pytest.approx(float(outs.labels[m].double().mean()))
        y = outs.labels[m]
        assert auc == pytest.approx(float(binary_auroc(torch.sigmoid(outs.logits[m]), y)), abs=1e-5)
        assert oracle == pytest.approx(float(binary_auroc(outs.prob[m], y)), abs=1e-5)


def test_one_class_segments_and_splits_give_notes_not_errors() -> None:
    outs = _outputs(2000)
    outs.labels[outs.hist_len == 0] = 0  # a segment of negatives only
    sec = task_section("val", "click", outs, label="validation")
    none_row = next(r for r in sec.tables["segments"].rows if r[0] == "history none (0)")
    assert none_row[3] is None and none_row[4] is None
    assert any("history none (0)" in n and "one class" in n for n in sec.notes)
    assert set(sec.figures) == {"roc_pr", "calibration", "scores", "segment_auc"}

    outs.labels.zero_()  # the whole split: negatives only
    sec = task_section("test", "click", outs)
    assert sec.figures == {} and isinstance(sec, ChartSection) and sec.curves == {}
    assert any("only negatives" in n for n in sec.notes)
    assert all(r[3] is None for r in sec.tables["segments"].rows)
    empty = task_section("test", "click", outs.subset(torch.zeros(2000, dtype=torch.bool)))
    assert empty.tables == {} and empty.notes


def _batch() -> Batch:
    """Two item targets and one coupon target, histories mixing both groups."""
    item, coupon = "item_id", "coupon_id"
    hist = {
        item: torch.tensor([[0, 5, 7], [0, 9, 1], [5, 0, 0]]),
        coupon: torch.tensor([[0, 0, 0], [0, 0, 0], [0, 4, 4]]),
    }
    group = torch.tensor([[0, 0, 0], [0, 0, 0], [0, 1, 1]])
    mask = torch.tensor([[False, True, True], [False, True, True], [True, True, True]])
    ones = torch.ones(3)
    return Batch(
        hist=hist,
        hist_action=torch.ones(3, 3, dtype=torch.long),
        hist_time=torch.ones(3, 3, dtype=torch.long),
        hist_group=group,
        hist_mask=mask,
        target={item: torch.tensor([7, 1, 0]), coupon: torch.tensor([0, 0, 4])},
        target_group=torch.tensor([0, 0, 1]),
        labels={"click": ones, "coupon": ones},
        label_mask={
            "click": torch.tensor([True, True, False]),
            "coupon": torch.tensor([False, False, True]),
        },
        user=torch.arange(3),
    )


def test_target_in_history_matches_same_group_ids_never_padding_or_oov() -> None:
    batch = _batch()
    # item 7 is in row 0's history; row 1's target is OOV (1), which never matches; row 2's
    # coupon 4 is in its history
    assert target_in_history(batch, {0: "item_id", 1: "coupon_id"}).tolist() == [True, False, True]
    collector = StageCollector(["click", "coupon"], {0: "item_id", 1: "coupon_id"})
    logits = {"click": torch.tensor([0.1, 0.2, 0.3]), "coupon": torch.tensor([1.0, 2.0, 3.0])}
    collector.add(logits, batch)
    collector.add(logits, batch)
    outs = collector.outputs()
    assert outs["click"].logits.tolist() == pytest.approx([0.1, 0.2, 0.1, 0.2])
    assert outs["click"].hist_len.tolist() == [2, 2, 2, 2]
    assert outs["coupon"].in_hist.tolist() == [True, True] and outs["coupon"].prob is None


def test_html_is_self_contained_and_escaped_and_pngs_are_named_by_key(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    sec = Section(
        key="test/click",
        title="Test <click>",
        figures={"roc_pr": fig},
        tables={"t": Table(["a", "b"], [["<script>", 0.123456], [None, 3]])},
        notes=["one & only"],
    )
    (written,) = write_pngs([sec], tmp_path / "report")
    png = tmp_path / "report" / png_name("test/click", "roc_pr")
    assert png.name == "test_click_roc_pr.png" and written.figures["roc_pr"] == png
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = write_html([written], tmp_path / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "Test &lt;click&gt;" in page
    assert "one &amp; only" in page and "0.1235" in page
    assert page.count("data:image/png;base64,") == 1 and 'src="report/' not in page


def test_the_record_reads_the_data_report_and_never_needs_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = {
        "events": {
            "rows_read": 10,
            "rows_kept": 8,
            "rows_dropped": 2,
            "dropped_by_reason": {"null_ts": 2},
        },
        "splits": {"val": {"rows": 5, "tasks": {"click": {"labelled": 4, "positives": 1}}}},
        "oov_rate": {"samples": {"val": {"item_id": 0.25}}},
        "warnings": ["something odd"],
        "target_oov": {"click": {"val": {"positives": 0.0}}},
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    sec = data_section(tmp_path)
    assert sec.tables["rows kept and dropped"].rows == [["events", 10, 8, 2]]
    assert sec.tables["rows dropped by reason"].rows == [["events", "null_ts", 2]]
    assert sec.tables["labels per split"].rows == [["val", "click", 5, 4, 1, 0.25]]
    assert sec.tables["OOV rates"].rows == [["samples", "val", "item_id", 0.25]]
    assert ["target_oov.click.val.positives", 0.0] in sec.tables["other"].rows
    assert "something odd" in sec.notes
    assert data_section(tmp_path / "nowhere").notes  # missing: a note
    assert flatten({"a": {"b": [1, 2]}, "c": None}) == [("a.b", "[1, 2]"), ("c", None)]
    monkeypatch.setenv("PATH", "")  # no git at all
    assert git_commit().startswith("unknown")


def test_report_settings_are_checked_when_the_config_is_composed(compose_cfg: Compose) -> None:
    assert train_config(compose_cfg()).report.stages == ["val", "test"]
    for bad, key in (
        ("report.stages=[val,train]", "report.stages"),
        ("report.history_bounds=[5,5]", "report.history_bounds"),
        ("report.max_points=1", "report.max_points"),
    ):
        with pytest.raises(ConfigError, match=re.escape(key)):
            train_config(compose_cfg(bad))


def _html_titles(page: str) -> list[str]:
    return re.findall(r"<h2 id=\"[^\"]+\">([^<]+)</h2>", page)


def test_a_csv_run_writes_pngs_and_one_self_contained_report(compose_cfg: Compose) -> None:
    cfg = compose_cfg("logger=csv", "debug=limit", "data.batch_size=64")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    pngs = {p.name for p in (out / "report").glob("*.png")}
    for stage in ("val", "test"):
        for task in TASKS:
            for fig in ("roc_pr", "calibration", "scores"):
                assert f"{stage}_{task}_{fig}.png" in pngs
    page = (out / "report.html").read_text()
    titles = _html_titles(page)
    for task in TASKS:
        assert f"test · {task}" in titles and f"validation (best epoch 0) · {task}" in titles
    for title in ("Run: commit, packages, throughput, memory", "Prepared data (report.json)"):
        assert title in titles
    assert "Configuration" in titles and "AUC" in page and "ECE (15 bins)" in page
    assert page.count("data:image/png;base64,") >= len(pngs)
    assert (
        "training samples/s" in page and "torchmetrics" in page and "rows dropped by reason" in page
    )
    # the ECE is a logged metric too
    (csv,) = (out / "csv").rglob("metrics.csv")
    header = csv.read_text().splitlines()[0]
    assert "val/click/ece" in header and "test/coupon/ece" in header


def test_a_fast_dev_run_still_writes_its_report(compose_cfg: Compose) -> None:
    cfg = compose_cfg("debug=fdr")
    train(cfg)
    page = (Path(cfg.paths.output_dir) / "report.html").read_text()
    assert "test · click" in _html_titles(page) and "data:image/png;base64," in page


def test_report_disabled_writes_none(compose_cfg: Compose) -> None:
    cfg = compose_cfg("debug=fdr", "report.enabled=false")
    train(cfg)
    assert not (Path(cfg.paths.output_dir) / "report.html").exists()


def _wandb_records(path: Path) -> list[bytes]:
    """The records of a ``.wandb`` file: W&B's LevelDB-style log (a 7-byte header, then 32 KiB
    blocks of chunks, each with a 7-byte header: crc32, length, type full/first/middle/last;
    a block's tail too short for a header, or zeroed, is padding)."""
    data, block, pos = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    records, part = [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            records.append(part + chunk)
            part = b""
        else:
            part = (b"" if kind == 2 else part) + chunk
    return records


def _finished_run_records(path: Path, timeout: float = 120.0) -> list[Any]:
    """The records of an offline run's ``.wandb`` file once W&B has written its exit record
    (its service finishes writing after ``wandb.finish()`` returns)."""
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout
    while True:
        records = []
        for raw in _wandb_records(path):
            rec = pb.Record()
            rec.ParseFromString(raw)
            records.append(rec)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path}: no exit record after {timeout} s"
        time.sleep(0.5)


def test_a_wandb_offline_run_holds_the_charts_tables_and_the_model(
    compose_cfg: Compose, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_ARTIFACT_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    wandb.finish()  # (a run left by another test would be reused)
    cfg = compose_cfg(
        "logger=wandb", "logger.wandb.log_model=true", "debug=limit", "data.batch_size=64"
    )
    try:
        train(cfg)
    finally:
        wandb.finish()
    (run_dir,) = (Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*")
    history: set[str] = set()
    artifacts: list[tuple[str, list[str], list[str]]] = []
    charts: list[str] = []
    for rec in _finished_run_records(next(run_dir.glob("*.wandb"))):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history |= {i.key or "/".join(i.nested_key) for i in rec.history.item}
        elif kind == "config":  # a chart: its table logged, its panel in _wandb.visualize
            charts += [
                f"{u.nested_key[-1]} {u.value_json}"
                for u in rec.config.update
                if list(u.nested_key[:2]) == ["_wandb", "visualize"]
            ]
        elif kind == "artifact":
            paths = [m.path for m in rec.artifact.manifest.contents]
            artifacts.append((rec.artifact.type, paths, list(rec.artifact.aliases)))
    for task in TASKS:
        for stage in ("val", "test"):
            for name in ("roc_pr", "calibration", "summary", "segments"):
                assert any(k.startswith(f"{stage}/{task}/{name}/") for k in history), name
    assert any(k.startswith("run/config/config/") for k in history)
    assert any(k.startswith("run/data/labels per split/") for k in history)
    # W&B's own chart presets: ROC/PR (area under curve) and the reliability line
    for task in TASKS:
        for chart, preset in (("roc", "area-under-curve"), ("pr", "area-under-curve")):
            assert any(c.startswith(f"test/{task}/{chart}_chart ") and preset in c for c in charts)
        assert any(c.startswith(f"val/{task}/calibration_chart ") and "line" in c for c in charts)
    # images and tables are files of the offline run
    media = run_dir / "files" / "media"
    assert list((media / "images" / "test" / "click").glob("roc_pr_*.png"))
    (segments,) = (media / "table" / "test" / "click").glob("segments_*.table.json")
    assert json.loads(segments.read_text())["columns"][:2] == ["segment", "rows"]
    assert (run_dir / "files" / "report.html").exists()
    # the best checkpoint, as a model artifact of the offline run
    models = [a for a in artifacts if a[0] == "model"]
    assert any(paths == ["model.ckpt"] and "best" in aliases for _, paths, aliases in models)


def test_wandb_payload_names_every_figure_table_and_chart() -> None:
    sec = task_section("test", "click", _outputs(500))
    keys = set(wandb_payload([sec]))
    expected = {f"test/click/{n}" for n in (*sec.figures, *sec.tables)}
    expected |= {f"test/click/{n}_chart" for n in ("roc", "pr", "calibration")}
    assert expected <= keys


@pytest.mark.skipif(not hasattr(os, "fork"), reason="DDP on CPU needs process spawning via fork")
def test_two_processes_report_every_test_sample_once(tmp_path: Path) -> None:
    """Under DDP each process collects its own batches (one may have none) and the report
    gathers them: its row count is the split's labelled rows, as with one process."""
    env = {**os.environ, "ATRANK_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [
        str(Path(sys.executable).parent / "atrank-train"),
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "debug=limit",
        "trainer.limit_test_batches=1.0",
        "data.eval_batch_size=150",
        "logger=none",
        "callbacks.progress_bar=null",
        *TINY_SIM,
        "hydra.run.dir=run",
    ]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (ckpt,) = (tmp_path / "run" / "checkpoints").glob("epoch*.ckpt")
    hp = read_checkpoint(ckpt)["hyper_parameters"]
    assert isinstance(hp, dict)
    splits = read_meta(Path(str(hp["data_dir"]))).counts.splits
    page = (tmp_path / "run" / "report.html").read_text()
    for task in TASKS:
        section = page.split(f'<h2 id="test/{task}">', 1)[1]
        rows = re.search(r"<td>rows</td><td>(\d+)</td>", section)
        assert rows is not None
        assert int(rows.group(1)) == splits["test"]["tasks"][task]["labelled"]
