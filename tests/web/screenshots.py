"""Screenshots of the main web pages for the README, made apart from the tests (test runs never change
the tree): ``python -m tests.web.screenshots [OUT_DIR]`` (default ``docs/screenshots``).

Trains a tiny fast-preset registry (all four targets, the joint sampler, the run's report) in a temporary
directory, serves it, logs in, predicts one halo from the form, paints a small catalog, measures its P(k)
from the job's page, and photographs each page in a headless Chromium (Debian's ``chromium`` and
``chromium-driver``, and Selenium).  About a minute.
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
         ("runs", "/runs"), ("paint", "/paint"))
WIDTH, HEIGHT = 1280, 900
#: a whole page is photographed up to this height [px] (the window is made as tall as the page)
MAX_HEIGHT = 2400
SUBMIT = "form.stack-form button[type=submit]"


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
    write_table(df, root / "data" / "halos.parquet")  # records its box: its P(k) needs none typed
    return run_id


def _whole_page(driver, file: Path) -> None:
    """A screenshot of the whole page (up to ``MAX_HEIGHT``), not only what the window shows."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    chrome_px = driver.execute_script("return window.outerHeight - window.innerHeight")
    driver.set_window_size(WIDTH, min(height, MAX_HEIGHT) + chrome_px)
    try:
        driver.save_screenshot(str(file))
    finally:
        driver.set_window_size(WIDTH, HEIGHT)


def _submit_and_wait(driver, wait_for: str) -> None:
    """Submit the page's form, then wait until the page shows ``wait_for`` (a CSS selector): job pages
    follow their job and reload themselves when it has finished."""
    driver.find_element("css selector", SUBMIT).submit()
    for _ in range(900):
        if driver.find_elements("css selector", wait_for):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{driver.current_url}: no {wait_for} after 3 minutes")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run_id = _registry(root)
        proc, url = start_server(root / "models", root / "data", token=TOKEN)
        driver = chrome(width=WIDTH, height=HEIGHT)
        try:
            driver.get(url + "/login")
            driver.find_element("id", "token").send_keys(TOKEN)
            driver.find_element("css selector", SUBMIT).submit()
            for name, path in (*PAGES, ("run", f"/runs/{run_id}")):
                driver.get(url + path)
                driver.save_screenshot(str(out / f"{name}.png"))
            driver.get(url + "/predict")  # the form filled in and submitted: the form and its answer
            for name, value in HALO.items():
                driver.find_element("id", f"f-{name}").send_keys(str(value))
            _submit_and_wait(driver, "#result")
            _whole_page(driver, out / "predict.png")
            driver.get(url + "/paint")
            driver.find_element("css selector", "#catalog option[value='halos.parquet']").click()
            _submit_and_wait(driver, "#job-results")
            driver.save_screenshot(str(out / "job.png"))
            _submit_and_wait(driver, "#pk-figure, #job-error")  # the job page's "Measure P(k)" form
            if driver.find_elements("id", "job-error"):
                raise RuntimeError(f"the P(k) job failed: {driver.find_element('id', 'job-error').text}")
            driver.execute_script("return document.querySelector('#pk-figure img').decode()")  # drawn, then shot
            _whole_page(driver, out / "pk_job.png")
        finally:
            driver.quit()
            stop_server(proc)
    print(f"screenshots written to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots"))
