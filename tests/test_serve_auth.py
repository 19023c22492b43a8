"""`sweep serve` hardening (issue 17): bearer-token auth, body limits that hold for chunked bodies, and adapters
whose base cannot be verified refused by serve, export and fuse unless --allow-unverified-base.

The auth and body-limit tests run the real app (FastAPI + the two ASGI middlewares) on a stand-in engine, so they
take milliseconds; one test checks the same over real HTTP (uvicorn) with a real engine.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import Future
from pathlib import Path

import httpx
import pytest
from _tiny import random_lora, tiny_bert, tiny_llama
from typer.testing import CliRunner

from sweeps.cli import app as cli
from sweeps.driver.promotion import register
from sweeps.production import fusion as fusing
from sweeps.production import sources
from sweeps.production.export import merge
from sweeps.production.serving.engine import Engine
from sweeps.production.serving.http_app import (
    MAX_BODY_BYTES,
    TOKEN_ENV,
    Background,
    create_app,
    is_loopback,
    load_token,
)
from sweeps.production.sources import UnverifiedBase
from sweeps.spec.params import TrialParams
from sweeps.trial.adapters import disk
from sweeps.trial.models import pretrained

TOKEN = "s3cret-token-of-the-team"


class StubEngine:
    """What the routes read from an Engine, answering every text with its length: no model needed."""

    task, base_spec, base_sha256, slots, stats = "classification", "tiny", "0" * 64, {"reviews": None}, {}

    def describe(self) -> list[dict]:
        return [{"name": "reviews"}]

    def submit_predict(self, name: str, texts: list[str]) -> list[Future]:
        futures = []
        for text in texts:
            futures.append(f := Future())
            f.set_result({"adapter": name, "label": str(len(text))})
        return futures


def _call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_token_required_on_every_endpoint_but_health():
    app = create_app(StubEngine(), token=TOKEN)
    body = {"adapter": "reviews", "text": "great"}
    assert _call(app, "GET", "/health").status_code == 200  # probes need no token
    for method, path, kwargs in [("POST", "/predict", {"json": body}), ("GET", "/adapters", {}),
                                 ("POST", "/adapters/reviews/reload", {}), ("GET", "/openapi.json", {})]:
        missing = _call(app, method, path, **kwargs)
        assert missing.status_code == 401, (path, missing.text)
        assert missing.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in missing.json()["detail"]
        for header in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN, "Bearer "):
            wrong = _call(app, method, path, headers={"Authorization": header}, **kwargs)
            assert wrong.status_code == 401, (path, header)
            assert wrong.headers["www-authenticate"].startswith("Bearer")
    ok = _call(app, "POST", "/predict", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["label"] == "5"
    assert _call(app, "POST", "/predict", json=body, headers={"authorization": f"bearer {TOKEN}"}).status_code == 200
    assert _call(create_app(StubEngine()), "POST", "/predict", json=body).status_code == 200  # no token: open


def test_token_comes_from_the_environment_or_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert load_token() is None
    monkeypatch.setenv(TOKEN_ENV, f" {TOKEN}\n")
    assert load_token() == TOKEN
    (tmp_path / "token").write_text("from-the-file\n")
    assert load_token(tmp_path / "token") == "from-the-file"  # the file wins over the environment
    (tmp_path / "empty").write_text("\n")
    for bad in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(ValueError, match="token-file"):
            load_token(bad)
    assert [h for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost") if not is_loopback(h)] == []
    assert [h for h in ("0.0.0.0", "::", "10.1.2.3", "example.org", "") if is_loopback(h)] == []


def test_cli_refuses_a_non_loopback_bind_without_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    (tmp_path / "not-an-adapter").mkdir()  # a directory: refused by sources.read_dir, no store is opened
    missing = str(tmp_path / "not-an-adapter")
    for host in ("0.0.0.0", "::", "192.168.1.5"):
        result = CliRunner().invoke(cli, ["serve", "--adapter", missing, "--host", host])
        text = " ".join(result.output.split())  # rich wraps lines at the terminal width
        assert result.exit_code == 2, result.output
        assert f"--host {host} is reachable from other machines" in text and TOKEN_ENV in text
    # with a token (file or environment) it goes on, and fails later for the reason that is really there
    (tmp_path / "token").write_text(TOKEN)
    for args, env in ((["--token-file", str(tmp_path / "token")], {}), ([], {TOKEN_ENV: TOKEN})):
        result = CliRunner().invoke(cli, ["serve", "--adapter", missing, "--host", "0.0.0.0", *args], env=env)
        assert result.exit_code == 2 and "is not a PEFT adapter" in " ".join(result.output.split()), result.output
    with pytest.raises(ValueError, match="reachable from other machines"):
        Background(StubEngine(), host="0.0.0.0")


def _chunks(sent: list[int], total: int, size: int = 64 << 10):
    async def gen():
        while sum(sent) < total:
            sent.append(size)
            yield b" " * size  # JSON whitespace: were it all read, the parser would get that far

    return gen()


def test_chunked_body_over_the_limit_is_refused_before_it_is_read():
    app = create_app(StubEngine(), max_body_bytes=MAX_BODY_BYTES)
    sent: list[int] = []
    response = _call(app, "POST", "/predict", content=_chunks(sent, 8 * MAX_BODY_BYTES),
                     headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert "over 1048576 bytes" in response.json()["detail"]
    assert MAX_BODY_BYTES < sum(sent) <= MAX_BODY_BYTES + (64 << 10)  # stopped at the first chunk past the limit
    # a chunked body under the limit reaches the handler whole
    small = json.dumps({"adapter": "reviews", "text": "x" * 1000}).encode()

    async def pieces():
        for i in range(0, len(small), 100):
            yield small[i:i + 100]

    ok = _call(app, "POST", "/predict", content=pieces(), headers={"content-type": "application/json"})
    assert ok.status_code == 200 and ok.json()["label"] == "1000"
    declared = _call(app, "POST", "/predict", content=b"{}", headers={"content-length": str(2 << 20)})
    assert declared.status_code == 413
    # with a token, an unauthenticated body is not read at all
    sent.clear()
    locked = _call(create_app(StubEngine(), token=TOKEN), "POST", "/predict", content=_chunks(sent, 1 << 20))
    assert locked.status_code == 401 and sum(sent) <= 64 << 10


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    base = tiny_bert(root / "base")
    model = pretrained.load_base(base, "classification", 3, TrialParams(), "cpu")
    path = disk.save_adapter(random_lora(model, "classification", target=("query", "value"),
                                             heads=("classifier",)), root / "reviews")
    (path / "labels.json").write_text(json.dumps(["neg", "neu", "pos"]))
    return base, path


def test_over_real_http_chunked_413_and_token(bert):
    base, path = bert
    engine = Engine([("reviews", str(path))])
    try:
        with Background(engine, token=TOKEN) as url, httpx.Client(base_url=url, timeout=30) as client:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            assert client.get("/health").status_code == 200
            assert client.post("/predict", json={"adapter": "reviews", "text": "ok"}).status_code == 401

            def body():
                for _ in range(64):  # 4 MiB in 64 KiB chunks, no Content-Length
                    yield b" " * (64 << 10)

            huge = client.post("/predict", content=body(), headers={"content-type": "application/json", **auth})
            assert huge.status_code == 413, huge.text
            good = client.post("/predict", json={"adapter": "reviews", "text": "great relief"}, headers=auth)
            assert good.status_code == 200 and good.json()["label"] in ("neg", "neu", "pos")
    finally:
        engine.close()


# ---------------------------------------------------------------- bases that cannot be verified


def _unverifiable(src: Path, dst: Path, base: Path) -> Path:
    """A copy of an adapter whose base.json records no hash, as a promotion that could not hash its base does."""
    import shutil

    shutil.copytree(src, dst)
    sources.write_base_file(dst, str(base), "unavailable (OSError)")
    return dst


def test_unverified_base_is_refused_by_serve_and_export_unless_allowed(bert, tmp_path):
    base, path = bert
    adapter = _unverifiable(path, tmp_path / "unverified", base)
    with pytest.raises(UnverifiedBase, match=f"adapter {adapter} cannot be checked against the base {base}"):
        Engine([("reviews", str(adapter))])
    engine = Engine([("reviews", str(adapter))], allow_unverified_base=True)
    engine.close()
    assert "used anyway" in engine.warnings[0] and engine.describe()[0]["base_verified"] is False
    out = tmp_path / "merged"
    refused = CliRunner().invoke(cli, ["export", str(adapter), "--merge", "--out", str(out)])
    assert refused.exit_code == 2 and "Pass --allow-unverified-base" in " ".join(refused.output.split()), \
        refused.output
    assert not out.exists()
    allowed = CliRunner().invoke(cli, ["export", str(adapter), "--merge", "--out", str(out),
                                       "--allow-unverified-base"])
    assert allowed.exit_code == 0, allowed.output
    assert json.loads((out / merge.EXPORT_FILE).read_text())["base_verified"] is False


def test_unverified_base_is_refused_by_fuse_unless_allowed(tmp_path):
    base = tiny_llama(tmp_path / "llama")
    paths = []
    for seed in (1, 2):
        model = pretrained.load_base(base, "instruction", None, TrialParams(), "cpu")
        paths.append(disk.save_adapter(random_lora(model, "instruction", seed=seed), tmp_path / f"a{seed}"))
    paths[1] = _unverifiable(paths[1], tmp_path / "unverified", base)
    rows = [{"prompt": "reset my password", "response": "Use the reset page."}]
    with pytest.raises(UnverifiedBase, match="unverified"):
        fusing.Fusion([str(p) for p in paths], rows)
    fusion = fusing.Fusion([str(p) for p in paths], rows, allow_unverified_base=True)
    fusion.close()
    assert fusion.base_sha256.startswith("unavailable") and str(paths[1]) in fusion.base_sha256  # stays unverified


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEPS_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from sweeps.tracking.tracker import Tracker

    return Tracker()


def test_registry_version_with_unavailable_base_hash_is_refused(bert, store):
    """The issue's case: promotion stored "unavailable (...)"; the adapter's config still names a base directory
    that exists, which serving used to hash and compare with itself (the check passed on any weights)."""
    base, path = bert
    parent = store.start_sweep("s", "name: s\n")
    run_id = store.start_trial("s", parent, 0, {"rank": 4})
    store.finish_trial(run_id, "COMPLETE", {"macro_f1": 0.5}, adapter_dir=path)
    lineage = {"task": "classification", "base_model": str(base), "base_model_sha256": "unavailable (OSError)"}
    register.promote(store, "reviews", run_id, ["champion"], lineage)
    with pytest.raises(UnverifiedBase, match=r"reviews@champion cannot be checked .* registry version reviews/1 "
                                             r"records base_model_sha256 'unavailable \(OSError\)'"):
        Engine([(None, "reviews@champion")], tracker=store)
    engine = Engine([(None, "reviews@champion")], tracker=store, allow_unverified_base=True)
    engine.close()
    assert engine.slots["reviews"].found.version == "1"
