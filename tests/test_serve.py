"""Scoring outside training: the bundle, the one feature path, encode-once scoring."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
import torch
from omegaconf import DictConfig

from atrank.build import build_system, make_datamodule
from atrank.runtime import checkpoint_run, read_checkpoint
from atrank.serve.bundle import BUNDLE_FILE, BundleError, load_bundle
from atrank.serve.features import POSITION
from atrank.serve.predictor import Predictor
from data_prep import contract as C
from data_prep.meta import read_meta

Compose = Callable[..., DictConfig]
CANDIDATE_COLUMNS = [C.USER, C.TS, C.GROUP, *C.ID_FIELDS]


@pytest.fixture(scope="module")
def trained(tiny_run: dict[str, Path]) -> dict[str, Path]:
    """A checkpoint of a short run on the tiny simulated data, and its bundle."""
    return tiny_run


def _eval_logits(ckpt: Path) -> tuple[pl.DataFrame, Path]:
    """What atrank-eval computes on the test split: every sample's logits, with its keys."""
    run, saved = checkpoint_run(ckpt)
    data_dir = Path(str(saved["hyper_parameters"]["data_dir"]))  # type: ignore[index]
    dm = make_datamodule(data_dir, run.data, run.task, run.seed)
    system = build_system(run, dm.prepared_meta, data_dir)
    system.load_state_dict(saved["state_dict"])  # type: ignore[arg-type]
    model = system.model.eval()
    rows = []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            out = model(batch).logits
            frame = {"user_idx": batch.user.numpy(), "group_idx": batch.target_group.numpy()}
            frame |= {f: batch.target[f].numpy() for f in C.ID_FIELDS}
            frame |= {f"logit_{t}": v.numpy() for t, v in out.items()}
            rows.append(pl.DataFrame(frame))
    test = pl.read_parquet(data_dir / C.samples_file("test"))
    logits = pl.concat(rows).with_columns(test[C.TS])  # the loader keeps the file's order
    return logits, data_dir


def test_bundle_holds_everything_scoring_needs(trained: dict[str, Path]) -> None:
    bundle = load_bundle(trained["bundle"])
    assert set(bundle.tasks) == {"click", "purchase", "coupon"}
    assert bundle.tasks["coupon"].target == "coupon" and bundle.max_len == 30
    meta = read_meta(Path(str(read_checkpoint(trained["ckpt"])["hyper_parameters"]["data_dir"])))  # type: ignore[index]
    assert bundle.fingerprint == meta.fingerprint and bundle.time == meta.time
    assert bundle.shape.vocab_sizes == meta.vocab_sizes
    assert "test/click/auc" in bundle.metrics
    items = bundle.catalogue["item"]
    assert items.columns == list(C.GROUP_FIELDS["item"]) and items.height > 100
    assert bundle.catalogue["coupon"].columns == list(C.GROUP_FIELDS["coupon"])
    # the weights are the checkpoint's model weights, loaded without unpickling code
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    model = bundle.build_model()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt[f"model.{k}"]), k


def test_a_bundle_of_another_version_is_refused(trained: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(trained["bundle"], copy)
    doc = json.loads((copy / BUNDLE_FILE).read_text())
    doc["bundle_version"] = 0
    (copy / BUNDLE_FILE).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="bundle version 0"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nowhere")


def test_scores_from_raw_tables_equal_the_evaluation_logits(trained: dict[str, Path]) -> None:
    """No training/serving skew: the test samples, rebuilt from the raw canonical tables and
    scored through the bundle, get the logits atrank-eval computes from the prepared files."""
    want, data_dir = _eval_logits(trained["ckpt"])
    meta = read_meta(data_dir)
    raw = Path(str(meta.source["raw_dir"]))
    events = pl.read_parquet(raw / "events" / "*.parquet")
    samples = pl.read_parquet(raw / "samples" / "*.parquet")
    t_test = int(meta.split["t_test"])
    requests = samples.filter(pl.col(C.TS) >= t_test).select(CANDIDATE_COLUMNS)
    predictor = Predictor(trained["bundle"])
    features = predictor.featurizer(events, requests)
    got = predictor.table(features, predictor.logits(features), with_logits=True)
    users = pl.read_parquet(data_dir / C.USERS_FILE).select(C.USER_IDX, C.USER)
    coded = pl.DataFrame({f: features.target[f].numpy() for f in C.ID_FIELDS})
    got = pl.concat([got.drop(C.ID_FIELDS), coded], how="horizontal").join(
        users, on=C.USER, how="left"
    )
    keys = [C.USER_IDX, C.TS, *C.ID_FIELDS]
    want = want.unique(keys, keep="none")  # (exact duplicates cannot be told apart)
    joined = want.join(got, on=keys, how="inner", suffix="_served")
    assert joined.height == want.height > 100  # every test sample found
    for task, group in (("click", 0), ("purchase", 0), ("coupon", 1)):
        rows = joined.filter(pl.col("group_idx") == group)
        assert rows.height > 20
        diff = (rows[f"logit_{task}"] - rows[f"logit_{task}_served"]).abs().max()
        assert diff is not None and float(diff) < 1e-5, (task, diff)  # type: ignore[arg-type]


def test_encode_once_equals_repeating_the_history(trained: dict[str, Path]) -> None:
    predictor = Predictor(trained["bundle"])
    bundle = predictor.bundle
    meta_raw = read_meta(
        Path(str(read_checkpoint(trained["ckpt"])["hyper_parameters"]["data_dir"]))  # type: ignore[index]
    ).source["raw_dir"]
    events = pl.read_parquet(Path(str(meta_raw)) / "events" / "*.parquet")
    user = events[C.USER][0]
    ts = int(events.filter(pl.col(C.USER) == user)[C.TS].max()) + 1  # type: ignore[arg-type]
    items = bundle.catalogue["item"].head(40)[C.ITEM]
    requests = pl.DataFrame({C.USER: user, C.TS: ts, C.ITEM: items})
    features = predictor.featurizer(events, requests)
    assert features.history.size == 1 and features.owner.unique().tolist() == [0]
    once = predictor.logits(features)
    # the naive path: the one history row repeated for each candidate, the model's forward
    h = features.history
    n = features.owner.numel()
    naive = replace(
        h,
        hist={f: v.repeat(n, 1) for f, v in h.hist.items()},
        hist_action=h.hist_action.repeat(n, 1),
        hist_time=h.hist_time.repeat(n, 1),
        hist_group=h.hist_group.repeat(n, 1),
        hist_mask=h.hist_mask.repeat(n, 1),
        target=features.target,
        target_group=features.target_group,
        user=h.user.repeat(n),
    )
    with torch.no_grad():
        repeated = predictor.model(naive).logits
    for task in once:
        torch.testing.assert_close(once[task], repeated[task], rtol=0, atol=1e-5)


def test_unknown_ids_and_bad_event_rows_are_counted_not_errors(trained: dict[str, Path]) -> None:
    predictor = Predictor(trained["bundle"])
    events = pl.DataFrame(
        {
            C.USER: ["u1", "u1", "u1", None, "u1"],
            C.TS: [100, 200, 300, 150, None],
            C.GROUP: ["item", "item", "planet", "item", "item"],
            C.ACTION: ["click", "teleport", "click", "click", "click"],
            C.ITEM: ["never-seen", "never-seen-2", "x", "y", "z"],
        }
    )
    item = predictor.bundle.catalogue["item"][C.ITEM][0]
    requests = pl.DataFrame(
        {
            C.USER: ["u1", "u1", "u1", "nobody"],
            C.TS: [1000, 1000, 1000, 1000],
            C.GROUP: ["item", "item", "coupon", "item"],
            C.ITEM: [item, "brand-new", None, "brand-new"],
        }
    )
    scores, stats = predictor.score(events, requests)
    # (only the requests' users' events are read; an unknown action is OOV, not a drop)
    assert stats["events_read"] == 4 and stats["events_kept"] == 2
    assert stats["events_dropped_by_reason"] == {"unknown_group": 1, "null_ts": 1}
    assert stats["candidates_oov"] == 2
    assert scores[POSITION].to_list() == [0, 1, 2, 0]
    assert scores["scorable"].to_list() == [True, True, False, False]
    assert scores["reason"].to_list()[2:] == ["no_candidate_id", "unknown_candidate_and_no_history"]
    assert scores["p_click"][0] is not None and scores["p_click"][1] is not None
    assert scores["p_coupon"].null_count() == 4  # no coupon candidate can be scored


def test_loading_a_bundle_and_scoring_needs_neither_hydra_nor_lightning(
    trained: dict[str, Path],
) -> None:
    import subprocess
    import sys

    code = (
        "import sys, polars as pl\n"
        "from atrank.serve.predictor import Predictor\n"
        f"p = Predictor({str(trained['bundle'])!r})\n"
        "item = p.bundle.catalogue['item']['item_id'][0]\n"
        "events = pl.DataFrame({'user_id': ['u'], 'ts': [1], 'group': ['item'],"
        " 'action': ['click'], 'item_id': [item]})\n"
        "requests = pl.DataFrame({'user_id': ['u'], 'ts': [2], 'item_id': [item]})\n"
        "scores, _ = p.score(events, requests)\n"
        "assert scores['p_click'][0] is not None\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'hydra', 'omegaconf', 'lightning',"
        " 'pytorch_lightning'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
