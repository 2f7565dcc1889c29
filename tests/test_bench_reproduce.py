"""The reproduction script's summaries: the table cells and the "who leads" lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import reproduce
from bench.reproduce import SETUPS, cell, leads, mean_sd

BEAUTY = SETUPS["beauty"]  # one task (click), first metric pair_auc


def runs(*values: float) -> tuple[str, list[dict[str, float]]]:
    """One encoder's tuned runs with these test pair AUCs."""
    return "base", [{"test/click/pair_auc": v} for v in values]


def test_mean_sd_is_the_sample_deviation() -> None:
    mean, sd = mean_sd([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2)
    assert sd == pytest.approx(0.1)  # n - 1 in the denominator
    assert mean_sd([0.5]) == (0.5, 0.0)
    assert cell([0.1, 0.2, 0.3]) == "0.2000 ± 0.1000"
    assert cell([]) == "-"


def test_lead_beyond_the_summed_spreads() -> None:
    # atrank 0.80 +- 0.01, din 0.77 +- 0.01: gap 0.03 > 0.02.
    line = leads(BEAUTY, {"din": runs(0.76, 0.77, 0.78), "atrank": runs(0.79, 0.80, 0.81)})
    assert "**atrank** leads din by 0.0300, summed sd 0.0200" in line
    assert "ahead by more than the spread" in line
    assert "behind" not in line


def test_lead_within_the_summed_spreads_is_not_called_a_win() -> None:
    # gap 0.015 < summed sd 0.02: the intervals overlap.
    line = leads(BEAUTY, {"din": runs(0.775, 0.785, 0.795), "atrank": runs(0.79, 0.80, 0.81)})
    assert "within the spread" in line
    assert "ahead by" not in line


def test_a_baseline_in_front_gives_atranks_rank_and_distance() -> None:
    results = {
        "atrank": runs(0.70, 0.70, 0.70),
        "din": runs(0.75, 0.75, 0.75),
        "mean": runs(0.60, 0.60, 0.60),
    }
    line = leads(BEAUTY, results)
    assert line.startswith("- click pair_auc: **din** leads atrank by 0.0500")
    assert "atrank is #2 of 3, 0.0500 behind." in line


def test_every_task_of_a_multi_task_setup_gets_a_line() -> None:
    setup = SETUPS["taobao"]  # click and purchase, first metric auc

    def two(click: float, purchase: float) -> tuple[str, list[dict[str, float]]]:
        return "base", [{"test/click/auc": click, "test/purchase/auc": purchase}] * 2

    lines = leads(setup, {"atrank": two(0.72, 0.60), "din": two(0.70, 0.70)}).splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["- click auc", "- purchase auc"]
    assert "**atrank**" in lines[0] and "**din**" in lines[1]


def test_the_setting_is_chosen_on_validation_never_on_test(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # "reg" has the best test AUC, "embed" the best validation monitor: embed must win,
    # and only the chosen setting is run with the other seeds.
    val = {"base": 0.70, "reg": 0.71, "embed": 0.72}
    test = {"base": 0.80, "reg": 0.90, "embed": 0.60}
    calls: list[tuple[str, int]] = []

    def fake_run(
        setup: object, encoder: str, g: str, seed: int, out: Path, extra: list[str]
    ) -> dict[str, float]:
        calls.append((g, seed))
        return {"best/val_monitor": val[g], "test/click/pair_auc": test[g] + seed / 1000}

    monkeypatch.setattr(reproduce, "run_one", fake_run)
    best, runs = reproduce.tuned(BEAUTY, "atrank", list(val), [1, 2, 3], tmp_path, [])
    assert best == "embed"
    assert [r["test/click/pair_auc"] for r in runs] == pytest.approx([0.601, 0.602, 0.603])
    assert calls == [("base", 1), ("reg", 1), ("embed", 1), ("embed", 2), ("embed", 3)]


def test_the_default_grid_is_the_tables_grid() -> None:
    assert reproduce.DEFAULT_GRID == ("base", "reg", "embed")
    assert set(reproduce.DEFAULT_GRID) <= set(reproduce.GRID)
    assert reproduce.GRID["embed"] == ["model.embed_l2=0.01"]
