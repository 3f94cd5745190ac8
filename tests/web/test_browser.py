"""The pages in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium)
against a live ``galaxypaint serve`` on a fast-preset registry with its run's report.

Skipped, with the reason, when selenium, chromium or chromedriver is missing.  The accessibility check
runs axe-core from a test-only copy: ``GALAXYPAINT_AXE_JS`` (a path to ``axe.min.js``), else the pinned
copy ``tests/web/install-browser.sh`` fetches into the cache directory; skipped without one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from app.core.schema import FEATURE_NAMES, TARGET_NAMES
from tests.api.conftest import SUBMIT_TOKEN, TOKEN, start_server, stop_server

from .conftest import HALO, chrome, private_copy

WAIT_S = 60.0
UPLOAD_HALOS = 1000  # enough for every property bin of its P(k) to hold galaxies


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "browser tests: selenium is not installed (pip install selenium; the dev extra has it)"
    if not any(map(shutil.which, ("chromium", "chromium-browser"))) or not shutil.which("chromedriver"):
        return "browser tests: no Chromium (apt-get install -y chromium chromium-driver)"
    return None


# evaluated before any fixture: a machine without a browser skips at once, without training a registry
pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


@pytest.fixture(scope="module")
def live(web_registry, tmp_path_factory):
    here = tmp_path_factory.mktemp("web_live")
    models, data = private_copy(web_registry, here)
    proc, url = start_server(models, data, token=TOKEN, submit_token=SUBMIT_TOKEN)
    yield url, web_registry[2], models
    stop_server(proc)


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    try:
        driver = chrome(downloads)
    except Exception as exc:  # noqa: BLE001 - e.g. chromium and chromedriver of different versions
        pytest.skip(f"browser tests: Chromium does not start: {str(exc).splitlines()[0][:200]}")
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, live):
    """The browser, logged out, and a function opening a path of the live server."""
    url = live[0]
    browser.get(url + "/login")
    browser.delete_all_cookies()

    def open_(path: str):
        browser.get(url + path)
        return browser

    return open_


def _wait(driver, condition, what: str):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # a page that reloads itself (a job page when its job ends) replaces its elements between a lookup and
    # its use: that is a reason to look again, not a failure
    from selenium.common.exceptions import WebDriverException

    def retried(d):
        try:
            return condition(d)
        except WebDriverException as exc:  # chromedriver's words for an element of a page already replaced
            if "does not belong to the document" in str(exc):
                return False
            raise

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                         ).until(retried, message=what)


def _by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return _wait(driver, lambda d: d.find_element(By.ID, element_id), f"#{element_id}")


def _submit(driver) -> None:
    """Submit the page's form and wait for the next page (not a glance at the one still shown)."""
    from selenium.webdriver.support import expected_conditions

    old = driver.find_element("tag name", "html")
    driver.find_element("css selector", "form.stack-form button[type=submit]").click()
    _wait(driver, expected_conditions.staleness_of(old), "the next page")


def _login(driver, url: str, token: str = TOKEN) -> None:
    driver.get(url + "/login")
    _by_id(driver, "token").send_keys(token)
    _submit(driver)
    assert "Log out" in driver.page_source


def test_the_registry_page_shows_the_four_production_stacks_with_their_r(page):
    from selenium.webdriver.common.by import By

    driver = page("/")
    for target in TARGET_NAMES:
        row = _by_id(driver, f"model-{target}-raw-stack")
        assert "production → v1" in row.text
        r = float(row.find_element(By.CSS_SELECTOR, 'td[data-metric="pearson_r"]').text)
        assert 0.0 < r <= 1.0, (target, r)


def test_a_run_page_loads_its_fig9(page, live):
    from selenium.webdriver.common.by import By

    driver = page(f"/runs/{live[1]}")
    img = _by_id(driver, "fig9").find_element(By.TAG_NAME, "img")
    driver.execute_script("arguments[0].scrollIntoView();", img)  # lazily loaded
    _wait(driver, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img),
          "Fig. 9 loaded")
    assert driver.execute_script("return arguments[0].naturalWidth", img) > 100


def test_the_one_halo_form_answers_a_stellar_mass(page):
    driver = page("/predict")
    for name in FEATURE_NAMES:
        field = _by_id(driver, f"f-{name}")
        field.clear()
        field.send_keys(str(HALO[name]))
    _submit(driver)
    cell = _by_id(driver, "pred-smass").find_element("css selector", "td")
    assert 8.0 < float(cell.text) < 13.0
    assert "log10 Msun/h" in _by_id(driver, "pred-smass").text


def test_a_catalog_uploaded_is_painted_its_result_downloaded_and_its_pk_measured(page, live, downloads, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from app.core.catalogs import write_table
    from training.demo_catalog import make_demo_catalog

    _login(page("/"), live[0], SUBMIT_TOKEN)
    source = tmp_path / "my halos.parquet"  # a demo catalog: positions and true properties
    write_table(make_demo_catalog(n=UPLOAD_HALOS, seed=3), source)
    driver = page("/paint")
    _by_id(driver, "file").send_keys(str(source))
    Select(_by_id(driver, "output_format")).select_by_value("csv")
    _submit(driver)
    assert "/jobs/job-" in driver.current_url
    assert _by_id(driver, "job-source").text == "my halos.parquet"
    _wait(driver, lambda d: d.find_element("id", "job-status").text in ("succeeded", "failed"), "the job's end")
    assert _by_id(driver, "job-status").text == "succeeded", driver.find_element("tag name", "main").text
    job_id = driver.current_url.rsplit("/", 1)[1]
    _by_id(driver, "job-results").find_element("link text", "Painted catalog").click()
    expected = downloads / f"{job_id}-painted.csv"

    def downloaded(_):
        done = [p for p in downloads.glob(f"{job_id}-*") if not p.name.endswith(".crdownload")]
        return done[0] if done else None

    result = pd.read_csv(_wait(driver, downloaded, f"the download ({expected.name})"))
    assert len(result) == UPLOAD_HALOS and {f"{t}_pred" for t in TARGET_NAMES} <= set(result.columns)

    # its P(k), from the job's page: a painted CSV records no box (the API's 422 is shown beside the form);
    # with the box typed in, a P(k) job at the form's default mesh
    assert _by_id(driver, "pk-box").get_attribute("value") == ""
    assert _by_id(driver, "pk-nmesh").get_attribute("value") == "128"
    _submit(driver)
    assert _by_id(driver, "pk-problem").text.startswith("box: ")
    _by_id(driver, "pk-box").send_keys("205")
    _submit(driver)
    assert "/jobs/job-" in driver.current_url and not driver.current_url.endswith(job_id)
    assert _by_id(driver, "job-source").text == job_id
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#pk-figure, #job-error"), "the P(k) job's end")
    assert not driver.find_elements(By.ID, "job-error"), driver.find_element(By.ID, "job-error").text
    img = driver.find_element(By.CSS_SELECTOR, "#pk-figure img")
    driver.execute_script("arguments[0].scrollIntoView();", img)
    _wait(driver, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img),
          "the P(k) figure loaded")
    assert driver.execute_script("return arguments[0].naturalWidth", img) > 100
    rows = _by_id(driver, "pk-summary").find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == 2 * len(TARGET_NAMES)  # two bins of each painted property


def test_promoting_an_alias_needs_a_login_and_the_forms_csrf_token(page, live):
    from selenium.webdriver.support.ui import Select

    def promote(alias: str, drop_csrf: bool = False):
        driver = page("/models/smass-raw-stack")
        field = _by_id(driver, "alias")
        field.clear()
        field.send_keys(alias)
        Select(_by_id(driver, "version")).select_by_value("1")
        if drop_csrf:
            driver.execute_script("document.querySelectorAll('input[name=csrf_token]').forEach(e => e.remove());")
        _submit(driver)
        return _by_id(driver, "main").text

    assert "Error 401" in promote("candidate")
    _login(page("/"), live[0], TOKEN)
    assert "Error 403" in promote("candidate", drop_csrf=True)
    assert "Alias candidate moved: it now points to v1" in promote("candidate")
    from app.core.registry import Registry

    assert Registry(live[2], create=False).get("smass-raw-stack", alias="candidate").version == 1


#: where tests/web/install-browser.sh (run by .ci/run) puts its pinned, checksummed copy of axe-core
AXE_VERSION = "4.14.1"


def _axe_source() -> str:
    given = os.environ.get("GALAXYPAINT_AXE_JS")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "galaxypaint" / f"axe-core-{AXE_VERSION}"
    for path in (Path(given) if given else None, cache / "axe.min.js"):
        if path is not None and path.is_file():
            return path.read_text()
    pytest.skip("accessibility check: no axe-core (bash tests/web/install-browser.sh fetches it, or set "
                "GALAXYPAINT_AXE_JS to an axe.min.js)")


def test_the_pages_have_no_serious_accessibility_violations(page, live):
    from selenium.webdriver.support.ui import Select

    axe = _axe_source()
    _login(page("/"), live[0], TOKEN)
    driver = page("/paint")
    Select(_by_id(driver, "catalog")).select_by_value("sub/halos.parquet")
    driver.find_element("css selector", "input[name=targets][value=smass]").click()  # P(k): both bins populated
    _submit(driver)
    job = driver.current_url.removeprefix(live[0])
    # the finished job's page (its P(k) form) and a P(k) job's page (figure and table) are checked too
    _wait(driver, lambda d: d.find_elements("id", "pk-form"), "the paint job's end")
    field = _by_id(driver, "pk-nmesh")
    field.clear()
    field.send_keys("32")
    _submit(driver)
    _wait(driver, lambda d: d.find_elements("css selector", "#pk-figure, #job-error"), "the P(k) job's end")
    pk_job = driver.current_url.removeprefix(live[0])
    query = "&".join(f"{k}={v}" for k, v in HALO.items())
    found = {}
    for path in ("/", "/runs", f"/runs/{live[1]}", "/models/smass-raw-stack", "/models/smass-raw-stack/versions/1",
                 "/predict", f"/predict?{query}", "/paint", "/jobs", job, pk_job, "/login"):
        driver = page(path)
        _by_id(driver, "main")
        driver.execute_script(axe)
        violations = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations), e => done(String(e)));")
        assert isinstance(violations, list), violations
        serious = [f"{v['id']} ({v['impact']}): {v['help']} — {len(v['nodes'])} node(s), e.g. "
                   f"{v['nodes'][0]['html'][:120]}" for v in violations if v["impact"] in ("serious", "critical")]
        if serious:
            found[path] = serious
    assert not found, found


def test_the_job_page_follows_its_job_without_javascript(live):
    """The read-only pages need no script: with JavaScript off, the job page's meta refresh shows the end."""
    from selenium.webdriver.support.ui import Select

    driver = chrome(javascript=False)
    try:
        url = live[0]
        _login(driver, url, SUBMIT_TOKEN)
        driver.get(url + "/paint")
        Select(_by_id(driver, "catalog")).select_by_value("sub/halos.parquet")
        _submit(driver)
        assert "/jobs/job-" in driver.current_url
        _wait(driver, lambda d: d.find_element("id", "job-status").text == "succeeded", "the meta refresh")
        assert driver.find_element("id", "job-results").text.startswith("Painted catalog")
        driver.get(url + "/")
        assert "production → v1" in driver.find_element("id", "model-smass-raw-stack").text
    finally:
        driver.quit()
