"""`sweep serve`: one tiny base, several adapters, mixed-adapter batches over real HTTP on 127.0.0.1.

Adapters are LoRA adapters with random B factors (and random heads), so two adapters really disagree and a
request routed to the wrong one would be caught.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest
import torch
from _tiny import random_lora, tiny_bert, tiny_llama

from sweeps.driver.promotion import register
from sweeps.production.serving.engine import Engine, Limits
from sweeps.production.serving.http_app import Background
from sweeps.production.sources import SourceError
from sweeps.spec.params import TrialParams
from sweeps.trial.adapters import disk
from sweeps.trial.models import pretrained

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["great relief and i love it", "awful pain and nausea", "okay i guess, mixed feelings",
         "the drug took weeks", "terrible", "excellent doctor said better", "average", "worse and worse"]


def _cls_adapter(base: Path, out: Path, seed: int) -> Path:
    model = pretrained.load_base(base, "classification", 3, TrialParams(), "cpu")
    peft = random_lora(model, "classification", target=("query", "value"), seed=seed, heads=("classifier",))
    path = disk.save_adapter(peft, out)
    (path / "labels.json").write_text(json.dumps(LABELS))
    return path


@pytest.fixture()
def closing():
    """`engine = closing(Engine(...))`: closed at teardown however the test ends (the servers on it stop with
    `with Background(...)`, which stops its thread on any exit, a failed start included)."""
    made = []
    yield lambda engine: made.append(engine) or engine
    for engine in made:
        engine.close()


@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    base = tiny_bert(root / "base")
    return base, {name: _cls_adapter(base, root / name, seed) for seed, name in enumerate(["reviews", "legal"], 1)}


def offline_scores(base: Path, adapter: Path, texts: list[str]) -> list[list[float]]:
    """What the adapter predicts on its own, loaded the way a trial evaluates it (no server, no batching)."""
    model = disk.load_adapter(pretrained.load_base(base, "classification", 3, TrialParams(), "cpu"), adapter)
    tok = pretrained.load_tokenizer(base)
    with torch.inference_mode():
        out = []
        for text in texts:  # one at a time: no padding at all
            enc = tok([text], truncation=True, max_length=256, return_tensors="pt")
            out.append(torch.softmax(model(**enc).logits, -1)[0].tolist())
    return out


def test_interleaved_requests_match_each_adapters_offline_prediction(cls, closing):
    base, paths = cls
    expected = {name: offline_scores(base, path, TEXTS) for name, path in paths.items()}
    flat = {name: [x for row in rows for x in row] for name, rows in expected.items()}
    assert flat["reviews"] != pytest.approx(flat["legal"], abs=1e-3)  # the adapters really differ
    engine = closing(Engine([(name, str(path)) for name, path in paths.items()], limits=Limits(max_wait_ms=30)))
    results: dict[tuple[str, int], dict] = {}
    with Background(engine) as url, httpx.Client(base_url=url, timeout=30) as client:
        health = client.get("/health").json()
        assert health["task"] == "classification" and health["adapters"] == ["legal", "reviews"]

        def send(name: str, i: int) -> None:
            results[(name, i)] = client.post("/predict", json={"adapter": name, "text": TEXTS[i]}).json()

        threads = [threading.Thread(target=send, args=(name, i)) for i in range(len(TEXTS))
                   for name in ("reviews", "legal")]  # interleaved: reviews, legal, reviews, legal, ...
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        many = client.post("/predict", json={"adapter": "legal", "texts": TEXTS[:3]}).json()["results"]
    engine.close()
    for (name, i), got in results.items():
        want = expected[name][i]
        assert got["adapter"] == name and got["label"] == LABELS[max(range(3), key=want.__getitem__)]
        assert [got["scores"][label] for label in LABELS] == pytest.approx(want, abs=1e-5)
    assert len(results) == 2 * len(TEXTS)
    for got, want in zip(many, expected["legal"][:3], strict=True):  # a multi-text request, same answers
        assert [got["scores"][lb] for lb in LABELS] == pytest.approx(want, abs=1e-5)
    assert engine.stats["mixed_batches"] >= 1, engine.stats  # requests for both adapters shared a forward pass


def test_bad_requests_get_4xx_and_the_next_good_one_succeeds(cls, closing):
    base, paths = cls
    engine = closing(Engine([("reviews", str(paths["reviews"]))], limits=Limits(max_chars=200, max_items=4)))
    good = {"adapter": "reviews", "text": "great relief"}
    bad = [
        ({"adapter": "nope", "text": "x"}, 404, "unknown adapter 'nope'"),
        ({"adapter": "reviews", "text": "x" * 201}, 413, "201 characters"),
        ({"adapter": "reviews", "texts": ["a"] * 5}, 413, "1 to 4 texts"),
        ({"adapter": "reviews"}, 422, "exactly one of"),
        ({"adapter": "reviews", "text": 5}, 422, None),
        ({"adapter": "reviews", "txt": "typo"}, 422, None),
    ]
    with Background(engine) as url, httpx.Client(base_url=url, timeout=30) as client:
        for body, status, message in bad:
            response = client.post("/predict", json=body)
            assert response.status_code == status, (body, response.text)
            assert message is None or message in response.json()["detail"]
            assert client.post("/predict", json=good).status_code == 200
        wrong_task = client.post("/generate", json={"adapter": "reviews", "prompt": "hi"})
        assert wrong_task.status_code == 400 and "use /predict" in wrong_task.json()["detail"]
        garbage = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
        assert garbage.status_code == 422
        huge = client.post("/predict", content=b"x" * (2 << 20), headers={"content-type": "application/json"})
        assert huge.status_code == 413
        assert client.post("/adapters/nope/reload").status_code == 404
        assert client.post("/predict", json=good).json()["label"] in LABELS
        assert client.get("/adapters").json()["adapters"][0]["name"] == "reviews"
    engine.close()


def test_adapter_trained_on_another_base_is_refused(cls, tmp_path):
    base, paths = cls
    other = tiny_bert(tmp_path / "other")
    (other / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    stranger = _cls_adapter(other, tmp_path / "stranger", 7)
    with pytest.raises(SourceError, match="refusing it"):
        Engine([("reviews", str(paths["reviews"])), ("stranger", str(stranger))])
    (stranger / "extra.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pickle"):
        Engine([("stranger", str(stranger))], base=str(other))


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEPS_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from sweeps.tracking.tracker import Tracker

    return Tracker()


def _register(tracker, base: Path, adapter: Path, number: int) -> str:
    parent = tracker.start_sweep("reviews-sweep", "name: reviews-sweep\n")
    run_id = tracker.start_trial("reviews-sweep", parent, number, {"rank": 4})
    tracker.finish_trial(run_id, "COMPLETE", {"macro_f1": 0.5}, adapter_dir=adapter)
    lineage = {"task": "classification", "base_model": str(base), "base_model_sha256": pretrained.content_hash(base)}
    return register.promote(tracker, "reviews", run_id, ["champion"], lineage)[0]


def test_reload_and_alias_polling_swap_the_adapter_without_restart(cls, store, tmp_path, closing):
    base, paths = cls
    first, second = (offline_scores(base, paths[n], TEXTS[:1])[0] for n in ("reviews", "legal"))
    assert _register(store, base, paths["reviews"], 0) == "1"
    engine = closing(Engine([(None, "models:/reviews@champion")], tracker=store))
    with Background(engine) as url, httpx.Client(base_url=url, timeout=60) as client:
        def score() -> tuple[str, list[float]]:
            got = client.post("/predict", json={"adapter": "reviews", "text": TEXTS[0]}).json()
            return got["version"], [got["scores"][lb] for lb in LABELS]

        assert score() == ("1", pytest.approx(first, abs=1e-5))
        assert client.post("/adapters/reviews/reload").json()["changed"] is False
        assert _register(store, base, paths["legal"], 1) == "2"  # champion moves to version 2
        moved = client.post("/adapters/reviews/reload").json()
        assert (moved["changed"], moved["version"], moved["previous"]) == (True, "2", "1")
        assert score() == ("2", pytest.approx(second, abs=1e-5))
        store.set_alias("reviews", "champion", "1")  # moves back: the poller picks it up by itself
        engine.poll(0.1)
        for _ in range(100):
            if engine.slots["reviews"].found.version == "1":
                break
            threading.Event().wait(0.1)
        assert score() == ("1", pytest.approx(first, abs=1e-5))
        assert len(engine.model.peft_config) == 1  # old versions are unloaded, not piling up
    engine.close()


def _causal_adapter(base: Path, out: Path, seed: int, chat: dict | None = None) -> Path:
    model = pretrained.load_base(base, "instruction", None, TrialParams(), "cpu")
    path = disk.save_adapter(random_lora(model, "instruction", seed=seed, scale=0.5), out)
    if chat:
        (path / "chat.json").write_text(json.dumps(chat))
    return path


def test_generate_mixed_batch_equals_each_adapters_greedy_output(tmp_path, closing):
    base = tiny_llama(tmp_path / "llama")
    paths = {"helpdesk": _causal_adapter(base, tmp_path / "helpdesk", 1, {"system_prompt": "be brief",
                                                                          "max_new_tokens": 6}),
             "legal": _causal_adapter(base, tmp_path / "legal", 2)}
    prompts = ["reset my password", "the printer is jammed", "open a ticket"]
    engine = closing(Engine([(n, str(p)) for n, p in paths.items()], limits=Limits(max_wait_ms=50)))
    expected = {}
    for name, path in paths.items():  # offline: each adapter alone, one prompt at a time, no padding
        model = disk.load_adapter(pretrained.load_base(base, "instruction", None, TrialParams(), "cpu"), path)
        for p in prompts:
            ids = torch.tensor([engine.render(p, "be brief" if name == "helpdesk" else None)])
            out = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
            expected[(name, p)] = out[0, ids.shape[1]:].tolist()
    futures = {(n, p): engine.submit_generate(n, p, max_new_tokens=None if n == "helpdesk" else 6)
               for p in prompts for n in paths}
    got = {key: f.result(timeout=60) for key, f in futures.items()}
    with Background(engine) as url:
        http = httpx.post(f"{url}/generate", json={"adapter": "legal", "prompt": prompts[0], "max_new_tokens": 6},
                          timeout=30).json()
        assert httpx.post(f"{url}/predict", json={"adapter": "legal", "text": "x"}).status_code == 400
    engine.close()
    stops = {2}  # <|im_end|>: generation is cut at the end-of-turn token
    for key, want in expected.items():
        cut = next((i for i, t in enumerate(want) if t in stops), len(want))
        assert got[key]["tokens"] == want[:cut], key
    assert http["tokens"] == got[("legal", prompts[0])]["tokens"]
    assert engine.stats["mixed_batches"] >= 1
    assert expected[("helpdesk", prompts[0])] != expected[("legal", prompts[0])]


def test_grouped_mixed_batches_equal_pefts_own_mixed_forward(cls):
    from sweeps.trial.adapters import disk, multi

    base, paths = cls
    ids = torch.tensor([[2, 4, 1, 3, 0], [2, 1, 1, 3, 0], [2, 1, 4, 1, 3], [2, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    model = disk.load_adapter(pretrained.load_base(base, "classification", 3, TrialParams(), "cpu"), paths["reviews"],
                                  "a")
    disk.add_adapter(model, paths["legal"], "b")
    model.eval()
    grouped, interleaved = ["a", "a", "b", "b"], ["a", "b", "a", "b"]
    with torch.inference_mode():
        want = {tuple(n): model(input_ids=ids, attention_mask=mask, adapter_names=n).logits
                for n in (grouped, interleaved)}
        assert multi.grouped_mixed_batches(model) == 4  # query + value in 2 layers
        assert multi.grouped_mixed_batches(model) == 0  # idempotent
        for names in (grouped, interleaved):  # grouped takes the slice path, interleaved PEFT's own
            got = model(input_ids=ids, attention_mask=mask, adapter_names=names).logits
            assert (got - want[tuple(names)]).abs().max().item() < 1e-6
        assert (want[tuple(grouped)][0] - want[tuple(interleaved)][0]).abs().max() < 1e-6  # row 0 is "a" in both
        assert (want[tuple(grouped)][1] - want[tuple(interleaved)][1]).abs().max() > 1e-4  # row 1: a vs b
