"""The web pages' fixtures: a fast-preset registry with all four production stacks, the joint sampler and the
run's report stored with it (as ``galaxypaint train`` stores it), an in-process client, a login helper."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from tests.api.conftest import SUBMIT_TOKEN, TOKEN

HALO = {"M_h": 12.0, "C_h": 1.0, "S_h": 0.04, "z_h": 1.2, "Delta3_h": 3.0}
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="session")
def web_registry(small_sampler_run, tmp_path_factory):
    """(models directory, data directory, run id): the session's small run with its report stored (Figs. 2-9
    at a 32^3 mesh, no sampled ensemble: seconds, not minutes) and a small catalog in the data directory."""
    from app.core.catalogs import write_table
    from app.core.registry import Registry
    from tests.conftest import registry_copy
    from training.report import build_report, store_report

    root = tmp_path_factory.mktemp("web")
    registry = Registry(registry_copy(small_sampler_run, root / "models"), create=False)
    df, run_id = small_sampler_run[1], small_sampler_run[2]["run_id"]
    build_report(registry, df, root / "report", run_id=run_id, nmesh=32, ensemble_seeds=0)
    store_report(registry, run_id, root / "report")
    (root / "data" / "sub").mkdir(parents=True)
    write_table(df.iloc[:200], root / "data" / "sub" / "halos.parquet")
    return root / "models", root / "data", run_id


def private_copy(web_registry, dest: Path) -> tuple[Path, Path]:
    """A registry and data directory of a test's own (tests here move aliases and write sessions)."""
    models, data, _ = web_registry
    shutil.copytree(models, dest / "models")
    shutil.copytree(data, dest / "data")
    return dest / "models", dest / "data"


@pytest.fixture
def make_client(web_registry, tmp_path):
    """``make_client(**settings)``: an in-process client of a fresh app on a private copy of the registry."""
    from fastapi.testclient import TestClient

    from app.api.main import create_app
    from app.core.settings import Settings

    models, data = private_copy(web_registry, tmp_path)
    clients = []

    def make(**overrides) -> TestClient:
        values = {"registry": models, "data_dir": data, "admin_token": TOKEN, "api_token": SUBMIT_TOKEN,
                  "log_json": False, **overrides}
        client = TestClient(create_app(Settings(**values)), follow_redirects=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def chrome(download_dir: Path | None = None, javascript: bool = True, width: int = 1400, height: int = 1000):
    """A headless Chromium (Debian's ``chromium`` and ``chromedriver``; ``--no-sandbox``: tests run as root).
    The driver's path is given, so Selenium Manager (which would download a driver) never runs."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(p for p in map(shutil.which, ("chromium", "chromium-browser")) if p)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    prefs: dict = {} if javascript else {"profile.managed_default_content_settings.javascript": 2}
    if download_dir is not None:
        prefs.update({"download.default_directory": str(download_dir), "download.prompt_for_download": False})
    options.add_experimental_option("prefs", prefs)
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    if download_dir is not None:
        driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no CSRF field"
    return found[1]


def login(client, token: str = TOKEN) -> None:
    page = client.get("/login")
    r = client.post("/login", data={"token": token, "csrf_token": csrf_of(page.text), "next": "/"})
    assert r.status_code == 303, r.text


def wait_job(client, job_url: str, seconds: float = 120.0) -> dict:
    """The job's status once it has ended (``job_url``: its page, ``/jobs/<id>``), polled as its page does."""
    status: dict = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = client.get(job_url + "/status").json()
        if status["status"] in ("succeeded", "failed", "canceled"):
            break
        time.sleep(0.1)
    return status


def api_job(client, job_id: str) -> dict:
    """The job as the API shows it (bearer token: the API's own view, not the page's)."""
    r = client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    return r.json()
