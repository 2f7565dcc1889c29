"""Integration: generated data -> preparation -> training through the real Hydra config."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig

from atrank.build import build_system, make_datamodule, resolve_data_dir
from atrank.config import ConfigError, train_config
from atrank.evaluate import evaluate
from atrank.train import train
from data_prep import contract as C
from data_prep.errors import PrepError

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
        for m in ("auc", "gauc", "pair_auc"):
            assert 0.0 <= written[f"test/{task}/{m}"] <= 1.0
        # one training batch from a near-zero start: the log loss is near log(2), far from
        # what a broken loss (probabilities fed as logits, a missing mean) would give
        assert 0.3 < written[f"test/{task}/logloss"] < 1.0
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
    """model/encoder=none keeps ATRank's embedding and task heads (same parameters, same
    shapes) and drops only the history encoder; its scores ignore the history."""
    atrank, blind = (train_config(compose_cfg(*o)) for o in ([], ["model/encoder=none"]))
    data_dir = resolve_data_dir(atrank)
    dm = make_datamodule(data_dir, atrank.data, atrank.task, seed=0)
    models = [build_system(r, dm.prepared_meta, data_dir).model for r in (atrank, blind)]

    def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in module.state_dict().items()}

    full, none = models
    assert shapes(none.heads) == shapes(full.heads) and set(none.heads) == set(atrank.task)
    assert shapes(none.embedding) == shapes(full.embedding)
    assert sum(p.numel() for p in full.encoder.parameters()) > 0
    assert sum(p.numel() for p in none.encoder.parameters()) == 0
    batch = next(iter(dm.test_dataloader()))
    assert bool(batch.hist_mask.any())
    emptied = replace(batch, hist_mask=torch.zeros_like(batch.hist_mask))
    with torch.no_grad():
        for model, blind_to_history in ((none.eval(), True), (full.eval(), False)):
            a, b = model(batch).logits, model(emptied).logits
            same = all(torch.equal(a[t], b[t]) for t in a)
            assert same == blind_to_history

    metrics = train(compose_cfg("model/encoder=none", "debug=fdr"))
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
        ("data.max_len=0", "data.max_len"),
        ("model.dropout=1.5", "model.dropout"),
        ("model.embed_l2=-1", "model.embed_l2"),
        ("task.click.weight=-1", "task.click.weight"),
        ("task.click.target=coupon", "task.click.target"),
        ("model.n_heads=5", "model.n_heads"),
        ("+task.click.wieght=2", "task.click.wieght"),
        ("threads=0", "threads"),
        ("prep.val_frac=1.5", "prep"),
    ],
)
def test_bad_config_values_name_the_key(compose_cfg: Compose, override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train(compose_cfg(override, "debug=fdr"))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.batch_size=abc", "data.batch_size"),
        ("seed=abc", "seed"),
        ("loss_weighting=magic", "loss_weighting"),
        ("data.batchsize=3", "data.batchsize"),
        ("model.d_modle=3", "model.d_modle"),
        ("task.click.horizon=soon", "task.click.horizon"),
    ],
)
def test_mistyped_or_misspelled_keys_fail_at_compose(
    compose_cfg: Compose, override: str, key: str
) -> None:
    with pytest.raises(ConfigCompositionException, match=key.replace(".", r"\.")):
        compose_cfg(override)


def test_unknown_task_fails_at_compose(compose_cfg: Compose) -> None:
    with pytest.raises(MissingConfigException, match="task/bogus"):
        compose_cfg("task=[click,bogus]")


def test_typo_inside_an_experiment_file_fails_at_compose(
    compose_cfg: Compose, tmp_path: Path
) -> None:
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "typo.yaml").write_text(
        "# @package _global_\nmodel:\n  d_model: 32\n  n_head: 2\n"
    )
    search = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(search, "experiment=typo")
    assert "model.n_head" in str(e.value) and "ModelConfig" in str(e.value)
    (tmp_path / "conf" / "experiment" / "typo.yaml").write_text(
        "# @package _global_\nmodel:\n  d_model: 32\n  n_heads: 2\n"
    )
    run = train_config(compose_cfg(search, "experiment=typo"))
    assert (run.model.d_model, run.model.n_heads) == (32, 2)


def test_task_files_hold_only_what_differs_from_the_defaults(compose_cfg: Compose) -> None:
    from dataclasses import fields

    from atrank.config import TaskSpec

    conf = Path(__file__).parents[1] / "conf" / "task"
    defaults = TaskSpec()
    run = train_config(compose_cfg("task=[click,purchase,coupon,purchase_cvr,cart]"))
    for name, spec in run.task.items():
        text = (conf / f"{name}.yaml").read_text()
        for f in fields(TaskSpec):
            if getattr(spec, f.name) == getattr(defaults, f.name):
                assert f"\n{f.name}:" not in text, (name, f.name)  # no default repeated
    assert run.task["coupon"].target == "coupon" and run.task["cart"].positive == ["cart"]
    assert run.task["purchase_cvr"].space == {"click": 1}


def test_other_schema_version_is_refused(compose_cfg: Compose, tmp_path: Path) -> None:
    data_dir = resolve_data_dir(train_config(compose_cfg()))
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
    "encoder", ["none", "mean", "bpr", "bilstm", "bilstm_att", "cnn", "target_att", "din", "atrank"]
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
    cfg = compose_cfg("task=[click,purchase_cvr]", "debug=fdr")
    metrics = train(cfg)
    assert _tasks_of(metrics) == {"click", "purchase_cvr"}
    assert "oracle/purchase_cvr/auc" not in metrics  # P(purchase) is no oracle within clicks
    run = train_config(cfg)
    dm = make_datamodule(resolve_data_dir(run), run.data, run.task, seed=0)
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
    metrics = train(cfg)
    (ckpt,) = (Path(cfg.paths.output_dir) / "checkpoints").glob("epoch*.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    log_vars = {k: float(v) for k, v in state.items() if k.startswith("log_vars.")}
    assert set(log_vars) == {"log_vars.click", "log_vars.purchase", "log_vars.coupon"}
    assert any(v != 0.0 for v in log_vars.values())  # they moved from their start at 0
    # atrank-eval rebuilds the same system (with its learned weights) from the checkpoint
    again = evaluate(compose_cfg(f"ckpt_path={ckpt}", config_name="eval"))
    test = {k: v for k, v in metrics.items() if k.startswith("test/")}
    assert test and {k: again[k] for k in test} == pytest.approx(test, abs=1e-6)


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


def test_resuming_from_a_checkpoint_continues_the_run(compose_cfg: Compose, tmp_path: Path) -> None:
    """ckpt_path=<checkpoint> restores weights, optimizer and loop state: the run goes on
    from the next epoch and step instead of starting over."""
    limit = ["task=[click]", "data.batch_size=64", "debug=limit", "test=false"]
    first = compose_cfg(*limit, f"paths.output_dir={tmp_path / 'first'}")
    train(first)
    (ckpt,) = (tmp_path / "first" / "checkpoints").glob("epoch*.ckpt")
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["epoch"] == 0 and saved["global_step"] == 3  # limit_train_batches=3
    resumed = compose_cfg(
        *limit, "trainer.max_epochs=2", f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'two'}"
    )
    metrics = train(resumed)
    assert metrics["fit/epochs"] == 2.0
    (after,) = (tmp_path / "two" / "checkpoints").glob("epoch*.ckpt")
    state = torch.load(after, map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and state["global_step"] == 6  # one more epoch of 3 steps
    moved = [
        k
        for k in saved["state_dict"]
        if not torch.equal(saved["state_dict"][k], state["state_dict"][k])
    ]
    assert moved  # the weights went on training from the restored ones


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_dev_run_on_a_gpu(compose_cfg: Compose) -> None:
    """trainer=gpu (one device, bf16-mixed) runs every stage and writes finite metrics."""
    metrics = train(compose_cfg("trainer=gpu", "debug=fdr"))
    for task in ("click", "purchase", "coupon"):
        assert 0.0 <= metrics[f"test/{task}/auc"] <= 1.0
        assert 0.0 < metrics[f"test/{task}/logloss"] < 2.0


class _CreatesAFile:
    """Unpickling this object would create a file: a crafted checkpoint's payload."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(
    compose_cfg: Compose, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"hyper_parameters": {"run_config": {}}, "payload": _CreatesAFile(marker)}, crafted)
    with pytest.raises(ConfigError, match=r"ckpt_path: .*crafted\.ckpt is not a readable"):
        evaluate(compose_cfg(f"ckpt_path={crafted}", config_name="eval"))
    with pytest.raises(ConfigError, match=r"ckpt_path: .*crafted\.ckpt is not a readable"):
        train(compose_cfg(f"ckpt_path={crafted}", "debug=fdr"))
    from atrank.serve.export import export_bundle

    with pytest.raises(ConfigError, match="not a readable"):
        export_bundle(crafted, tmp_path / "bundle")
    assert not marker.exists()  # nothing was unpickled
    missing = tmp_path / "nowhere.ckpt"
    with pytest.raises(ConfigError, match="no checkpoint file"):
        evaluate(compose_cfg(f"ckpt_path={missing}", config_name="eval"))


def test_the_value_a_sweeper_optimises_is_the_best_validation_monitor(
    compose_cfg: Compose,
) -> None:
    from atrank.train import VAL_MONITOR

    cfg = compose_cfg("task=[click,coupon]", "debug=limit", "data.batch_size=64")
    cfg.trainer.max_epochs = 2
    metrics = train(cfg)
    last = torch.load(
        Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=True,
    )
    (state,) = [
        v
        for k, v in last["callbacks"].items()
        if k.startswith("ModelCheckpoint{'monitor': 'val/monitor'")
    ]
    assert metrics[VAL_MONITOR] == pytest.approx(float(state["best_model_score"]))
    # the best of the two epochs' val/monitor, not a test figure
    test_mean = (metrics["test/click/auc"] + metrics["test/coupon/auc"]) / 2
    assert metrics[VAL_MONITOR] != pytest.approx(test_mean, abs=1e-9)
