"""What the pages show and do (in-process client): registry, runs, prediction, a paint job end to end."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from app.core.column_presets import PRESET_NAMES
from app.core.schema import FEATURE_NAMES, TARGET_NAMES
from app.web import views

from .conftest import HALO, api_job, csrf_of, login, wait_job


def catalog_csv(n: int, seed: int = 0) -> bytes:
    """``n`` plausible halos as CSV (the five features, an ID)."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"ID": np.arange(n), "M_h": rng.uniform(11, 13, n), "C_h": rng.uniform(0.8, 1.2, n),
                       "S_h": rng.uniform(0.02, 0.06, n), "z_h": rng.uniform(0.8, 2.0, n),
                       "Delta3_h": rng.uniform(0.5, 6, n)})
    return df.to_csv(index=False).encode()


def test_the_registry_page_groups_models_by_target_and_variant(make_client):
    page = make_client().get("/").text
    for target in TARGET_NAMES:
        assert f'id="model-{target}-raw-stack"' in page
    assert page.index("smass <span") < page.index("sSFR <span") < page.index("several targets")
    assert 'data-metric="pearson_r">0.9' in page and "production → v1" in page


def test_a_version_page_shows_domain_lineage_and_hyperparameters(make_client, web_registry):
    page = make_client().get("/models/smass-raw-stack/versions/1").text
    for text in ("Training domain", "log10 Msun/h", "Data fingerprint", web_registry[2], "Package versions",
                 "Hyperparameters", "sha256"):
        assert text in page, text
    assert make_client().get("/models/smass-raw-stack/versions/99").status_code == 404


def test_a_run_page_shows_the_metrics_and_every_stored_figure(make_client, web_registry):
    client = make_client()
    run_id = web_registry[2]
    page = client.get(f"/runs/{run_id}").text
    assert run_id in client.get("/runs").text
    for fig in ("fig2", "fig3", "fig4", "fig5", "fig6", "fig7", "fig8", "fig9"):
        assert f'<figure id="{fig}"' in page, fig
    src = f"/v1/runs/{run_id}/artefacts/fig9_pk_raw.png"
    assert f'src="{src}"' in page and client.get(src).headers["content-type"] == "image/png"
    assert 'id="run-metrics"' in page and "report.html" in page


def test_the_figures_of_a_run_are_ordered_and_paired():
    names = ["fig9_pk_smogn.png", "fig_pit.png", "fig10_x.png", "fig9_pk_raw.png", "fig2_pdfs.png",
             "fig2s_marginals.png", "report.md", "fig9_pk_sample.png"]
    figures = views.run_figures([{"name": n, "media_type": "text/markdown" if n.endswith(".md") else "image/png"}
                                 for n in names])
    assert [f.key for f in figures] == ["fig2", "fig2s", "fig9", "fig10", "fig_pit"]
    assert figures[2].panels == [("raw", "fig9_pk_raw.png"), ("SMOGN", "fig9_pk_smogn.png"),
                                 ("sampled catalogs", "fig9_pk_sample.png")]


def test_the_catalogs_offered_are_the_readable_visible_ones(tmp_path):
    for name in ("a.csv", "b.parquet", "notes.txt.bak", ".hidden.csv", "jobs/job-1/input.csv", "sub/c.hdf5",
                 ".secret/d.csv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert views.data_catalogs(tmp_path) == ["a.csv", "b.parquet", "sub/c.hdf5"]


def test_the_predict_form_answers_the_four_properties_and_quantiles(make_client):
    client = make_client()
    form = client.get("/predict").text
    for name in FEATURE_NAMES:
        assert f'<label for="f-{name}">' in form and f'id="f-{name}"' in form
    assert "log10 Msun/h" in form and 'min="8.0" max="16.5"' in form
    page = client.get("/predict", params={**HALO}).text
    for target in TARGET_NAMES:
        assert f'id="pred-{target}"' in page
    assert "16 %" in page and "84 %" in page  # the joint sampler is registered: its quantiles too
    api = client.post("/v1/predict", json={"halos": [HALO]}).json()["predictions"]["smass"][0]
    shown = float(page.split('id="pred-smass"')[1].split('data-value="')[1].split('"')[0])
    assert shown == api  # the same data plane, the same number
    far = client.get("/predict", params={**HALO, "M_h": "15.9"}).text
    assert "outside the training range" in far and "extrapolation" in far
    bad = client.get("/predict", params={**HALO, "M_h": "17"})
    assert bad.status_code == 422 and "outside the valid range" in bad.text
    assert client.get("/predict", params={**HALO, "C_h": "abc"}).status_code == 422


def test_a_paint_job_from_the_form_to_the_download(make_client):
    client = make_client()
    login(client)
    paint = client.get("/paint").text
    assert '<option value="sub/halos.parquet">' in paint
    r = client.post("/paint", data={"csrf_token": csrf_of(paint), "output_format": "csv", "targets": ["smass", "color"],
                                    "mode": "mean", "seed": "", "quantiles": "", "model": "", "catalog": ""},
                    files={"file": ("halos.csv", catalog_csv(50), "text/csv")})
    assert r.status_code == 303, r.text
    job_url = r.headers["location"]
    page = client.get(job_url).text
    assert '<noscript><meta http-equiv="refresh"' in page and 'src="/static/job.js"' in page
    status = wait_job(client, job_url)
    assert status["status"] == "succeeded", status
    page = client.get(job_url).text
    assert "job.js" not in page and "refresh" not in page  # finished: nothing follows it any more
    link = f"{job_url}/result?part=file"
    assert f'href="{link}"' in page
    result = pd.read_csv(io.BytesIO(client.get(link).content))
    assert len(result) == 50 and {"smass_pred", "color_pred"} <= set(result.columns)
    assert job_url.removeprefix("/jobs/") in client.get("/jobs").text
    # the same job through the API: one machinery
    assert client.get(f"/v1/jobs/{job_url.removeprefix('/jobs/')}",
                      headers={"Authorization": "Bearer s3cret-admin-token"}).json()["status"] == "succeeded"


def test_a_bad_submission_is_answered_with_the_apis_message(make_client):
    client = make_client()
    login(client)
    csrf = csrf_of(client.get("/paint").text)
    r = client.post("/paint", data={"csrf_token": csrf})
    assert r.status_code == 422 and "give exactly one of" in r.text
    r = client.post("/paint", data={"csrf_token": csrf, "catalog": "../etc/passwd"})
    assert r.status_code == 403 and "outside the server" in r.text
    r = client.post("/paint", data={"csrf_token": csrf, "catalog": "sub/halos.parquet", "seed": "x"})
    assert r.status_code == 422 and "seed" in r.text


def test_the_paint_form_offers_the_column_presets_and_the_job_records_the_choice(make_client):
    client = make_client()
    login(client)
    paint = client.get("/paint").text
    assert '<label for="column_preset">' in paint and '<option value="">' in paint
    for name in PRESET_NAMES:
        assert f'<option value="{name}">' in paint, name
    assert "M_h = log10(Mvir)" in paint and "not the M200c the models were trained on" in paint
    r = client.post("/paint", data={"csrf_token": csrf_of(paint), "catalog": "sub/halos.parquet",
                                    "column_preset": "consistent-trees", "columns": "Delta3_h=Delta3_h"})
    assert r.status_code == 303, r.text
    job_id = r.headers["location"].removeprefix("/jobs/")
    params = api_job(client, job_id)["params"]
    assert params["column_preset"] == "consistent-trees" and params["columns"] == {"Delta3_h": "Delta3_h"}
    assert "column_preset&#34;: &#34;consistent-trees" in client.get(r.headers["location"]).text  # its parameters
    # none chosen: no preset; an unknown one: the API's 422 naming the field
    r = client.post("/paint", data={"csrf_token": csrf_of(paint), "catalog": "sub/halos.parquet", "column_preset": ""})
    assert "column_preset" not in api_job(client, r.headers["location"].removeprefix("/jobs/"))["params"]
    r = client.post("/paint", data={"csrf_token": csrf_of(paint), "catalog": "sub/halos.parquet",
                                    "column_preset": "<b>sextractor</b>"})
    assert r.status_code == 422 and "column_preset: " in r.text and "<b>sextractor" not in r.text
