"""The model card of a registered version (its description on the registry page): what it is, how it was chosen,
how it scores against held-out data and the baselines, and how to use it."""

from __future__ import annotations


def describe(lineage: dict, run_id: str) -> str:
    sweep, trial = lineage.get("sweep"), lineage.get("trial_number")
    where = f"sweep {sweep}, trial {trial}" if sweep is not None else "a sweep trial"
    return f"PEFT adapter from {where} (run {run_id}), an MLflow pyfunc model."


def _figures(prefix: str, lineage: dict) -> str:
    return ", ".join(f"{k[len(prefix):]} {v}" for k, v in sorted(lineage.items()) if k.startswith(prefix)
                     and k[len(prefix):] in _CARD_METRICS)


_CARD_METRICS = ("accuracy", "macro_f1", "loss", "perplexity", "routing_accuracy", "peak_memory_mb",
                 "trainable_params", "validation.accuracy", "validation.macro_f1", "test.accuracy", "test.macro_f1")


def model_card(name: str, version: str, lineage: dict, run_id: str, test_metrics: dict, datasets: list[dict]) -> str:
    """The version's description (Markdown, shown on its registry page): task, base, data digests, figures,
    baselines, lineage and how to use it. Validation figures chose the trial; test figures are held out."""
    sha = str(lineage.get("base_model_sha256", ""))
    lines = [f"**{lineage.get('task', 'PEFT')} adapter** on `{lineage.get('base_model', '?')}`"
             + (f" (sha256 `{sha[:12]}`)" if len(sha) == 64 else ""),
             "", f"- lineage: {describe(lineage, run_id)}"
             + (f" Chosen by policy `{lineage['policy']}`." if lineage.get("policy") else "")]
    if lineage.get("peft"):
        lines.append(f"- adapter: `{lineage['peft']}`, quantization `{lineage.get('quantization', '?')}`")
    if datasets:
        lines.append("- data: " + "; ".join(f"{d['name']} {d['rows']} rows, digest `{d['digest']}`"
                                            for d in datasets))
    lines.append(f"- validation (selection): {_figures('val.', lineage) or 'not recorded'}")
    held = ", ".join(f"{k} {v:.4g}" for k, v in sorted(test_metrics.items()) if k in _CARD_METRICS)
    lines.append(f"- test (held out, evaluated once): {held or 'not evaluated'}")
    baselines = sorted({k.split(".")[1] for k in lineage if k.startswith("baseline.")})
    for b in baselines:
        lines.append(f"- baseline {b}: {_figures(f'baseline.{b}.', lineage)}")
    if lineage.get("versus_baselines"):
        lines.append(f"- versus baselines: {lineage['versus_baselines']}")
    lines += ["", f"Use: `mlflow.pyfunc.load_model(\"models:/{name}/{version}\").predict(pd.DataFrame("
              '{"text": [...]}))`, ' f"`mlflow models serve -m models:/{name}/{version} --env-manager local`, "
              f"`sweep serve --adapter {name}/{version}`, `sweep export {name}/{version}`."]
    return "\n".join(lines)[:5000]  # MLflow's description limit
