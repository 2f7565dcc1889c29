"""Tasks derived from behaviours at preparation time: a fourth task from YAML alone."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
import torch
from omegaconf import DictConfig

from atrank.build import make_datamodule, resolve_data_dir
from atrank.config import ConfigError, train_config
from atrank.train import train
from data_prep import contract as C
from data_prep.passes.derive import add_derived_labels, derived_tasks
from data_prep.pipeline import PrepConfig, PrepError
from data_prep.run import prepare_from_config

Compose = Callable[..., DictConfig]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"real data samples not found at {SHARED} (../shared/data)"
)


def _events() -> pl.LazyFrame:
    return pl.DataFrame(
        {
            C.USER: ["u1", "u1", "u1", "u2", "u2", "u1"],
            C.TS: [5, 20, 101, 10, 5000, 7],
            C.GROUP: ["item"] * 5 + ["coupon"],
            C.ACTION: ["click", "cart", "cart", "cart", "cart", "use"],
            C.ITEM: ["a", "a", "b", "a", "a", None],
            C.COUPON: [None] * 5 + ["k"],
        }
    ).lazy()


def _samples() -> pl.LazyFrame:
    return pl.DataFrame(
        {
            C.USER: ["u1", "u1", "u1", "u2", "u2", "u1", "u1"],
            C.TS: [1, 1, 30, 1, 1, 2, 20],
            C.GROUP: ["item", "item", "item", "item", "item", "coupon", "item"],
            C.ITEM: ["a", "b", "a", "a", "c", None, "a"],
            C.COUPON: [None] * 5 + ["k", None],
            "label_click": pl.Series([1, 0, 0, 1, 0, None, 1], dtype=pl.Int8),
        }
    ).lazy()


def test_impression_label_is_the_behaviour_on_that_object_within_the_horizon() -> None:
    tasks = derived_tasks({"cart": {"actions": ["cart"], "horizon": 100}})
    out = add_derived_labels(_events(), _samples(), tasks, "hand").collect()
    # order and every other column kept; label per row:
    # u1/a@1: cart a@20 (19 s) -> 1;  u1/b@1: cart b@101 (100 s, on the horizon) -> 1;
    # u1/a@30: no cart of a at or after 30 -> 0;  u2/a@1: cart a@10 -> 1;  u2/c@1: none -> 0;
    # coupon row: the task does not apply -> null;  u1/a@20: cart a@20 (same second) -> 1,
    # and it is this latest impression's, so u1/a@1 -> 0 (attributed to the latest one).
    assert out.drop("label_cart").equals(_samples().collect())
    assert out["label_cart"].to_list() == [0, 1, 0, 1, 0, None, 1]
    assert out["label_cart"].dtype == pl.Int8
    short = add_derived_labels(
        _events(), _samples(), derived_tasks({"cart": {"actions": "cart", "horizon": 99}}), "h"
    ).collect()
    assert short["label_cart"].to_list() == [0, 0, 0, 1, 0, None, 1]  # 100 s > 99 s horizon
    coupon = add_derived_labels(
        _events(),
        _samples(),
        derived_tasks({"used": {"actions": ["use"], "target": "coupon"}}),
        "h",
    ).collect()
    assert coupon["label_used"].to_list() == [None] * 5 + [1, None]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"cart": {"actions": []}}, r"derive\.cart\.actions"),
        ({"cart": {"actions": ["cart"], "target": "shop"}}, r"derive\.cart\.target.*'shop'"),
        ({"cart": {"actions": ["cart"], "negatives": "all"}}, r"derive\.cart\.negatives"),
        ({"cart": {"actions": ["cart"], "horizon": 0}}, r"derive\.cart\.horizon"),
        ({"cart": {"actions": ["cart"], "colour": 1}}, r"derive\.cart: unknown key.*colour"),
    ],
)
def test_bad_derive_config_names_the_key(spec: dict, match: str) -> None:
    with pytest.raises(PrepError, match=match):
        derived_tasks(spec)


def test_derived_task_errors_name_the_task_and_the_data() -> None:
    with pytest.raises(
        PrepError, match=r"derive\.fav\.actions.*'hand'.*\['fav'\].*\['cart', 'click'\]"
    ):
        add_derived_labels(
            _events(), _samples(), derived_tasks({"fav": {"actions": ["fav"]}}), "hand"
        )
    with pytest.raises(PrepError, match=r"derive\.click: .*already have 'label_click'"):
        add_derived_labels(
            _events(), _samples(), derived_tasks({"click": {"actions": ["click"]}}), "hand"
        )


def test_cart_task_on_impressions_from_yaml_alone(compose_cfg: Compose) -> None:
    """conf/task/cart.yaml (no code): the sim's impressions get a cart label at prep time."""
    # (the sim carts within 302 s of the click of its impression: a tighter horizon than the
    # default hour keeps later, unsampled impressions of the same item out)
    cfg = compose_cfg("task=[click,purchase,cart]", "task.cart.horizon=302", "debug=fdr")
    metrics = train(cfg)
    assert {k.split("/")[1] for k in metrics if k.startswith("test/")} == {
        "click",
        "purchase",
        "cart",
    }
    run = train_config(cfg)
    dm = make_datamodule(resolve_data_dir(run), run.data, run.task, seed=0)
    assert dm.prepared_meta.source["derive"]["cart"]["actions"] == ["cart"]
    cart = torch.cat([s.labels["cart"] for s in dm.splits.values()])
    click = torch.cat([s.labels["click"] for s in dm.splits.values()])
    labelled = cart >= 0
    assert labelled.equal(click >= 0)  # every item impression, no coupon row
    assert 0 < int((cart == 1).sum()) < int((click == 1).sum())  # rarer than clicks
    # In the simulator a cart follows a click of the same impression.
    assert float((click[cart == 1] == 1).float().mean()) > 0.95


def test_derived_task_errors_stop_before_training(compose_cfg: Compose, tmp_path: Path) -> None:
    with pytest.raises(PrepError, match=r"derive\.fav\.actions.*'sim'.*\['fav'\]"):
        train(compose_cfg("task=[click,fav]", "debug=fdr"))
    with pytest.raises(PrepError, match=r"derive\.cart\.negatives: 'sampled'.*'sim'"):
        train(compose_cfg("task=[cart]", "task.cart.negatives=sampled", "debug=fdr"))
    with pytest.raises(ConfigError, match=r"task\.cart\.negatives"):
        train(compose_cfg("task=[cart]", "task.cart.negatives=everything", "debug=fdr"))
    with pytest.raises(ConfigError, match=r"task\.cart\.positive.*data\.dir"):
        train(compose_cfg("task=[cart]", f"data.dir={tmp_path}", "debug=fdr"))


@needs_shared
def test_fav_task_on_taobao_from_yaml_alone(compose_cfg: Compose, cache_dir: Path) -> None:
    """On a positive-only log the derived task is one more next-item task (sampled negatives)."""
    os.environ.setdefault("ATRANK_SHARED_DATA", str(SHARED))
    cfg = compose_cfg(
        "experiment=taobao_click_purchase",
        "task=[click,purchase,fav]",
        f"dataset.path={SHARED / 'taobao_userbehavior'}",
        "debug=fdr",
        tiny=False,
    )
    metrics = train(cfg)
    assert {"test/click/auc", "test/purchase/auc", "test/fav/auc"} <= set(metrics)
    # The same next-item samples as preparing with dataset.tasks.fav=[fav] directly.
    direct = prepare_from_config(
        {
            "name": "taobao",
            "path": str(SHARED / "taobao_userbehavior"),
            "tasks": {"click": ["click"], "purchase": ["purchase"], "fav": ["fav"]},
        },
        PrepConfig(),
        cache_dir=cache_dir,
    )
    derived = resolve_data_dir(train_config(cfg))
    assert derived != direct.out_dir
    for split in ("train", "val", "test"):
        a, b = (pl.read_parquet(d / f"samples_{split}.parquet") for d in (derived, direct.out_dir))
        assert a.height > 0 and a.equals(b)
