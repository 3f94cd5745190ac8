from app.core import schema


def test_features_and_targets_in_paper_order():
    assert schema.FEATURE_NAMES == ("M_h", "C_h", "S_h", "z_h", "Delta3_h")
    assert schema.TARGET_NAMES == ("smass", "sSFR", "radius", "color")


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
