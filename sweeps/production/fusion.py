"""`sweep fuse`: combine registered adapters into one with PEFT's weighted combinations, searched with Optuna.

    sweep fuse --adapter helpdesk@champion --adapter legal@champion --data mixed_val.jsonl --name helpdesk-legal \
        --methods linear,cat,ties,dare_ties --trials 16 --promote helpdesk-legal

Each candidate (method, one weight per adapter, density for TIES/DARE) is built with `add_weighted_adapter`,
scored by the mean per-token loss of the responses in a validation set that mixes the domains (per-domain losses
are logged too), and recorded as an MLflow trial run with its adapter, exactly like a sweep trial, so the best
one is promoted like any other adapter. The source adapters' own losses on the same data are logged on the
parent run: a fusion is only worth shipping if it beats them on the mix.

Classification adapters are refused: each carries its own trained head (modules_to_save), which PEFT cannot
combine. Validation rows are {prompt, response[, domain]} in a .jsonl or .csv file.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from sweeps import store
from sweeps.production import sources
from sweeps.spec import ModelSpec
from sweeps.spec.params import TrialParams
from sweeps.trial.adapters import config as adapter_config
from sweeps.trial.adapters import disk, multi
from sweeps.trial.models import pretrained

DEFAULT_METHODS = ("linear", "cat", "ties", "dare_ties")
_EQUAL_RANK = {"linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"}  # combine A and B factor-wise


class FusionError(ValueError):
    pass


@dataclass
class Example:
    ids: list[int]
    labels: list[int]  # -100 on the prompt: only the response is scored
    domain: str


def read_rows(path: Path) -> list[dict]:
    path = Path(path)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh, delimiter="\t" if path.suffix == ".tsv" else ","))
    raise FusionError(f"{path}: validation data must be .jsonl, .csv or .tsv")


class Fusion:
    def __init__(self, refs: list[str], rows: list[dict], device: str = "cpu", tracker=None, max_length: int = 512,
                 allow_unverified_base: bool = False):
        self._tmp = tempfile.TemporaryDirectory(prefix="sweeps-fuse-")
        self.found = [sources.locate(r, Path(self._tmp.name), None if sources.is_directory(r) else tracker)
                      for r in refs]
        if len(self.found) < 2:
            raise FusionError("fusion needs at least two adapters")
        if any(f.task != "instruction" for f in self.found):
            raise FusionError("only instruction (causal LM) adapters can be fused: classification adapters each "
                              "carry a trained head that PEFT cannot combine")
        self.base_spec = self.found[0].base
        base_path = pretrained.resolve_base(ModelSpec(base=self.base_spec))
        actual = pretrained.content_hash(base_path)
        checked = [(f, sources.check_unverified(f, self.base_spec, actual, allow_unverified_base))
                   for f in self.found]  # raises on the first unverifiable adapter unless allowed
        self.warnings = [warning for _, warning in checked if warning]
        unverified = [f for f, warning in checked if warning]
        hashes = {f.base_sha256 for f, warning in checked if not warning}
        if len(hashes) > 1 or (hashes and hashes != {actual}):
            raise FusionError(f"the adapters were trained on different base models (the base {self.base_spec} "
                              f"found now has sha256 {actual[:12]}): "
                              + ", ".join(f"{f.ref} -> {str(f.base_sha256)[:12]}" for f in self.found))
        # A fusion of unverified sources stays unverified downstream: its version records why, not a hash.
        self.base_sha256 = actual if not unverified else \
            f"unavailable (fused from adapters with unverified bases: {', '.join(f.ref for f in unverified)})"
        self.tokenizer = pretrained.load_tokenizer(base_path)
        self.device = device
        self.chat = self.found[0].chat
        model = pretrained.load_base(base_path, "instruction", None, TrialParams(), device)
        self.names = [f"src{i}" for i in range(len(self.found))]  # PEFT adapter names: no dots, always unique
        self.model = disk.load_adapter(model, self.found[0].path, self.names[0])
        for name, f in zip(self.names[1:], self.found[1:], strict=True):
            disk.add_adapter(self.model, f.path, name)
        self.model.eval()
        self.examples = [self._encode(r, max_length) for r in rows]
        if not self.examples:
            raise FusionError("the validation data has no rows")
        self.ranks = {adapter_config.config_rank(f.config) for f in self.found}

    def _encode(self, row: dict, max_length: int) -> Example:
        if not row.get("prompt") or not row.get("response"):
            raise FusionError(f"validation rows need `prompt` and `response`; got keys {sorted(row)}")
        prompt = sources.render_prompt(self.tokenizer, row["prompt"], self.chat.get("system_prompt"))
        answer = self.tokenizer(row["response"], add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        ids = (prompt + answer)[:max_length]
        labels = ([-100] * len(prompt) + answer)[:max_length]
        return Example(ids, labels, str(row.get("domain") or "all"))

    def methods(self, wanted: list[str]) -> list[str]:
        """The requested methods that apply: factor-wise ones need equal ranks (cat and *_svd do not)."""
        unknown = [m for m in wanted if m not in multi.COMBINATIONS]
        if unknown:
            raise FusionError(f"unknown methods {unknown}; allowed: {', '.join(multi.COMBINATIONS)}")
        usable = [m for m in wanted if len(self.ranks) == 1 or m not in _EQUAL_RANK]
        if not usable:
            raise FusionError(f"the adapters have ranks {sorted(self.ranks)}: {', '.join(wanted)} need equal "
                              "ranks; use cat or a *_svd method")
        return usable

    @torch.inference_mode()
    def loss(self, adapter: str, examples: list[Example] | None = None, batch_size: int = 8) -> dict[str, float]:
        """Mean per-token loss of the responses, overall and per domain."""
        multi.activate(self.model, adapter)
        examples = self.examples if examples is None else examples
        sums: dict[str, list[float]] = {}
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            width = max(len(e.ids) for e in chunk)
            ids = torch.full((len(chunk), width), self.tokenizer.pad_token_id, dtype=torch.long)
            labels, mask = torch.full_like(ids, -100), torch.zeros_like(ids)
            for row, e in enumerate(chunk):  # right padding: positions past an example are masked and unscored
                ids[row, :len(e.ids)], labels[row, :len(e.labels)] = torch.tensor(e.ids), torch.tensor(e.labels)
                mask[row, :len(e.ids)] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:].to(self.device),
                                                    ignore_index=-100, reduction="none").cpu()
            for row, e in enumerate(chunk):
                acc = sums.setdefault(e.domain, [0.0, 0.0])
                acc[0] += float(nll[row].sum())  # ignored positions contribute 0
                acc[1] += float((labels[row, 1:] != -100).sum())
        total, count = sum(s for s, _ in sums.values()), sum(n for _, n in sums.values())
        out = {"loss": total / max(count, 1), "perplexity": math.exp(min(total / max(count, 1), 50.0))}
        if len(sums) > 1:
            out.update({f"loss.{d}": s / max(n, 1) for d, (s, n) in sorted(sums.items())})
        return out

    def candidate(self, name: str, method: str, weights: list[float], density: float | None, seed: int) -> None:
        torch.manual_seed(seed)  # DARE drops delta entries at random: the same trial rebuilds the same adapter
        multi.combine(self.model, self.names, weights, method, name, density)

    def drop(self, name: str) -> None:
        multi.remove(self.model, name, keep_active=self.names[0])

    def save(self, name: str, out_dir: Path, extra: dict) -> Path:
        path = disk.save_named(self.model, name, out_dir)
        sources.write_base_file(path, self.base_spec, self.base_sha256)
        if self.chat:
            (path / "chat.json").write_text(json.dumps(self.chat, indent=2))
        (path / "fusion.json").write_text(json.dumps(extra, indent=2))
        return path

    def close(self) -> None:
        self._tmp.cleanup()


def search(fusion: Fusion, name: str, methods: list[str], n_trials: int, seed: int, tracker) -> dict:
    """The Optuna search over (method, weights, density); every candidate a tracked, reloadable trial run."""
    from sweeps.driver.study.study import optimize

    store.safe_name(name, "fusion name")
    methods = fusion.methods(methods)
    sources_desc = [{"ref": f.ref, "version": f.version, "run_id": f.run_id} for f in fusion.found]
    spec_text = json.dumps({"kind": "fusion", "sources": sources_desc, "methods": methods, "seed": seed}, indent=2)
    parent = tracker.start_sweep(name, spec_text, f"fusion of {', '.join(f.ref for f in fusion.found)}",
                                 extra_tags={"sweeps.kind": "fusion", "sweeps.task": "instruction",
                                             "sweeps.base_model": fusion.base_spec})
    baselines = {f"source.{f.name}.{k}": v for f, n in zip(fusion.found, fusion.names, strict=True)
                 for k, v in fusion.loss(n).items() if k == "loss"}
    tracker.log_metrics(parent, baselines)
    runs: dict[int, str] = {}

    def objective(s) -> float:
        method = s.categorical("method", methods)
        weights = [s.float(f"w.{f.name}", 0.0, 1.5) for f in fusion.found]
        density = s.float("density", 0.1, 1.0) if method in multi.USES_DENSITY else None
        params = {"method": method, "density": density, **{f"w.{f.name}": w for f, w in zip(fusion.found, weights,
                                                                                               strict=True)}}
        run_id = runs[s.number] = tracker.start_trial(name, parent, s.number, params)
        cand = f"cand{s.number}"
        try:
            fusion.candidate(cand, method, weights, density, seed + s.number)
            metrics = fusion.loss(cand)
            out = fusion.save(cand, store.trial_dir(name, s.number) / "adapter",
                              {"sources": sources_desc, **params})
            tracker.finish_trial(run_id, "COMPLETE", metrics, adapter_dir=out,
                                 extra_tags={"sweeps.base_sha256": fusion.base_sha256})
        except Exception as exc:
            tracker.finish_trial(run_id, "FAILED", reason=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if multi.has_adapter(fusion.model, cand):
                fusion.drop(cand)
        return metrics["loss"]

    number, params, value = optimize(f"fuse-{name}", store.study_storage(), objective, n_trials, seed)
    tracker.finish_sweep(parent, metrics={"best_loss": value})
    best_run = runs.get(number) or next(r.run_id for r in tracker.trial_records(name) if r.trial_number == number)
    return {"name": name, "trial_number": number, "params": params, "loss": value, "run_id": best_run,
            "baselines": baselines, "methods": methods, "sources": sources_desc}


def promote(fusion: Fusion, result: dict, model_name: str, tracker, test_rows: list[dict] | None = None) -> str:
    """Register the best candidate (alias champion) with its lineage; a test set is scored once, here."""
    from sweeps.driver.promotion import register

    test = None
    if test_rows:  # the registered artifact itself (downloaded and verified) is what gets the test score
        with tempfile.TemporaryDirectory() as tmp:
            disk.add_adapter(fusion.model, tracker.download_adapter(result["run_id"], Path(tmp)), "promoted")
            test = fusion.loss("promoted", [fusion._encode(r, 512) for r in test_rows])
            fusion.drop("promoted")
    lineage = {"sweep": result["name"], "trial_number": str(result["trial_number"]), "task": "instruction",
               "base_model": fusion.base_spec, "base_model_sha256": fusion.base_sha256, "policy": "min:loss",
               "fusion": json.dumps({"sources": result["sources"], **result["params"]}),
               "val.loss": f"{result['loss']:.6g}"}
    version, _ = register.promote(tracker, model_name, result["run_id"], ["champion"], lineage, test)
    return version
