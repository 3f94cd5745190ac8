"""P(k) from the browser (in-process client): the form on a succeeded paint job's page submits through the
API's ``submit_pk``; a succeeded P(k) job's page shows its figure and summary table."""

from __future__ import annotations

import re

from .conftest import api_job, csrf_of, login, wait_job
from .test_pages import catalog_csv


def _paint(client, **fields) -> str:
    """A paint job submitted from the form and finished; its page's path."""
    csrf = csrf_of(client.get("/paint").text)
    files = fields.pop("files", None)
    r = client.post("/paint", data={"csrf_token": csrf, **fields}, files=files)
    assert r.status_code == 303, r.text
    status = wait_job(client, r.headers["location"])
    assert status["status"] == "succeeded", status
    return r.headers["location"]


def test_a_succeeded_paint_jobs_pk_is_measured_from_its_page(make_client):
    client = make_client()
    login(client)
    job_url = _paint(client, catalog="sub/halos.parquet", targets=["smass"])  # a catalog recording its box
    page = client.get(job_url).text
    assert f'<form method="post" action="{job_url}/pk"' in page
    assert 'name="nmesh"' in page and 'value="128"' in page and 'max="512"' in page  # the server's limit
    assert '<label for="pk-box">' in page and "Mpc/h" in page
    csrf = csrf_of(page)

    # refused without the form's CSRF token, and without a login
    assert client.post(f"{job_url}/pk", data={"nmesh": "32"}).status_code == 403
    assert client.post(f"{job_url}/pk", data={"nmesh": "32", "csrf_token": "forged"}).status_code == 403
    logged_in = dict(client.cookies)
    client.cookies.clear()
    assert client.get(job_url).headers["location"] == f"/login?next={job_url}"
    visitor = csrf_of(client.get("/login").text)  # a visitor's session and its CSRF token: still no login
    r = client.post(f"{job_url}/pk", data={"nmesh": "32", "csrf_token": visitor})
    assert r.status_code == 401 and "log in" in r.text
    client.cookies.clear()
    client.cookies.update(logged_in)

    # the API's refusals, shown beside the form, which keeps what was typed
    r = client.post(f"{job_url}/pk", data={"csrf_token": csrf, "nmesh": "1024", "box": ""})
    assert r.status_code == 422 and 'id="pk-problem"' in r.text and "above this server&#39;s limit of 512" in r.text
    assert 'value="1024"' in r.text
    r = client.post(f"{job_url}/pk", data={"csrf_token": csrf, "nmesh": "32", "box": "-5"})
    assert r.status_code == 422 and "box: " in r.text
    r = client.post(f"{job_url}/pk", data={"csrf_token": csrf, "nmesh": "32", "box": "huge"})
    assert r.status_code == 422 and "box: &#39;huge&#39; is not a number" in r.text

    # accepted: a P(k) job of the painted file, its box the one the file records
    r = client.post(f"{job_url}/pk", data={"csrf_token": csrf, "nmesh": "32", "box": ""})
    assert r.status_code == 303, r.text
    pk_url = r.headers["location"]
    assert re.fullmatch(r"/jobs/job-[0-9a-f]{12}", pk_url) and pk_url != job_url
    pk = api_job(client, pk_url.removeprefix("/jobs/"))
    assert pk["kind"] == "pk" and pk["params"]["source"] == job_url.removeprefix("/jobs/")
    assert pk["params"]["nmesh"] == 32 and pk["params"]["box"] is None
    status = wait_job(client, pk_url)
    assert status["status"] == "succeeded", status

    page = client.get(pk_url).text
    src = f"{pk_url}/result?part=figure"
    assert f'<img src="{src}"' in page and 'id="pk-form"' not in page  # a P(k) job is not measured again
    assert f'<a href="{job_url}">' in page  # the painted job it measured
    figure = client.get(src)
    assert figure.status_code == 200 and figure.headers["content-type"] == "image/png"
    assert figure.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'id="pk-summary"' in page and "χ²/dof" in page
    summary = api_job(client, pk_url.removeprefix("/jobs/"))["result"]["summary"]
    assert [(s["target"], s["bin"]) for s in summary] == [("smass", 1), ("smass", 2)]
    assert page.count('<td data-column="target">smass</td>') == 2
    assert f'<td class="num" data-column="chi2_dof">{summary[0]["chi2_dof"]:.3g}</td>' in page
    # the figure needs what the page needs: a login
    client.cookies.clear()
    assert client.get(src).status_code == 303


def test_a_catalog_recording_no_box_needs_one_typed_in_the_form(make_client):
    client = make_client(max_pk_nmesh=64)
    login(client)
    job_url = _paint(client, targets=["smass"], files={"file": ("halos.csv", catalog_csv(30), "text/csv")})
    page = client.get(job_url).text
    assert 'value="64"' in page and 'max="64"' in page  # the default mesh, capped by the server's limit
    csrf = csrf_of(page)
    r = client.post(f"{job_url}/pk", data={"csrf_token": csrf, "nmesh": "32", "box": ""})
    assert r.status_code == 422 and 'role="alert" id="pk-problem">box: ' in r.text and "records no box" in r.text
    r = client.post(f"{job_url}/pk", data={"csrf_token": csrf, "nmesh": "32", "box": "205"})
    assert r.status_code == 303, r.text
    pk = api_job(client, r.headers["location"].removeprefix("/jobs/"))
    assert pk["params"]["box"] == 205.0 and pk["params"]["nmesh"] == 32
    # not a succeeded paint job: no form, and a submission anyway is the API's 409
    assert 'id="pk-form"' not in client.get(r.headers["location"]).text
    r = client.post(f"{r.headers['location']}/pk", data={"csrf_token": csrf, "nmesh": "32", "box": "205"})
    assert r.status_code == 409 and "a succeeded paint job is needed" in r.text
    assert client.post("/jobs/job-000000000000/pk", data={"csrf_token": csrf}).status_code == 404


def test_the_summary_shows_the_columns_a_pk_job_has():
    from app.web import views

    catalog = {"target": "smass", "bin": 1, "range": "[8.8, 10.6)", "n_pred": 10, "n_true": 12, "chi2": 3.0,
               "chi2_dof": 0.5, "rel_diff_pct": -2.0}
    ensemble = {"target": "smass", "bin": 1, "range": "[8.8, 10.6)", "n_true": 12, "n_sample_mean": 11.5,
                "n_sample_std": 1.2, "consistency": 0.9, "rel_bias": 0.05, "chi2": None, "chi2_dof": None}
    columns, rows = views.pk_summary({"kind": "pk", "result": {"summary": [catalog]}})
    assert [c[0] for c in columns] == list(catalog) and rows == [catalog]
    columns, _ = views.pk_summary({"kind": "pk", "result": {"summary": [ensemble]}})
    assert [c[0] for c in columns] == ["target", "bin", "range", "n_true", "n_sample_mean", "n_sample_std", "chi2",
                                       "chi2_dof", "consistency", "rel_bias"]
    assert views.pk_summary({"kind": "paint", "result": {"summary": [catalog]}}) == ([], [])
    assert views.pk_summary({"kind": "pk", "result": None}) == ([], [])
