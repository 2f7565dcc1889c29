"""Mini-batch-aware L2 on the id embeddings (``model.embed_l2``; DIN, Zhou et al. 2018, 4.1)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
import torch
from omegaconf import DictConfig
from torch import Tensor

from atrank.build import build_system, resolve_data_dir
from atrank.config import TaskSpec, train_config
from atrank.data.batch import Batch
from atrank.data.store import read_inverse_counts
from atrank.evaluate import evaluate
from atrank.model import ATRankModel, ModelConfig, build_model
from atrank.system.module import ATRankSystem
from atrank.train import train
from data_prep import contract as C
from data_prep.errors import PrepError
from data_prep.meta import read_meta
from tests.test_model import SHAPE, TASKS, VOCAB, make_batch, scramble_padding

Compose = Callable[..., DictConfig]


def _inv_counts(seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for f, size in VOCAB.items():
        inv = 1.0 / torch.randint(1, 20, (size,), generator=g).float()
        inv[C.PAD_INDEX] = 0.0
        out[f] = inv
    return out


def _explicit(model: ATRankModel, batch: Batch, inv: dict[str, Tensor], history: bool) -> Tensor:
    """The penalty written out: every distinct non-padding id of the batch, once."""
    total = torch.zeros(())
    for f, table in model.embedding.fields.items():
        ids = set(batch.target[f].tolist())
        if history:
            ids |= set(batch.hist[f][batch.hist_mask].tolist())
        for j in sorted(ids - {C.PAD_INDEX}):
            total = total + inv[f][j] * table.weight[j].pow(2).sum()
    return total


@pytest.mark.parametrize("encoder", ["atrank", "none"])
def test_penalty_is_the_sum_over_the_rows_the_batch_uses(encoder: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder=encoder), SHAPE, TASKS)
    batch, inv = make_batch([5, 0, 3, 8], T=8), _inv_counts()
    got = model.embedding_l2(batch, inv)
    # the history counts only for encoders that read it
    want = _explicit(model, batch, inv, history=encoder != "none")
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    assert float(got) > 0
    # ids at padded positions are never looked up, so never penalised
    assert float(model.embedding_l2(scramble_padding(batch), inv)) == pytest.approx(float(got))


def test_only_the_used_rows_get_a_gradient_scaled_by_their_inverse_count() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(), SHAPE, TASKS)
    batch, inv = make_batch([6, 2, 7], T=8), _inv_counts(1)
    model.embedding_l2(batch, inv).backward()
    table = model.embedding.fields["item_id"]
    used = set(batch.target["item_id"].tolist()) | set(
        batch.hist["item_id"][batch.hist_mask].tolist()
    )
    used.discard(C.PAD_INDEX)
    assert table.weight.grad is not None
    for j in range(VOCAB["item_id"]):
        want = 2 * inv["item_id"][j] * table.weight[j] if j in used else torch.zeros(1)
        torch.testing.assert_close(table.weight.grad[j], want.expand_as(table.weight.grad[j]))


def test_training_loss_adds_the_weighted_penalty_and_checkpoints_keep_their_keys() -> None:
    torch.manual_seed(0)
    batch, inv = make_batch([4, 6, 1], T=8), _inv_counts(2)
    tasks = {t: TaskSpec(target=g) for t, g in TASKS.items()}

    def system(weight: float) -> ATRankSystem:
        torch.manual_seed(0)  # the same initial weights for both systems
        model = build_model(ModelConfig(), SHAPE, TASKS)
        opt = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
        return ATRankSystem(model, tasks, opt, embed_l2=weight, inv_counts=inv)

    plain, regular = system(0.0), system(0.5)
    penalty = regular.model.embedding_l2(batch, inv)
    plain_loss = plain.training_step(batch, 0)
    regular_loss = regular.training_step(batch, 0)
    assert float(regular_loss - plain_loss) == pytest.approx(0.5 * float(penalty), rel=1e-5)
    # the counts are derived from the data at build time, never stored in checkpoints
    assert set(regular.state_dict()) == set(plain.state_dict())
    with pytest.raises(ValueError, match="embed_l2 > 0 needs inv_counts"):
        ATRankSystem(plain.model, tasks, lambda p: torch.optim.SGD(p, lr=0.1), embed_l2=0.5)


def test_inverse_counts_come_from_the_training_vocabulary(
    compose_cfg: Compose, tmp_path: Path
) -> None:
    data_dir = resolve_data_dir(train_config(compose_cfg()))
    meta = read_meta(data_dir)
    inv = read_inverse_counts(data_dir, {"item_id": meta.vocab_sizes["item_id"]})["item_id"]
    vocab = pl.read_parquet(data_dir / C.VOCAB_DIR / "item_id.parquet")
    assert inv.shape == (meta.vocab_sizes["item_id"],)
    assert float(inv[C.PAD_INDEX]) == 0.0 and float(inv[C.OOV_INDEX]) == 1.0
    for index, count in vocab.select("index", "count").head(20).iter_rows():
        assert float(inv[index]) == pytest.approx(1.0 / count)

    # a damaged vocabulary names the file and the row
    broken = tmp_path / "broken"
    shutil.copytree(data_dir, broken)
    path = broken / C.VOCAB_DIR / "item_id.parquet"
    vocab.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(0).otherwise(pl.col("count")).alias("count")
    ).write_parquet(path)
    with pytest.raises(PrepError, match=r"item_id\.parquet: row 3: .*count 0"):
        read_inverse_counts(broken, {"item_id": meta.vocab_sizes["item_id"]})
    path.unlink()
    with pytest.raises(PrepError, match=r"item_id\.parquet"):
        read_inverse_counts(broken, {"item_id": meta.vocab_sizes["item_id"]})


def test_training_with_it_runs_and_evaluates_from_the_checkpoint(compose_cfg: Compose) -> None:
    cfg = compose_cfg("model.embed_l2=0.1", "debug=limit", "data.batch_size=64", "task=[click]")
    metrics = train(cfg)
    (ckpt,) = (Path(cfg.paths.output_dir) / "checkpoints").glob("epoch*.ckpt")
    # atrank-eval rebuilds the system (counts read again from the prepared data)
    again = evaluate(compose_cfg(f"ckpt_path={ckpt}", config_name="eval"))
    assert again["test/click/auc"] == pytest.approx(metrics["test/click/auc"], abs=1e-6)
    # the run's system really carries the penalty and the counts of every embedded table
    run = train_config(cfg)
    data_dir = resolve_data_dir(run)
    system = build_system(run, read_meta(data_dir), data_dir)
    counts = dict(system.inv_counts.named_buffers())
    assert system.embed_l2 == 0.1 and set(counts) == set(system.model.embedding.fields)
