from app.core import schema


def test_feature_order_is_the_published_models_input_order(shared_dir):
    """The paper authors' boosters take the features in this order: graphs and imports rely on it."""
    for booster in sorted((shared_dir / "published_models").glob("*.txt")):
        line = next(x for x in booster.read_text().splitlines() if x.startswith("feature_names="))
        assert tuple(line.removeprefix("feature_names=").split()) == schema.FEATURE_NAMES, booster.name


def test_aliases_lead_back_to_their_column_and_exact_names_win_over_aliases():
    # One collision is deliberate: TNG tables call the halo position Z_h, and the formation redshift
    # is z_h.  Case-insensitively they are one word; the exact name decides (canonicalize).
    collisions = set()
    seen: dict[str, str] = {}
    for col in schema.COLUMNS.values():
        for alias in (col.name, *col.aliases):
            if seen.setdefault(alias.lower(), col.name) != col.name:
                collisions.add(alias.lower())
    assert collisions == {"z_h"}
    for col in schema.COLUMNS.values():
        for alias in {a for a in (col.name, *col.aliases) if a.lower() not in collisions}:
            assert schema.canonical_name(f"  {alias.upper()} ") == col.name
    from app.core.catalogs import canonicalize
    import pandas as pd

    table = canonicalize(pd.DataFrame(columns=["X_h", "Y_h", "Z_h", "z_h", "stellar_mass"]))
    assert list(table.columns) == ["x", "y", "z", "z_h", "smass"]


def test_aliases_are_case_insensitive():
    assert schema.canonical_name("stellar_mass") == "smass"
    assert schema.canonical_name("STELLAR_MASS") == "smass"
    assert schema.canonical_name("X_h") == "x"
    assert schema.canonical_name("z_H") == "z"
    assert schema.canonical_name("m_h") == "M_h"
    assert schema.canonical_name("colour") == "color"
    assert schema.canonical_name("split") == "split"
    assert schema.canonical_name("x_g") is None


def test_every_column_documented_with_unit_and_range():
    for rec in schema.describe():
        assert rec["description"]
        assert rec["valid_min"] < rec["valid_max"]
    assert {r["name"] for r in schema.describe()} >= set(schema.FEATURE_NAMES + schema.TARGET_NAMES)
    # published TNG300 feature means must sit inside the valid ranges
    for name, (mean, _) in schema.TNG300_FEATURE_MOMENTS.items():
        lo, hi = schema.COLUMNS[name].valid
        assert lo < mean < hi
