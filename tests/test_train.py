"""Integration: generated data -> preparation -> training through the real Hydra config."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from atrank.config import ConfigError, data_config
from atrank.evaluate import evaluate
from atrank.train import train
from data_prep import contract as C
from data_prep.pipeline import PrepError

Compose = Callable[..., DictConfig]
METRICS = ("auc", "gauc", "pair_auc", "logloss")


def _tasks_of(metrics: dict[str, float]) -> set[str]:
    return {k.split("/")[1] for k in metrics if k.startswith("test/")}


def _metrics_file(cfg: DictConfig) -> dict[str, float]:
    return json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


def test_fast_dev_run_trains_every_task_and_writes_metrics(compose_cfg: Compose) -> None:
    cfg = compose_cfg("debug=fdr")
    metrics = train(cfg)
    written = _metrics_file(cfg)
    assert written == pytest.approx(metrics)
    for task in ("click", "purchase", "coupon"):
        for m in METRICS:
            assert 0.0 <= written[f"test/{task}/{m}"] < 10.0
        # simulated data: the oracle is known and far from chance
        assert 0.6 < written[f"oracle/{task}/auc"] <= 1.0


def test_task_selection_trains_exactly_those_heads(compose_cfg: Compose, tmp_path: Path) -> None:
    cfg = compose_cfg("task=[click,coupon]", "debug=limit", "data.batch_size=64")
    metrics = train(cfg)
    assert _tasks_of(metrics) == {"click", "coupon"}
    assert metrics["fit/epochs"] == 1.0 and metrics["fit/seconds"] > 0
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
    (ckpt,) = ckpt_dir.glob("epoch*.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    heads = {k.split(".")[2] for k in state if k.startswith("model.heads.")}
    assert heads == {"click", "coupon"}

    # every task's best validation epoch is reported and its checkpoint kept
    for task in ("click", "coupon"):
        assert metrics[f"best/{task}/epoch"] == 0.0
        assert 0.0 <= metrics[f"best/{task}/val_auc"] <= 1.0
        assert (ckpt_dir / f"best-{task}.ckpt").is_file()
    assert "best/purchase/epoch" not in metrics

    # atrank-eval rebuilds the model from the checkpoint and reproduces the test metrics
    ev = compose_cfg(f"ckpt_path={ckpt}", config_name="eval")
    again = evaluate(ev)
    assert again
    for key, value in again.items():
        assert value == pytest.approx(metrics[key], abs=1e-6), key


def test_history_blind_baseline_shares_the_heads(compose_cfg: Compose) -> None:
    cfg = compose_cfg("model/encoder=none", "debug=fdr")
    metrics = train(cfg)
    assert _tasks_of(metrics) == {"click", "purchase", "coupon"}


def test_wandb_logger_runs_offline_without_a_key(
    compose_cfg: Compose, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose_cfg("logger=wandb", "debug=limit")  # fdr would swap the logger for a dummy
    train(cfg)
    runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert runs, "no offline W&B run directory written"


def test_seed_makes_runs_repeatable(compose_cfg: Compose) -> None:
    a, b, c = (
        {k: v for k, v in train(compose_cfg("debug=fdr", f"seed={s}")).items() if "test/" in k}
        for s in (7, 7, 8)
    )
    assert a and a == b
    assert a != c


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.batch_size=abc", "data.batch_size"),
        ("data.max_len=0", "data.max_len"),
        ("model.dropout=1.5", "model.dropout"),
        ("task.click.weight=-1", "task.click.weight"),
        ("task.click.target=coupon", "task.click.target"),
        ("model.n_heads=5", "n_heads"),
    ],
)
def test_bad_config_values_name_the_key(compose_cfg: Compose, override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train(compose_cfg(override, "debug=fdr"))


def test_unknown_task_and_misspelled_key_fail_at_compose(compose_cfg: Compose) -> None:
    with pytest.raises(Exception, match="task/bogus"):
        compose_cfg("task=[click,bogus]")
    with pytest.raises(Exception, match="data.batchsize"):
        compose_cfg("data.batchsize=3")


def test_other_schema_version_is_refused(compose_cfg: Compose, tmp_path: Path) -> None:
    from atrank.runtime import resolve_data_dir

    data_dir = resolve_data_dir(compose_cfg())
    copy = tmp_path / "old"
    copy.mkdir()
    for f in data_dir.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    meta = json.loads((copy / C.META_FILE).read_text())
    meta["schema_version"] = C.SCHEMA_VERSION + 1
    (copy / C.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(PrepError, match="meta.json"):
        train(compose_cfg(f"data.dir={copy}", "debug=fdr"))


def test_missing_data_dir_names_the_file(compose_cfg: Compose, tmp_path: Path) -> None:
    with pytest.raises(PrepError, match="meta.json"):
        train(compose_cfg(f"data.dir={tmp_path / 'nowhere'}", "debug=fdr"))


def test_empty_split_is_refused(compose_cfg: Compose) -> None:
    with pytest.raises(PrepError, match="split"):
        train(compose_cfg("prep.test_frac=0.00001", "prep.val_frac=0.00001", "debug=fdr"))


@pytest.mark.parametrize(
    "encoder", ["none", "mean", "bpr", "bilstm", "bilstm_att", "cnn", "din", "atrank"]
)
def test_every_encoder_trains_through_the_same_command(compose_cfg: Compose, encoder: str) -> None:
    metrics = train(compose_cfg(f"model/encoder={encoder}", "debug=fdr"))
    assert _tasks_of(metrics) == {"click", "purchase", "coupon"}


def test_slurm_launcher_config_composes_without_a_cluster(compose_cfg: Compose) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="slurm extra not installed")
    cfg = compose_cfg("hydra/launcher=slurm", "hydra.launcher.partition=gpu", return_hydra=True)
    launcher = cfg.hydra.launcher
    assert "SlurmLauncher" in launcher._target_
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1


def test_conversion_task_uses_the_clicked_sample_space(compose_cfg: Compose) -> None:
    from atrank.config import task_configs
    from atrank.runtime import make_datamodule, resolve_data_dir

    cfg = compose_cfg("task=[click,purchase_cvr]", "debug=fdr")
    metrics = train(cfg)
    assert _tasks_of(metrics) == {"click", "purchase_cvr"}
    assert "oracle/purchase_cvr/auc" not in metrics  # P(purchase) is no oracle within clicks
    dm = make_datamodule(resolve_data_dir(cfg), data_config(cfg), task_configs(cfg), seed=0)
    for split in dm.splits.values():
        cvr, click = split.labels["purchase_cvr"], split.labels["click"]
        assert torch.equal(cvr >= 0, click == 1)  # labelled exactly on clicked impressions


def test_sample_space_errors_name_the_task(compose_cfg: Compose) -> None:
    with pytest.raises(ConfigError, match=r"task\.purchase_cvr\.space\.click"):
        train(compose_cfg("task=[purchase_cvr]", "task.purchase_cvr.space.click=5"))
    # coupon rows have no click label: this space leaves the task without any row
    with pytest.raises(PrepError, match="'coupon'.*no labelled row"):
        train(compose_cfg("task=[coupon]", "+task.coupon.space.click=1", "debug=fdr"))


def test_uncertainty_weighting_learns_a_weight_per_task(compose_cfg: Compose) -> None:
    cfg = compose_cfg("loss_weighting=uncertainty", "debug=limit", "data.batch_size=64")
    train(cfg)
    (ckpt,) = (Path(cfg.paths.output_dir) / "checkpoints").glob("epoch*.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    log_vars = {k: float(v) for k, v in state.items() if k.startswith("log_vars.")}
    assert set(log_vars) == {"log_vars.click", "log_vars.purchase", "log_vars.coupon"}
    assert any(v != 0.0 for v in log_vars.values())  # they moved from their start at 0
    with pytest.raises(ConfigError, match="loss_weighting"):
        train(compose_cfg("loss_weighting=magic", "debug=fdr"))


def test_each_task_logs_its_configured_metrics(compose_cfg: Compose) -> None:
    cfg = compose_cfg("task=[click,coupon]", "task.coupon.metrics=[auc,logloss]", "debug=fdr")
    metrics = train(cfg)
    assert {k for k in metrics if k.startswith("test/coupon/")} == {
        "test/coupon/auc",
        "test/coupon/logloss",
    }
    assert {f"test/click/{m}" for m in METRICS} <= set(metrics)
    with pytest.raises(ConfigError, match=r"task\.coupon\.metrics.*includes auc"):
        train(compose_cfg("task=[coupon]", "task.coupon.metrics=[gauc]", "debug=fdr"))
    with pytest.raises(ConfigError, match=r"task\.coupon\.metrics"):
        train(compose_cfg("task=[coupon]", "task.coupon.metrics=[auc,ndcg]", "debug=fdr"))


def test_compiled_model_trains_and_keeps_checkpoint_keys(compose_cfg: Compose) -> None:
    """compile=<backend> traces the model with torch.compile (the eager backend: tracing
    without code generation, seconds on CPU); checkpoints keep the plain module keys."""
    from torch._dynamo.utils import counters

    counters.clear()
    cfg = compose_cfg("compile=eager", "debug=limit", "task=[click]", "data.batch_size=64")
    metrics = train(cfg)
    assert counters["stats"]["unique_graphs"] > 0  # dynamo did trace the model
    assert 0.0 <= metrics["test/click/auc"] <= 1.0
    (ckpt,) = (Path(cfg.paths.output_dir) / "checkpoints").glob("epoch*.ckpt")
    keys = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert keys and not any("_orig_mod" in k for k in keys)
    with pytest.raises(ConfigError, match="'compile'"):
        train(compose_cfg("compile=fast", "debug=fdr"))
