"""Screenshots of the main web pages for the README, made apart from the tests (test runs never change
the tree): ``python -m tests.web.screenshots [OUT_DIR]`` (default ``docs/screenshots``).

Trains a tiny fast-preset registry (all four targets, the joint sampler, the run's report) in a temporary
directory, serves it, logs in, paints a small catalog and photographs each page in a headless Chromium
(Debian's ``chromium`` and ``chromium-driver``, and Selenium).  About a minute.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from app.core.catalogs import write_table
from app.core.registry import Registry
from app.core.schema import TARGET_NAMES
from tests.api.conftest import TOKEN, start_server, stop_server
from tests.web.conftest import HALO, chrome

PAGES = (("registry", "/"), ("model", "/models/smass-raw-stack"), ("version", "/models/smass-raw-stack/versions/1"),
         ("runs", "/runs"), ("predict", "/predict?" + "&".join(f"{k}={v}" for k, v in HALO.items())),
         ("paint", "/paint"))


def _registry(root: Path) -> str:
    from training.demo_catalog import make_demo_catalog
    from training.pipeline import TrainConfig, run_training
    from training.report import build_report, store_report

    df = make_demo_catalog(n=3000, seed=12)
    registry = Registry(root / "models")
    run_id = run_training(df, registry, TrainConfig(targets=TARGET_NAMES, paths=("raw",), preset="fast",
                                                    models=("lgbm",), seed=1))["run_id"]
    build_report(registry, df, root / "report", run_id=run_id, nmesh=32, ensemble_seeds=0)
    store_report(registry, run_id, root / "report")
    (root / "data").mkdir()
    write_table(df.iloc[:500], root / "data" / "halos.parquet")
    return run_id


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run_id = _registry(root)
        proc, url = start_server(root / "models", root / "data", token=TOKEN)
        driver = chrome(width=1280, height=900)
        try:
            driver.get(url + "/login")
            driver.find_element("id", "token").send_keys(TOKEN)
            driver.find_element("css selector", "form.stack-form button[type=submit]").submit()
            for name, path in (*PAGES, ("run", f"/runs/{run_id}")):
                driver.get(url + path)
                driver.save_screenshot(str(out / f"{name}.png"))
            driver.get(url + "/paint")
            driver.find_element("css selector", "#catalog option[value='halos.parquet']").click()
            driver.find_element("css selector", "form.stack-form button[type=submit]").submit()
            for _ in range(600):  # the page follows its job and reloads itself when it has finished
                if "job-results" in driver.page_source:
                    break
                time.sleep(0.2)
            driver.save_screenshot(str(out / "job.png"))
        finally:
            driver.quit()
            stop_server(proc)
    print(f"screenshots written to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots"))
