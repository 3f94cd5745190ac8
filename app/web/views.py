"""What the pages show, as plain data: the registry grouped, a run's figures and metrics, the catalogs
a job may read and the column presets it may convert them with, a P(k) job's summary.  No HTTP and no
HTML here (the templates lay it out), so it is tested directly.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.catalogs import CatalogError, detect_format
from app.core.column_presets import PRESET_NAMES, TRAINED_MASS_DEFINITION, get_preset
from app.core.registry import DEFAULT_ALIAS, ModelVersion, Registry
from app.core.schema import COLUMNS, FEATURES, TARGET_NAMES

#: the metrics a version's row shows: (key in ``ModelVersion.metrics``, heading, format)
METRICS = (("pearson_r", "r", ".4f"), ("mse", "MSE", ".4g"), ("ks_d", "K–S D", ".4f"),
           ("onnx_max_abs_diff", "ONNX max |Δ|", ".1e"))
JOINT = "several targets"


@dataclass
class ModelRow:
    name: str
    kind: str
    shown: ModelVersion  # the version at ``production`` if set, else the latest
    n_versions: int
    aliases: dict[str, int]


@dataclass
class Group:
    target: str
    variant: str
    unit: str
    models: list[ModelRow] = field(default_factory=list)


def aliases_of(versions: list[ModelVersion]) -> dict[str, int]:
    return {a: v.version for v in versions for a in v.aliases}


def registry_groups(registry: Registry) -> list[Group]:
    """Every model, grouped by target and variant (schema order; multi-target models last)."""
    groups: dict[tuple[str, str], Group] = {}
    for name in registry.names():
        versions = registry.versions(name)
        if not versions:
            continue
        latest = versions[-1]
        target = latest.target if len(latest.targets) <= 1 else JOINT
        aliases = aliases_of(versions)
        shown = next((v for v in versions if v.version == aliases.get(DEFAULT_ALIAS)), latest)
        group = groups.setdefault((target, latest.variant), Group(target, latest.variant,
                                                                  COLUMNS[target].unit if target in COLUMNS else ""))
        group.models.append(ModelRow(name, latest.kind, shown, len(versions), aliases))
    order = {t: i for i, t in enumerate(TARGET_NAMES)}
    for g in groups.values():  # the stack first: it is what serves
        g.models.sort(key=lambda m: (m.kind != "stack", m.name))
    return sorted(groups.values(), key=lambda g: (order.get(g.target, len(order)), g.variant))


def training_domain(mv: ModelVersion) -> list[dict[str, Any]]:
    """The feature ranges a version was trained on, with units (predictions outside are extrapolations)."""
    out = []
    for col in FEATURES:
        dom = (mv.training_domain or {}).get(col.name) or {}
        out.append({"name": col.name, "unit": col.unit, "description": col.description, "min": dom.get("min"),
                    "max": dom.get("max")})
    return out


# ----------------------------------------------------------------------------- runs

_FIGURE = re.compile(r"^fig(?P<number>\d+)?(?P<letter>[a-z]?)_(?P<rest>.+)\.png$")
_VARIANT_SUFFIX = re.compile(r"_(raw|smogn|path|sample)$")
CAPTIONS = {
    "fig2": "Fig. 2 — distributions of true and predicted values (test set)",
    "fig2s": "Fig. 2s — marginals: true, one sampled catalog and the mean stack",
    "fig3": "Fig. 3 — Pearson r per model (test set)",
    "fig4": "Fig. 4 — Kolmogorov–Smirnov D per model (test set)",
    "fig5": "Fig. 5 — predicted vs true, normalized density (test set)",
    "fig6": "Fig. 6 — joint relations: stacks vs truth (test set)",
    "fig7": "Fig. 7 — halo-feature permutation importance (normalized to M_h)",
    "fig8": "Fig. 8 — importance of the models within the stack (normalized to LGBM)",
    "fig9": "Fig. 9 — P(k) of predicted vs true populations, test set",
    "fig_corner": "Joint distribution of the four properties: true vs sampled",
    "fig_pit": "Sampler calibration: PIT histograms and interval coverage per M_h quartile",
}


@dataclass
class Figure:
    key: str  # fig2, fig9, fig_corner ...
    caption: str
    panels: list[tuple[str, str]]  # (label, artefact name): raw and SMOGN side by side


def run_figures(artefacts: list[dict[str, Any]]) -> list[Figure]:
    """The report's PNG figures, in figure order; the variants of one figure (``fig9_pk_raw``,
    ``fig9_pk_smogn``, ``fig9_pk_sample``) become the panels of one row."""
    figures: dict[str, Figure] = {}
    for art in artefacts:
        name = art["name"]
        m = _FIGURE.match(name)
        if art.get("media_type") != "image/png" or m is None:
            continue
        key = f"fig{m['number']}{m['letter']}" if m["number"] else f"fig_{m['rest']}"
        variant = _VARIANT_SUFFIX.search(m["rest"])
        label = {"raw": "raw", "smogn": "SMOGN", "sample": "sampled catalogs"}.get(variant[1] if variant else "", "")
        fig = figures.setdefault(key, Figure(key, CAPTIONS.get(key, name), []))
        fig.panels.append((label, name))
    for fig in figures.values():
        fig.panels.sort(key=lambda p: ("", "raw", "SMOGN", "sampled catalogs").index(p[0]))

    def order(key: str) -> tuple[int, str]:
        digits = re.match(r"fig(\d+)", key)
        return (int(digits[1]) if digits else 99, key)

    return [figures[k] for k in sorted(figures, key=order)]


def run_metrics(run: dict) -> list[dict[str, Any]]:
    """One row per (target, variant, model) of a run's test-set metrics; the stacks after their members."""
    rows = []
    for target in TARGET_NAMES:
        for variant, res in ((run.get("metrics") or {}).get(target) or {}).items():
            if not isinstance(res, dict):
                continue
            named = [*(res.get("models") or {}).items(), ("stack", res.get("stack")),
                     ("selected stack", res.get("selected_stack"))]
            rows += [{"target": target, "variant": variant, "model": kind, **m} for kind, m in named
                     if isinstance(m, dict)]
    return rows


def report_documents(artefacts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's non-figure files (report.html, report.md, tables): linked, served by the API."""
    return [a for a in artefacts if a.get("media_type") != "image/png"]


# ----------------------------------------------------------------------------- catalogs

MAX_CATALOGS = 200


def data_catalogs(data_dir: Path) -> list[str]:
    """Catalogs a paint job may read in the data directory (paths relative to it): readable formats,
    no hidden names (the token file, sessions), not the jobs' own files; at most ``MAX_CATALOGS``."""
    root = data_dir.resolve()
    found: list[str] = []
    for current, dirs, files in os.walk(root):
        rel = Path(current).relative_to(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (rel == Path(".") and d == "jobs"))
        for name in sorted(files):
            if name.startswith("."):
                continue
            try:
                detect_format(name)
            except CatalogError:
                continue
            found.append((rel / name).as_posix())
            if len(found) >= MAX_CATALOGS:
                return found
    return found


@dataclass
class Preset:
    name: str  # the value the API's ``column_preset`` takes
    title: str  # the code or simulation writing such catalogs
    converts: list[str]  # "M_h = log10(Mvir)", ... : the halo features it makes, for people
    note: str = ""  # when M_h may come in a mass definition other than the models' own
    lacks: list[str] = field(default_factory=list)  # features such catalogs do not have: to map from columns


def column_presets() -> list[Preset]:
    """The column presets a paint job may apply (``app.core.column_presets``), with the features each
    converts from the catalog's own columns and units."""
    features = {c.name for c in FEATURES}
    out = []
    for name in PRESET_NAMES:
        preset = get_preset(name)
        fallback = preset.mass_definition  # the definition of the last M_h conversion, used when no other applies
        preferred = [preset.mass_of(c) for c in preset.conversions_of("M_h")][:-1]
        note = "" if fallback == TRAINED_MASS_DEFINITION else (
            (f"M_h from {TRAINED_MASS_DEFINITION} when the catalog has that column; else "
             if TRAINED_MASS_DEFINITION in preferred else "")
            + f"{fallback}, not the {TRAINED_MASS_DEFINITION} the models were trained on")
        out.append(Preset(name, preset.title, [f"{c.column} = {c.formula}" for c in preset.conversions
                                               if c.column in features], note,
                          [c.name for c in FEATURES if c.name in preset.absent]))
    return out


# ----------------------------------------------------------------------------- P(k) jobs

#: a P(k) job's summary columns (key in its ``result["summary"]`` rows, heading, format or None for text):
#: a catalog's P(k) (predicted vs true) or an ensemble's (sampled catalogs vs the true one); a column
#: is shown when the rows have it
PK_COLUMNS = (("target", "Property", None), ("bin", "Bin", None), ("range", "Range", None),
              ("n_pred", "N predicted", ".0f"), ("n_true", "N true", ".0f"),
              ("n_sample_mean", "N sampled (mean)", ".1f"), ("n_sample_std", "N sampled (std)", ".1f"),
              ("chi2", "χ²", ".4g"), ("chi2_dof", "χ²/dof", ".3g"),
              ("rel_diff_pct", "Mean (P_pred − P_true)/P_true [%]", "+.2f"), ("consistency", "Consistency", ".3g"),
              ("rel_bias", "Mean |⟨P⟩/P_true − 1|", ".3f"))


def pk_summary(job: dict[str, Any]) -> tuple[list[tuple[str, str, str | None]], list[dict[str, Any]]]:
    """(columns, rows) of a succeeded P(k) job's summary table; ([], []) for any other job."""
    rows = (job.get("result") or {}).get("summary") if job.get("kind") == "pk" else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return [], []
    return [c for c in PK_COLUMNS if any(c[0] in r for r in rows)], rows
