"""A Python client of ``galaxypaint serve``, for notebooks and scripts.

    >>> from app.client import Client
    >>> gp = Client("http://127.0.0.1:8000")          # token: env or the server's token file
    >>> painted = gp.predict(halos)                    # halos + <target>_pred columns (Arrow on the wire)
    >>> sampled = gp.predict(halos, mode="sample", seed=3)
    >>> catalog = gp.paint("halos.parquet")            # a paint job, with a progress bar; a DataFrame back
    >>> gp.paint("halos.parquet", out="painted.parquet")

Predictions travel as Arrow IPC streams (``application/vnd.apache.arrow.stream``) in batches of at
most the server's ``max_batch_halos`` halos; a server that refuses Arrow (415) is spoken to in JSON.
Every error the server answers becomes a ``GalaxypaintError`` carrying the HTTP status, the server's
message and the field it names; network failures become a ``GalaxypaintError`` with ``status`` None.

The bearer token, when not given: ``token_file`` if given, else ``GALAXYPAINT_API_TOKEN``, then
``GALAXYPAINT_ADMIN_TOKEN``, then the token file ``galaxypaint serve`` generates in its data directory
(``$GALAXYPAINT_DATA_DIR/.galaxypaint-token``, default ``data/``) - the order of ``app.core.tokens``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from app.core.schema import FEATURE_NAMES, TARGET_NAMES, pred_column
from app.core.settings import TOKEN_FILE

ARROW_STREAM = "application/vnd.apache.arrow.stream"
#: the Arrow column keying each halo's draw in mode sample
ID_COLUMN = "ID"
#: the server's default ``max_batch_halos``; a smaller limit is learned from its 413 answer
DEFAULT_BATCH_HALOS = 100_000
_JOB_ID = re.compile(r"^job-[0-9a-f]{12}$")
_FIELD = re.compile(r"^([A-Za-z_][\w.\-\[\]]{0,200}): ")
_LIMIT = re.compile(r"the limit is ([\d,]+)")
_FINAL = ("succeeded", "failed", "canceled")
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".csv": "csv"}


class GalaxypaintError(Exception):
    """An error answered by the service (``status``: the HTTP status; ``field``: the offending field the
    message names, or None) or a failed job / unreachable server (``status`` None)."""

    def __init__(self, message: str, status: int | None = None, field: str | None = None,
                 request_id: str | None = None, job: dict | None = None) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.message = message
        self.status = status
        self.field = field if field is not None else _field_of(message)
        self.request_id = request_id
        self.job = job


def _field_of(message: str) -> str | None:
    m = _FIELD.match(message)
    return m.group(1) if m else None


def output_column(output: str) -> str:
    """The frame column of a prediction output (as ``app.core.model.output_column``): ``<target>_pred``
    for a mean or a draw, the output's own name (``<target>_q<level>``) for a quantile."""
    return pred_column(output) if output in TARGET_NAMES else output


def find_token(token_file: str | os.PathLike[str] | None = None) -> str | None:
    """The token a client sends when none is given: ``token_file`` (when given), else the environment
    (``GALAXYPAINT_API_TOKEN``, then ``GALAXYPAINT_ADMIN_TOKEN``), else the server's token file in
    ``$GALAXYPAINT_DATA_DIR`` (default ``data/``)."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise GalaxypaintError(f"token_file: cannot read {token_file}: {exc.strerror or exc}") from None
        if not token:
            raise GalaxypaintError(f"token_file: {token_file} is empty")
        return token
    for var in ("GALAXYPAINT_API_TOKEN", "GALAXYPAINT_ADMIN_TOKEN"):
        if os.environ.get(var, "").strip():
            return os.environ[var].strip()
    path = Path(os.environ.get("GALAXYPAINT_DATA_DIR") or "data") / TOKEN_FILE
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _format_of(path: str | os.PathLike[str]) -> str:
    name = str(path).lower().removesuffix(".gz")
    for suffix, fmt in _FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise GalaxypaintError(f"out: {path} is not .parquet, .hdf5 or .csv", field="out")


def _read_frame(path: Path) -> pd.DataFrame:
    from app.core.catalogs import read_table

    return read_table(path)


class Client:
    """A connection to ``galaxypaint serve`` at ``url`` (one kept-alive HTTP connection pool; use as a
    context manager or call ``close()``)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 300.0, *,
                 token_file: str | os.PathLike[str] | None = None, batch_halos: int = DEFAULT_BATCH_HALOS,
                 poll_interval: float = 0.5, progress: bool = True, event_hooks: Mapping | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token if token else find_token(token_file)
        self.batch_halos = int(batch_halos)
        self.poll_interval = poll_interval
        self.progress = progress
        self.arrow = True  # until the server refuses it (415)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers,
                                 event_hooks=dict(event_hooks or {}))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r}, token={'set' if self.token else 'none'})"

    # ------------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise GalaxypaintError(f"{method} {self.url}{path}: no answer within the timeout "
                                   f"({exc.__class__.__name__})") from None
        except httpx.HTTPError as exc:
            raise GalaxypaintError(f"{method} {self.url}{path}: {exc.__class__.__name__}: {exc}") from None
        if r.status_code >= 400:
            raise self._error(r)
        return r

    @staticmethod
    def _error(r: httpx.Response) -> GalaxypaintError:
        message, rid = None, r.headers.get("x-request-id")
        try:
            body = r.json()
            if isinstance(body, dict):
                message = body.get("detail") or body.get("error")
                rid = body.get("request_id") or rid
                if not isinstance(message, str):
                    message = json.dumps(message) if message is not None else None
        except ValueError:
            pass
        if not message:
            message = (r.text.strip()[:300] or r.reason_phrase) or f"HTTP {r.status_code}"
        return GalaxypaintError(message, r.status_code, _field_of(message), rid)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # ------------------------------------------------------------------ registry

    def models(self) -> list[dict]:
        """The registered models (``GET /v1/models``): name, latest_version, target(s), variant, kind, aliases."""
        return self._json("GET", "/v1/models")["models"]

    def promote(self, name: str, version: int, alias: str = "production") -> dict:
        """Point ``alias`` of model ``name`` at ``version`` (admin token)."""
        return self._json("POST", f"/v1/models/{name}/aliases", json={"alias": alias, "version": int(version)})

    def health(self) -> dict:
        return self._json("GET", "/health/ready")

    # ------------------------------------------------------------------ predictions

    def predict(self, df: pd.DataFrame, targets: Sequence[str] | str | None = None, model: str | None = None,
                mode: str = "mean", seed: int | None = None, quantiles: Sequence[float] | str | None = None,
                ids: Sequence[int] | np.ndarray | str | None = None, variant: str = "raw") -> pd.DataFrame:
        """``df`` (untouched) with one column per output: ``<target>_pred`` (modes mean and sample) or
        ``<target>_q<level>`` (mode quantiles), as ``galaxypaint predict`` writes them.

        ``df`` needs the 5 feature columns.  Mode sample keys each halo's draw by ``ids``: an array (one
        integer per row), a column name, or by default the ``ID`` column when present, else the row
        number - the rule of ``galaxypaint predict``; a halo's galaxy depends only on (seed, id)."""
        missing = [f for f in FEATURE_NAMES if f not in df.columns]
        if missing:
            raise GalaxypaintError(f"{missing[0]}: the frame lacks the feature column(s) {', '.join(missing)}",
                                   field=missing[0])
        x = df[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
        keys = self._ids(df, ids) if mode == "sample" else None
        if ids is not None and mode != "sample":
            raise GalaxypaintError("ids: halo ids key the draws of mode sample only", field="ids")
        params: dict[str, Any] = {"variant": variant, "mode": mode}
        if targets:
            params["targets"] = targets if isinstance(targets, str) else ",".join(targets)
        if model is not None:
            params["model"] = model
        if seed is not None:
            params["seed"] = int(seed)
        if quantiles is not None:
            params["quantiles"] = quantiles if isinstance(quantiles, str) else ",".join(f"{q:g}" for q in quantiles)
        if len(x) == 0:
            raise GalaxypaintError("halos: the frame holds no halo", field="halos")
        parts: list[dict[str, np.ndarray]] = []
        start = 0
        while start < len(x):
            stop = min(start + self.batch_halos, len(x))
            try:
                parts.append(self._predict_batch(x[start:stop], None if keys is None else keys[start:stop], params))
            except GalaxypaintError as exc:
                limit = _LIMIT.search(exc.message) if exc.status == 413 else None
                if limit and int(limit.group(1).replace(",", "")) < stop - start:
                    self.batch_halos = int(limit.group(1).replace(",", ""))  # the server's max_batch_halos
                    continue
                raise
            start = stop
        out = df.copy()
        for name in parts[0]:
            out[output_column(name)] = np.concatenate([p[name] for p in parts])
        return out

    @staticmethod
    def _ids(df: pd.DataFrame, ids: Sequence[int] | np.ndarray | str | None) -> np.ndarray:
        if isinstance(ids, str):
            if ids not in df.columns:
                raise GalaxypaintError(f"ids: no column {ids!r} in the frame", field="ids")
            ids = df[ids].to_numpy()
        elif ids is None:
            ids = df[ID_COLUMN].to_numpy() if ID_COLUMN in df.columns else np.arange(len(df), dtype=np.int64)
        arr = np.asarray(ids)
        if arr.dtype == object:
            arr = np.array([int(v) for v in arr], dtype=np.uint64 if any(int(v) >= 2**63 for v in arr) else np.int64)
        if arr.shape != (len(df),) or not np.issubdtype(arr.dtype, np.integer):
            raise GalaxypaintError(f"ids: one integer per halo is needed ({len(df):,}), not {arr.dtype} {arr.shape}",
                                   field="ids")
        return arr.astype(np.uint64 if arr.dtype == np.uint64 else np.int64, copy=False)

    def _predict_batch(self, x: np.ndarray, ids: np.ndarray | None, params: dict) -> dict[str, np.ndarray]:
        if self.arrow:
            try:
                return self._predict_arrow(x, ids, params)
            except GalaxypaintError as exc:
                if exc.status != 415:
                    raise
                self.arrow = False  # an older server: JSON from now on
        body: dict[str, Any] = {"columns": {f: x[:, j].tolist() for j, f in enumerate(FEATURE_NAMES)}, **params}
        if isinstance(body.get("targets"), str):
            body["targets"] = body["targets"].split(",")
        if isinstance(body.get("quantiles"), str):
            body["quantiles"] = [float(q) for q in body["quantiles"].split(",")]
        if ids is not None:
            body["ids"] = [int(i) for i in ids]
        answer = self._json("POST", "/v1/predict", json=body)
        return {k: np.asarray(v, dtype=np.float64) for k, v in answer["predictions"].items()}

    def _predict_arrow(self, x: np.ndarray, ids: np.ndarray | None, params: dict) -> dict[str, np.ndarray]:
        import pyarrow as pa

        columns = {f: pa.array(x[:, j]) for j, f in enumerate(FEATURE_NAMES)}
        if ids is not None:
            columns[ID_COLUMN] = pa.array(ids)
        table = pa.table(columns)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        r = self._request("POST", "/v1/predict", params=params, content=sink.getvalue().to_pybytes(),
                          headers={"Content-Type": ARROW_STREAM, "Accept": ARROW_STREAM})
        if r.headers.get("content-type", "").split(";")[0].strip() != ARROW_STREAM:
            return {k: np.asarray(v, dtype=np.float64) for k, v in r.json()["predictions"].items()}
        answer = pa.ipc.open_stream(pa.py_buffer(r.content)).read_all()
        return {n: answer.column(n).to_numpy().astype(np.float64, copy=False) for n in answer.column_names}

    # ------------------------------------------------------------------ jobs

    def job(self, job_id: str) -> dict:
        """A job's record (``GET /v1/jobs/{id}``): status, progress (0-1), message, params, result, error."""
        return self._json("GET", f"/v1/jobs/{_job_id(job_id)}")

    def cancel(self, job_id: str) -> dict:
        """Cancel an active job, or delete a finished one with its files."""
        return self._json("DELETE", f"/v1/jobs/{_job_id(job_id)}")

    def wait(self, job_id: str | dict, progress: bool | None = None, timeout: float | None = None) -> dict:
        """Poll a job until it ends, with a tqdm bar fed by its ``progress``; its record once it succeeded,
        ``GalaxypaintError`` (``.job``: the record) when it failed or was canceled."""
        job_id = _job_id(job_id)
        show = self.progress if progress is None else progress
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=100, desc=job_id, unit="%", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}% "
                                                                    "[{elapsed}{postfix}]")
        t0 = time.monotonic()
        try:
            while True:
                job = self.job(job_id)
                if bar is not None:
                    bar.update(round(100 * float(job.get("progress") or 0), 1) - bar.n)
                    if job.get("message"):
                        bar.set_postfix_str(str(job["message"])[:60], refresh=False)
                if job["status"] in _FINAL:
                    break
                if timeout is not None and time.monotonic() - t0 > timeout:
                    raise GalaxypaintError(f"job_id: {job_id} is still {job['status']} after {timeout:g} s",
                                           field="job_id", job=job)
                time.sleep(self.poll_interval)
        finally:
            if bar is not None:
                bar.close()
        if job["status"] != "succeeded":
            error = job.get("error") or job.get("message") or job["status"]
            raise GalaxypaintError(f"job {job_id} {job['status']}: {error}", field=_field_of(str(error)), job=job)
        return job

    def download(self, job_id: str | dict, out: str | os.PathLike[str], part: str = "file") -> Path:
        """Save one part of a succeeded job's result (file, figure, csv, summary_csv, invalid) to ``out``
        (written to ``<out>.part`` then renamed: never a truncated file at ``out``)."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".part")
        path = f"/v1/jobs/{_job_id(job_id)}/result"
        try:
            with self.http.stream("GET", path, params={"part": part}) as r:
                if r.status_code >= 400:
                    r.read()
                    raise self._error(r)
                with open(tmp, "wb") as fh:
                    for chunk in r.iter_bytes(1 << 20):
                        fh.write(chunk)
        except httpx.HTTPError as exc:
            tmp.unlink(missing_ok=True)
            raise GalaxypaintError(f"GET {self.url}{path}: {exc.__class__.__name__}: {exc}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, out)
        return out

    def paint(self, path_or_frame: str | os.PathLike[str] | pd.DataFrame | None = None, wait: bool = True,
              out: str | os.PathLike[str] | None = None, *, catalog: str | None = None,
              targets: Sequence[str] | str | None = None, model: str | None = None, variant: str | None = None,
              columns: str | Mapping[str, str] | None = None, mode: str | None = None, seed: int | None = None,
              quantiles: Sequence[float] | str | None = None, id_column: str | None = None,
              on_invalid: str | None = None, output_format: str | None = None,
              progress: bool | None = None, column_preset: str | None = None) -> pd.DataFrame | Path | dict:
        """Paint a catalog with a job of the service (``POST /v1/jobs/paint``).

        The catalog: a local file (.parquet, .hdf5, .csv) or a DataFrame (sent as Parquet), uploaded; or
        ``catalog=`` a path in the server's data directory.  Options as ``galaxypaint paint``'s
        (``column_preset``: its ``--preset-columns``).
        ``wait=False``: the job's record at once (``id``, ``status``; follow it with ``wait``/``job``).
        ``wait=True``: waits (a progress bar) and returns the painted catalog as a DataFrame, or, when
        ``out`` is given, downloads it there and returns its path (the rows dropped with
        ``on_invalid="drop"`` are listed in ``<out>.invalid.csv``, as locally)."""
        if output_format is None:
            output_format = _format_of(out) if out is not None else "parquet"
        form: dict[str, str] = {"output_format": output_format}
        if isinstance(columns, Mapping):
            columns = ",".join(f"{k}={v}" for k, v in columns.items())
        options = {"targets": targets if isinstance(targets, str) or targets is None else ",".join(targets),
                   "model": model, "variant": variant, "columns": columns, "mode": mode,
                   "seed": None if seed is None else str(int(seed)),
                   "quantiles": (quantiles if isinstance(quantiles, str) or quantiles is None
                                 else ",".join(f"{q:g}" for q in quantiles)),
                   "id_column": id_column, "on_invalid": on_invalid, "column_preset": column_preset}
        form.update({k: v for k, v in options.items() if v is not None})
        if (path_or_frame is None) == (catalog is None):
            raise GalaxypaintError("file: give exactly one of a local catalog (path or DataFrame) or catalog= "
                                   "(a path in the server's data directory)", field="file")
        if catalog is not None:
            job = self._json("POST", "/v1/jobs/paint", data={**form, "catalog": catalog})
        elif isinstance(path_or_frame, pd.DataFrame):
            with tempfile.TemporaryDirectory(prefix="galaxypaint-") as tmp:
                upload = Path(tmp) / "frame.parquet"
                from app.core.catalogs import write_table

                write_table(path_or_frame, upload)  # with the frame's metadata: its box travels along
                job = self._upload(upload, form)
        else:
            upload = Path(path_or_frame)
            if not upload.is_file():
                raise GalaxypaintError(f"file: no file {upload}", field="file")
            job = self._upload(upload, form)
        if not wait:
            return job
        job = self.wait(job, progress)
        if out is not None:
            path = self.download(job, out)
            if "invalid" in (job.get("result") or {}):
                from app.core.catalogs import invalid_path

                self.download(job, invalid_path(path), part="invalid")
            return path
        with tempfile.TemporaryDirectory(prefix="galaxypaint-") as tmp:
            return _read_frame(self.download(job, Path(tmp) / f"painted.{output_format}"))

    def _upload(self, path: Path, form: dict) -> dict:
        with open(path, "rb") as fh:
            return self._json("POST", "/v1/jobs/paint", data=form,
                              files={"file": (path.name, fh, "application/octet-stream")})

    def pk(self, job_id_or_path: str | dict, wait: bool = True, out: str | os.PathLike[str] | None = None,
           progress: bool | None = None, **options: Any) -> dict:
        """Measure P(k) with a job (``POST /v1/jobs/pk``) on a succeeded paint job (its id or record) or a
        catalog path in the server's data directory; ``options`` as the request's fields (box, nmesh,
        targets, edges, columns, truth, mode, seeds, seed0, model, id_column).  Returns the job's record
        (``wait=False``) or its ``result`` (the spectra summary; with ``out``, a directory, every result
        part is downloaded there too and ``result["files"]`` maps each part to its path)."""
        body = {k: v for k, v in options.items() if v is not None}
        if isinstance(job_id_or_path, dict) or _JOB_ID.match(str(job_id_or_path)):
            body["job_id"] = _job_id(job_id_or_path)
        else:
            body["path"] = str(job_id_or_path)
        job = self._json("POST", "/v1/jobs/pk", json=body)
        if not wait:
            return job
        job = self.wait(job, progress)
        result = dict(job.get("result") or {})
        if out is not None:
            files = {}
            for part in ("file", "figure", "csv", "summary_csv"):
                name = result.get(part)
                if isinstance(name, str):
                    files[part] = self.download(job, Path(out) / name, part=part)
            result["files"] = files
        return result


def _job_id(job: str | dict) -> str:
    return str(job["id"] if isinstance(job, dict) else job)
