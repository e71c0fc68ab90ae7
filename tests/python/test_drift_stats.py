"""The monitor's drift statistics against independent implementations: the same two samples through
Ferrite's sketch (the hidden `ferrite drift-stats`, which builds the reference profile and the live
histogram exactly as the server's monitor does) and through scipy.stats.ks_2samp (KS) and a direct
numpy computation (PSI over the reference's deciles, Jensen-Shannon over the sketch's bins).

Tolerances: KS is exact (1e-12) when the reference has at most 101 distinct values; otherwise the
sketch reads low by at most its stated `ks_error_bound` (the largest reference mass strictly between
two cut points, about 1/100). PSI and JS are computed from the same bins, so they agree to 1e-9.
"""

import json
import os
import subprocess

import numpy as np
import pytest
from scipy.stats import ks_2samp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("FERRITE_BIN", os.path.join(ROOT, "target", "debug", "ferrite"))
EPS = 1e-4  # PSI's floor for an empty bin (src/monitor/stats.rs PSI_EPSILON, README)


def sketch(reference, live):
    out = subprocess.run(
        [BIN, "drift-stats"],
        input=json.dumps({"reference": list(map(float, reference)), "live": list(map(float, live))}),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def edges_of(reference):
    """The sketch's cut points, independently: every distinct value, or the percentiles (lower)."""
    distinct = np.unique(reference)
    if len(distinct) <= 101:
        return distinct
    return np.unique(np.quantile(reference, np.arange(101) / 100, method="lower"))


def psi_numpy(reference, live):
    deciles = np.unique(np.quantile(reference, np.arange(1, 10) / 10, method="lower"))
    idx_r = np.searchsorted(deciles, reference, side="left")
    idx_l = np.searchsorted(deciles, live, side="left")
    k = len(deciles) + 1
    p = np.bincount(idx_r, minlength=k) / len(reference)
    q = np.bincount(idx_l, minlength=k) / len(live)
    p, q = np.maximum(p, EPS), np.maximum(q, EPS)
    return float(np.sum((q - p) * np.log(q / p))), deciles


def js_numpy(reference, live, edges):
    def hist(x):
        x = np.asarray(x)
        below = x < edges[0]
        idx = np.where(below, 0, 1 + np.searchsorted(edges, x, side="left"))
        return np.bincount(idx, minlength=len(edges) + 2) / len(x)

    p, q = hist(reference), hist(live)
    m = (p + q) / 2

    def kl(a):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)


CASES = {
    # name: (reference, live) generators from a seeded RNG
    "normal_same": lambda r: (r.normal(0, 1, 5000), r.normal(0, 1, 1500)),
    "normal_shift": lambda r: (r.normal(0, 1, 5000), r.normal(0.4, 1, 1500)),
    "normal_scale": lambda r: (r.normal(0, 1, 3000), r.normal(0, 2, 800)),
    "outside_range": lambda r: (r.uniform(0, 1, 2000), r.uniform(0.5, 3, 700)),
    "pixels_ties": lambda r: (r.integers(0, 17, 1437).astype(float), np.round(r.integers(0, 17, 360) * 0.6)),
    "classes": lambda r: (r.integers(0, 10, 1437).astype(float), r.choice(10, 360, p=[0.3] + [0.7 / 9] * 9).astype(float)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sketch_matches_scipy_ks_and_numpy_psi_js(case):
    rng = np.random.default_rng(abs(hash(case)) % (2**32))
    reference, live = CASES[case](rng)
    got = sketch(reference, live)
    # serde_json reads a float to within one ulp (no float_roundtrip feature): rtol 1e-15.
    np.testing.assert_allclose(np.array(got["edges"]), edges_of(reference), rtol=1e-15, atol=0)

    want_ks = ks_2samp(reference, live).statistic
    bound = got["ks_error_bound"]
    if len(np.unique(reference)) <= 101:
        assert bound == 0.0
        assert abs(got["ks"] - want_ks) < 1e-12, (got["ks"], want_ks)
    else:
        assert 0 < bound <= 0.011
        assert got["ks"] <= want_ks + 1e-12 and want_ks - got["ks"] <= bound + 1e-12, (got["ks"], want_ks, bound)

    want_psi, deciles = psi_numpy(reference, live)
    np.testing.assert_allclose(np.array(got["deciles"]), deciles, rtol=1e-15, atol=0)
    assert abs(got["psi"] - want_psi) < 1e-9, (got["psi"], want_psi)
    want_js = js_numpy(reference, live, edges_of(reference))
    assert abs(got["js"] - want_js) < 1e-9, (got["js"], want_js)
