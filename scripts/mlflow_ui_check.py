"""Look at a sweep's store the way a person does: `mlflow ui` on 127.0.0.1, opened in headless Chromium.

    python scripts/mlflow_ui_check.py --store mlruns --sweep rank_study --model reviews --screenshots docs/

Starts `mlflow ui` over <store>/mlflow.db, opens the sweep's runs page (trial runs only, sorted by macro-F1, with
the objectives and the searched params as columns), the compare view of the trials (parallel coordinates of
rank, effective alpha, target and quantization against macro-F1) and the registered model's pages, checks what
they render (the best trials' names and metric values, the champion alias and model card), and with
--screenshots saves mlflow_runs.png, mlflow_compare.png, mlflow_registry.png and mlflow_registry_version.png.
Exits non-zero, naming what did not render, when a check fails.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages separated by NUL
bytes on fds 3 and 4), so nothing beyond the standard library and Debian's `chromium` package is needed.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


class Browser:
    """Headless Chromium with one page, commanded over the DevTools pipe."""

    def __init__(self, width: int = 1680, height: int = 1050):
        exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if exe is None:
            raise RuntimeError("no chromium on PATH (Debian: apt-get install chromium)")
        self._profile = tempfile.TemporaryDirectory(prefix="sweeps-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        def _fds():
            # The child must see the pipes as fds 3 (commands in) and 4 (replies out). Move both above 10 first,
            # so the second dup2 cannot overwrite the first pipe when one of them already sits on 3 or 4. dup2
            # makes inheritable copies; with close_fds=False they survive exec (the parent's other fds are
            # non-inheritable, Python's default, and close on exec).
            high_r, high_w = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars", f"--window-size={width},{height}",
             f"--user-data-dir={self._profile.name}", "about:blank"],
            preexec_fn=_fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf, self._id = b"", 0
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=True)

    def send(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 60) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            while b"\0" in self._buf:
                raw, _, self._buf = self._buf.partition(b"\0")
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            if time.time() > deadline:
                raise TimeoutError(f"chromium did not answer {method} in {timeout} s")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk

    def open(self, url: str) -> None:
        """A full page load (via about:blank: a hash-only change would keep the app's in-memory state)."""
        self.send("Page.navigate", {"url": "about:blank"}, session=True)
        time.sleep(0.3)
        self.send("Page.navigate", {"url": url}, session=True)

    def text(self) -> str:
        got = self.send("Runtime.evaluate", {"expression": "document.body ? document.body.innerText : ''",
                                             "returnByValue": True}, session=True)
        return got["result"].get("value") or ""

    def wait_for(self, needles: list[str], timeout: float = 60) -> str:
        """Poll the rendered text until every needle shows; return it (raise, naming the missing ones)."""
        deadline, text = time.time() + timeout, ""
        while time.time() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                time.sleep(1.0)  # let charts finish drawing before a screenshot
                return self.text()
            time.sleep(0.5)
        missing = [n for n in needles if n not in text]
        raise AssertionError(f"not rendered after {timeout} s: {missing}\n--- page text ---\n{text[:3000]}")

    def click_text(self, label: str) -> bool:
        js = ("(() => { const el = [...document.querySelectorAll('button, [role=tab], [role=menuitem], a, span')]"
              f".find(e => e.innerText && e.innerText.trim() === {json.dumps(label)}); "
              "if (el) { el.click(); return true; } return false; })()")
        return bool(self.send("Runtime.evaluate", {"expression": js, "returnByValue": True},
                              session=True)["result"].get("value"))

    def evaluate(self, js: str):
        return self.send("Runtime.evaluate", {"expression": js, "returnByValue": True},
                         session=True)["result"].get("value")

    def click_at(self, css: str, text: str | None = None, index: int = 0) -> bool:
        """A real mouse click (pressed, released) on the centre of the index-th element matching css (and whose
        text is `text`): component libraries listen to mousedown, which element.click() does not send."""
        js = (f"(() => {{ const els = [...document.querySelectorAll({json.dumps(css)})]"
              f".filter(e => {json.dumps(text)} === null || (e.innerText || '').trim() === {json.dumps(text)});"
              f" const el = els[{index}]; if (!el) return null; el.scrollIntoView({{block: 'center'}});"
              " const r = el.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        at = self.evaluate(js)
        if not at:
            return False
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": at[0], "y": at[1], "button": "left",
                                                   "clickCount": 1}, session=True)
        time.sleep(0.3)
        return True

    def choose(self, select_index: int, names: list[str]) -> list[str]:
        """Pick `names` in the select_index-th (multi-)select of the page by typing each and clicking its option;
        return the names that had no option."""
        missing = []
        for name in names:
            self.click_at("[class*=select-selector]", None, select_index)
            self.send("Input.insertText", {"text": name}, session=True)
            time.sleep(0.5)
            if not self.click_at("[class*=select-item-option-content]", name):
                missing.append(name)
            self.send("Input.dispatchKeyEvent", {"type": "keyDown", "key": "Escape", "code": "Escape",
                                                 "windowsVirtualKeyCode": 27}, session=True)
            time.sleep(0.3)
        return missing

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # already gone: the group kill below is what matters
            pass
        _stop(self.proc)
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        self._profile.cleanup()


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(store: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([str(VENV_BIN / "mlflow"), "ui", "--backend-store-uri",
                             f"sqlite:///{Path(store).resolve() / 'mlflow.db'}", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    _stop(proc)
    raise TimeoutError("mlflow ui did not answer /health in 120 s")


def _fmt(value: float) -> str:
    """A metric as MLflow's tables print it: rounded to 3 decimals, without trailing zeros."""
    r = round(float(value), 3)
    return str(int(r)) if r == int(r) else repr(r)


_COLUMNS_STATE = "MLflowLocalStorage-1.1-ExperimentPage-[{exp}]-ReactComponentState"


def _prepare_ui(browser: Browser, url: str, exp_id: str, query: dict, columns: list[str]) -> None:
    """What a user sets once and the UI remembers (localStorage): the runs table's columns (the objectives and
    the searched params; by default MLflow shows only Dataset, Source and Models) and the assistant panel closed."""
    browser.open(url)
    browser.wait_for(["Experiments"], timeout=90)
    state = {**query, "orderByAsc": False, "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [],
             "modelVersionFilter": "All Runs", "selectedColumns": columns, "columnOrder": []}
    key = _COLUMNS_STATE.format(exp=json.dumps(str(exp_id)))
    browser.evaluate(f"localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(state))});"
                     "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                     "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');")


def check(store: Path, sweep: str, model: str | None, screenshots: Path | None, metric: str = "macro_f1",
          axes: tuple[str, ...] = ("rank", "effective_alpha", "target", "quantization")) -> list[str]:
    """Run the checks; return one line per page checked (AssertionError names what did not render)."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(store).resolve() / 'mlflow.db'}"
    import mlflow

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        raise AssertionError(f"no experiment {sweep!r} in {store}")
    trials = client.search_runs([exp.experiment_id], "tags.`sweeps.role` = 'trial' AND attributes.status = 'FINISHED'",
                                order_by=[f"metrics.{metric} DESC"])
    if not trials:
        raise AssertionError(f"sweep {sweep!r} has no finished trial runs")
    objectives = [m for m in (metric, "peak_memory_mb", "trainable_params") if m in trials[0].data.metrics]
    params = [a for a in axes if a in trials[0].data.params]
    ui, url = start_ui(store)
    browser = None
    notes, shot = [], (lambda name: browser.screenshot(screenshots / name) if screenshots else None)
    try:
        browser = Browser()  # inside the try: a browser that fails to start must not leave the UI server running
        query = {"searchFilter": "tags.`sweeps.role` = 'trial'", "orderByKey": f"metrics.`{metric}`"}
        columns = ([f"metrics.`{m}`" for m in objectives] + [f"params.`{p}`" for p in params]
                   + ["attributes.`Dataset`", "attributes.`Models`"])
        _prepare_ui(browser, url, exp.experiment_id, query, columns)
        shown = trials[:5]
        names = [r.info.run_name for r in shown]
        values = [_fmt(r.data.metrics[metric]) for r in shown]  # as the compare view rounds them
        exact = [str(float(r.data.metrics[metric])) for r in shown]  # the runs table prints them whole
        browser.open(f"{url}/#/experiments/{exp.experiment_id}/runs?" + urllib.parse.urlencode(
            {**query, "orderByAsc": "false", "workflowType": "machine_learning"}))
        browser.wait_for(names + exact, timeout=90)
        shot("mlflow_runs.png")
        notes.append(f"runs page lists {', '.join(names)} with {metric} {', '.join(values)}")

        browser.open(f"{url}/#/compare-runs?" + urllib.parse.urlencode({
            "runs": json.dumps([r.info.run_id for r in trials]), "experiments": json.dumps([exp.experiment_id]),
            "workflowType": "machine_learning"}))
        browser.wait_for(["Parallel Coordinates Plot", *names[:2], *values], timeout=90)
        browser.click_at("button", "Clear All")
        missing = browser.choose(0, params) + browser.choose(1, [metric])
        if missing:
            raise AssertionError(f"compare view offers no {missing} to plot")
        browser.wait_for(params + [metric], timeout=30)
        browser.evaluate("document.activeElement && document.activeElement.blur()")
        shot("mlflow_compare.png")
        notes.append(f"compare view plots {', '.join(params)} against {metric}")

        if model:
            browser.open(f"{url}/#/models/{urllib.parse.quote(model)}?workflowType=machine_learning")
            browser.wait_for([model, "champion"], timeout=90)
            shot("mlflow_registry.png")
            champion = client.get_model_version_by_alias(model, "champion")
            browser.open(f"{url}/#/models/{urllib.parse.quote(model)}/versions/{champion.version}"
                         "?workflowType=machine_learning")
            browser.wait_for(["champion", "held out"], timeout=90)
            shot("mlflow_registry_version.png")
            notes.append(f"registry page of {model} shows the champion alias (version {champion.version}, "
                         "with its model card)")
    finally:
        if browser is not None:
            browser.close()
        _stop(ui)
    return notes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=Path("mlruns"))
    ap.add_argument("--sweep", default="rank_study")
    ap.add_argument("--model", default=None, help="registered model whose page to check (champion alias)")
    ap.add_argument("--metric", default="macro_f1")
    ap.add_argument("--screenshots", type=Path, default=None, help="folder for the PNG screenshots")
    args = ap.parse_args()
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    try:
        for line in check(args.store, args.sweep, args.model, args.screenshots, args.metric):
            print(f"ok: {line}")
    except AssertionError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
