"""atrank-serve as a client sees it: the console script on a free local port, real HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atrank.serve.predictor import Predictor
from data_prep import contract as C

BIN = Path(sys.executable).parent
MAX_EVENTS, MAX_CANDIDATES = 200, 50
STARTUP_S = 90  # the worker imports torch and loads the bundle
TASKS = ("click", "purchase", "coupon")


@pytest.fixture(scope="module")
def trained(tiny_run: dict[str, Path]) -> dict[str, Path]:
    """A bundle of a short run on the tiny simulated data, and the run's raw events."""
    return {**tiny_run, "events": tiny_run["raw"] / "events"}


class Client:
    """A keep-alive client of one server (``requests``: a dependency of wandb)."""

    def __init__(self, base: str) -> None:
        self.base, self.session = base, requests.Session()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()

    def get(self, path: str) -> requests.Response:
        return self.session.get(self.base + path, timeout=60)

    def post(self, path: str, json: Any = None, content: bytes | None = None) -> requests.Response:
        return self.session.post(self.base + path, json=json, data=content, timeout=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(trained: dict[str, Path]) -> Iterator[str]:
    """The base URL of ``atrank-serve`` on the bundle; the server is stopped afterwards."""
    port = _free_port()
    root = trained["root"]
    cmd = [
        str(shutil.which("atrank-serve", path=str(BIN))),
        f"bundle={trained['bundle']}",
        f"port={port}",
        "threads=1",
        "batch_timeout=0.01",
        f"max_events={MAX_EVENTS}",
        f"max_candidates={MAX_CANDIDATES}",
        f"hydra.run.dir={root / 'serve-run'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1"}
    log_path = root / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            assert proc.poll() is None, f"atrank-serve exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no /health in {STARTUP_S} s"
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.25)
        yield url
        assert proc.poll() is None, "the server died during the tests"
    finally:
        # The whole session: LitServe's manager, inference worker and HTTP server processes.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[Client]:
    with Client(server) as c:
        yield c


@pytest.fixture(scope="module")
def predictor(trained: dict[str, Path]) -> Predictor:
    return Predictor(trained["bundle"])


@pytest.fixture(scope="module")
def cases(trained: dict[str, Path], predictor: Predictor) -> list[tuple[dict[str, Any], Any]]:
    """Good bodies and, for each, the answer computed in process with ``Predictor.score``.

    Users 0..5, each twice with a different history (two requests of one user in one batch
    must not share their events), with known, unknown and coupon candidates.
    """
    raw = pl.read_parquet(trained["events"] / "*.parquet")
    items = predictor.bundle.catalogue["item"][C.ITEM].to_list()
    coupons = predictor.bundle.catalogue["coupon"][C.COUPON].to_list()
    users = raw[C.USER].unique(maintain_order=True).head(6).to_list()
    out = []
    for k, user in enumerate(users):
        mine = raw.filter(pl.col(C.USER) == user).sort(C.TS)
        for cut in (mine.height // 2, mine.height):
            hist = mine.head(cut)
            ts = int(mine[C.TS][cut - 1]) + 1
            cand = [{C.ITEM: i} for i in items[3 * k : 3 * k + 4]] + [{C.ITEM: "never-seen"}]
            cand += [{C.GROUP: "coupon", C.COUPON: c} for c in coupons[k : k + 2]]
            events = [{f: v for f, v in r.items() if v is not None} for r in hist.to_dicts()]
            body = {
                C.USER: user,
                C.TS: ts,
                "events": [{f: v for f, v in e.items() if f != C.USER} for e in events],
                "candidates": cand,
            }
            requests = pl.DataFrame(
                [{C.USER: user, C.TS: ts, C.GROUP: "item", **c} for c in cand],
                schema={c: pl.String for c in (C.USER, C.GROUP, C.ITEM, C.COUPON)}
                | {C.TS: pl.Int64},
            )
            want, _ = predictor.score(hist, requests)
            out.append((body, want))
    return out


def _check(answer: dict[str, Any], want: pl.DataFrame, tasks: tuple[str, ...] = TASKS) -> None:
    assert answer["scorable"] == want["scorable"].to_list()
    assert answer["reason"] == want["reason"].to_list()
    assert len(answer["scores"]) == want.height
    for task in TASKS:
        got = [s.get(task) for s in answer["scores"]]
        if task not in tasks:
            assert all(task not in s for s in answer["scores"])
            continue
        for g, w in zip(got, want[f"p_{task}"].to_list(), strict=True):
            assert (g is None) == (w is None), (task, g, w)
            assert g is None or abs(g - w) < 1e-6, (task, g, w)


def test_scores_equal_the_in_process_predictor(
    client: Client, cases: list[tuple[dict[str, Any], Any]]
) -> None:
    for body, want in cases[:4]:
        r = client.post("/score", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        _check(answer, want)
        stats = answer["stats"]
        assert stats["candidates"] == want.height and stats["unknown_candidates"] == 1
        assert stats["events"] == len(body["events"]) and stats["history"] <= 30
    body, want = cases[0]
    r = client.post("/score", json={**body, "tasks": ["coupon", "click"]})
    assert r.status_code == 200, r.text
    _check(r.json(), want, tasks=("coupon", "click"))
    assert all(s["coupon"] is None for s in r.json()["scores"][:5])  # items: no coupon score


def test_test_samples_sent_to_the_server_get_the_evaluation_scores(
    client: Client, trained: dict[str, Path], predictor: Predictor
) -> None:
    """No skew through HTTP either: test samples rebuilt from the raw canonical tables, sent as
    requests (the user's events before the sample, the candidates as the raw rows name them),
    get sigmoid of the logits atrank-eval computes from the prepared files."""
    import math

    from test_serve import _eval_logits

    from data_prep.meta import read_meta

    want, data_dir = _eval_logits(trained["ckpt"])
    meta = read_meta(data_dir)
    raw = Path(str(meta.source["raw_dir"]))
    events = pl.read_parquet(raw / "events" / "*.parquet")
    samples = pl.read_parquet(raw / "samples" / "*.parquet")
    test = samples.filter(pl.col(C.TS) >= int(meta.split["t_test"]))
    vocab = predictor.bundle.vocabs
    code = {f: dict(zip(vocab[f]["value"], vocab[f]["index"], strict=True)) for f in C.ID_FIELDS}
    users = dict(pl.read_parquet(data_dir / C.USERS_FILE).select(C.USER, C.USER_IDX).iter_rows())
    expected = {
        (r[C.USER_IDX], r[C.TS], r[C.ITEM], r[C.COUPON]): r
        for r in want.unique([C.USER_IDX, C.TS, C.ITEM, C.COUPON], keep="none").to_dicts()
    }
    checked = 0
    for (user, ts), rows in list(test.group_by([C.USER, C.TS], maintain_order=True))[:25]:
        before = events.filter((pl.col(C.USER) == user) & (pl.col(C.TS) < ts)).tail(MAX_EVENTS)
        body = {
            C.USER: user,
            C.TS: ts,
            "events": [
                {f: v for f, v in e.items() if v is not None and f != C.USER}
                for e in before.to_dicts()
            ],
            "candidates": [
                {f: r[f] for f in (C.GROUP, *C.ID_FIELDS) if r[f] is not None}
                for r in rows.to_dicts()
            ],
        }
        r = client.post("/score", json=body)
        assert r.status_code == 200, r.text
        for cand, scores in zip(body["candidates"], r.json()["scores"], strict=True):
            key = (
                users[user],
                ts,
                code[C.ITEM].get(cand.get(C.ITEM), C.OOV_INDEX) if C.ITEM in cand else 0,
                code[C.COUPON].get(cand.get(C.COUPON), C.OOV_INDEX) if C.COUPON in cand else 0,
            )
            if key not in expected:
                continue  # (a duplicate sample: cannot be told apart)
            task = "coupon" if cand[C.GROUP] == "coupon" else "click"
            logit = expected[key][f"logit_{task}"]
            assert abs(scores[task] - 1 / (1 + math.exp(-logit))) < 1e-5, (key, task)
            checked += 1
    assert checked >= 20


def test_info_names_tasks_model_and_fingerprint(client: Client, predictor: Predictor) -> None:
    assert client.get("/health").text == "ok"
    info = client.get("/info").json()
    assert set(info["tasks"]) == set(TASKS) and info["tasks"]["coupon"]["target"] == "coupon"
    assert info["fingerprint"] == predictor.bundle.fingerprint
    assert info["model"]["d_model"] == predictor.bundle.config.d_model
    assert info["server"]["max_events"] == MAX_EVENTS


def _bad_cases(good: dict[str, Any]) -> list[tuple[bytes, int, str]]:
    """Hand-made bad bodies: ``(body, status, what the message starts with)``."""

    def with_(**kw: Any) -> bytes:
        return json.dumps({**good, **kw}).encode()

    def without(key: str) -> bytes:
        return json.dumps({k: v for k, v in good.items() if k != key}).encode()

    ev, cand = good["events"][0], good["candidates"][0]
    return [
        (b"", 400, "body:"),
        (b"{", 400, "body:"),
        (b'{"user_id": "1", ', 400, "body:"),
        (b"\xff\xfe\x00garbage", 400, "body:"),
        (b"[" * 50_000, 400, "body:"),
        (b"[]", 422, "body:"),
        (b'"score me"', 422, "body:"),
        (without(C.USER), 422, "user_id: missing"),
        (without(C.TS), 422, "ts: missing"),
        (without("events"), 422, "events: missing"),
        (without("candidates"), 422, "candidates: missing"),
        (with_(user_id=7), 422, "user_id: expected a string"),
        (with_(user_id=None), 422, "user_id: expected a string"),
        (with_(ts="1700000000"), 422, "ts: expected an integer"),
        (with_(ts=1.5), 422, "ts: expected an integer"),
        (with_(ts=True), 422, "ts: expected an integer"),
        (with_(ts=float("nan")), 422, "ts: expected an integer, got nan"),
        (with_(ts=float("inf")), 422, "ts: expected an integer"),
        (with_(ts=-1), 422, "ts: must be >= 0"),
        (with_(ts=10**30), 422, "ts: must be <="),
        (with_(colour="red"), 422, "colour: unknown field"),
        (with_(events={}), 422, "events: expected a list"),
        (with_(events=[{**ev, "ts": float("nan")}]), 422, "events[0].ts: expected an integer"),
        (with_(events=[{**ev, "ts": -5}]), 422, "events[0].ts: must be >= 0"),
        (with_(events=[{**ev, "group": "planet"}]), 422, "events[0].group: expected"),
        (with_(events=[{"ts": 5, "action": "click"}]), 422, "events[0].item_id: required"),
        (with_(events=[{**ev, "action": None}]), 422, "events[0].action: expected a string"),
        (with_(events=[ev, 3]), 422, "events[1]: expected an object"),
        (with_(candidates=[]), 422, "candidates: must not be empty"),
        (with_(candidates=[cand, {C.ITEM: 7}]), 422, "candidates[1].item_id: expected a string"),
        (with_(candidates=[cand, {C.GROUP: "coupon"}]), 422, "candidates[1].coupon_id: required"),
        (
            with_(candidates=[{C.ITEM: "1", C.COUPON: "2"}]),
            422,
            "candidates[0].coupon_id: not a field of group item",
        ),
        (with_(candidates=[{**cand, "price": 3}]), 422, "candidates[0].price: unknown field"),
        (with_(tasks=["click", "clik"]), 422, "tasks[1]: unknown task 'clik'"),
        (with_(tasks="click"), 422, "tasks: expected a list"),
        (with_(tasks=[]), 422, "tasks: must not be empty"),
        (with_(events=[ev] * (MAX_EVENTS + 1)), 413, "events:"),
        (with_(candidates=[cand] * (MAX_CANDIDATES + 1)), 413, "candidates:"),
        (with_(user_id="u" * 400_000), 413, "body:"),
    ]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_keys = st.sampled_from(
    [C.USER, C.TS, "events", "candidates", "tasks", C.GROUP, C.ITEM, C.COUPON, "action", "x"]
)


def _mutate(body: Any, path: list[int], key: str, value: Any) -> Any:
    """``body`` with the value at ``path`` (indices taken modulo the sizes) replaced, or, where
    the path ends at an object, its ``key`` set."""
    if not path:
        return {**body, key: value} if isinstance(body, dict) else value
    if isinstance(body, dict) and body:
        k = sorted(body)[path[0] % len(body)]
        return {**body, k: _mutate(body[k], path[1:], key, value)}
    if isinstance(body, list) and body:
        i = path[0] % len(body)
        return [*body[:i], _mutate(body[i], path[1:], key, value), *body[i + 1 :]]
    return value


def test_a_thousand_bad_bodies_get_4xx_and_the_server_lives_on(
    client: Client, cases: list[tuple[dict[str, Any], Any]]
) -> None:
    good, want = cases[0]
    small = {**good, "events": good["events"][-3:], "candidates": good["candidates"][:3]}
    seen = {"4xx": 0, "200": 0}

    def post(content: bytes) -> requests.Response:
        r = client.post("/score", content=content)
        assert r.status_code < 500, (r.status_code, r.text, content[:300])
        assert r.status_code in (200, 400, 413, 422), (r.status_code, r.text)
        seen["4xx" if r.status_code >= 400 else "200"] += 1
        return r

    for content, status, where in _bad_cases(small):
        r = post(content)
        assert r.status_code == status, (content[:200], r.text)
        assert r.json()["detail"].startswith(where), (where, r.json()["detail"])

    explore = settings(
        max_examples=400,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )

    @explore
    @given(value=_json)
    def random_json(value: Any) -> None:
        r = post(json.dumps(value).encode())
        assert r.status_code in (400, 422), r.text  # never a full body, never too large

    @explore
    @given(raw=st.binary(max_size=64))
    def random_bytes(raw: bytes) -> None:
        assert post(raw).status_code in (400, 422)

    @settings(explore, max_examples=500)
    @given(path=st.lists(st.integers(0, 50), max_size=4), key=_keys, value=_json)
    def mutated(path: list[int], key: str, value: Any) -> None:
        r = post(json.dumps(_mutate(small, path, key, value)).encode())
        if r.status_code == 200:  # a change the schema allows: answered in full
            assert len(r.json()["scores"]) == len(r.json()["reason"])
        else:
            assert ":" in r.json()["detail"]

    random_json()
    random_bytes()
    mutated()
    assert seen["4xx"] >= 1000, seen
    r = client.post("/score", json=good)  # still alive, still right
    assert r.status_code == 200, r.text
    _check(r.json(), want)


def test_concurrent_clients_get_their_own_answers(
    server: str, cases: list[tuple[dict[str, Any], Any]]
) -> None:
    """8 clients x 20 requests, batched together; users repeat with other histories."""

    def client_run(k: int) -> list[int]:
        batches = []
        with Client(server) as c:
            for i in range(20):
                body, want = cases[(k * 5 + i) % len(cases)]
                r = c.post("/score", json=body)
                assert r.status_code == 200, r.text
                _check(r.json(), want)
                batches.append(r.json()["stats"]["batch"])
        return batches

    with ThreadPoolExecutor(8) as pool:
        batches = [b for run in pool.map(client_run, range(8)) for b in run]
    assert len(batches) == 160
    assert max(batches) > 1, "no two requests were ever scored in one call"


def test_one_call_keeps_two_histories_of_one_user_apart(
    trained: dict[str, Path], cases: list[tuple[dict[str, Any], Any]]
) -> None:
    """Requests of one user with different events, batched: each scored on its own events."""
    from atrank.serve.server import ScoreAPI, ScoreRequest

    api = ScoreAPI(
        trained["bundle"], TASKS, max_batch_size=8, batch_timeout=0, threads=1, workers=1
    )
    api.setup("cpu")
    chosen = [cases[0], cases[1], cases[2], cases[0]]  # cases 0 and 1: one user, two histories
    assert cases[0][0][C.USER] == cases[1][0][C.USER]
    answers = api.predict([ScoreRequest.model_validate(body) for body, _ in chosen])
    assert isinstance(answers, list) and len(answers) == len(chosen)
    for answer, (body, want) in zip(answers, chosen, strict=True):
        _check(answer, want)
        assert answer["stats"]["events"] == len(body["events"])
    # rounds of distinct users: [c0, c2], [c1], [c0]
    assert [a["stats"]["batch"] for a in answers] == [2, 1, 2, 1]
