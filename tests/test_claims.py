"""The claims ledger: verdicts on constructed data with known effects, the registry, the
report's ledger, verdict guards in the baseline, and independent seeds."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from dmlviz import baseline, claims, ledger, outputs
from dmlviz.data import PKSampler
from dmlviz.utils import derive_seed

PAPERS = Path(__file__).resolve().parents[2] / "shared" / "papers"
CLAIM = claims.Claim(id="aia.test_claim", where="Table 3", quote="ours is better",
                     metric="Recall@1", a="A", b="B", direction="greater", notebook="05")


def test_known_positive_zero_and_negative_effects():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.5, 0.6, 5)
    assert claims.evaluate(CLAIM, b + 0.1 + rng.normal(0, 0.01, 5), b).verdict == "reproduced"
    assert claims.evaluate(CLAIM, b - 0.1 + rng.normal(0, 0.01, 5), b).verdict == "reversed"
    zero = claims.evaluate(CLAIM, b + rng.normal(0, 0.05, 5), b)
    assert zero.verdict == "not established" and zero.low < 0 < zero.high


def test_interval_is_the_student_t_interval_of_paired_differences():
    a, b = np.array([0.8, 0.83, 0.79]), np.array([0.7, 0.74, 0.72])
    d = a - b
    r = claims.evaluate(CLAIM, a, b)
    h = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert r.effect == pytest.approx(d.mean())
    assert (r.low, r.high) == pytest.approx((d.mean() - h, d.mean() + h))
    assert r.seeds == 3 and r.agree == 3


def test_pairing_matters():
    """The same values unpaired would not separate; paired they do (a shared seed effect)."""
    base = np.array([0.5, 0.7, 0.9, 0.6, 0.8])
    r = claims.evaluate(CLAIM, base + 0.02, base)
    assert r.verdict == "reproduced" and r.high - r.low < 1e-9


def test_query_bootstrap_widens_the_interval():
    rng = np.random.default_rng(1)
    hits_a = (rng.random((3, 60)) < 0.6).astype(float)
    hits_b = (rng.random((3, 60)) < 0.55).astype(float)
    a, b = hits_a.mean(1), hits_b.mean(1)
    without = claims.evaluate(CLAIM, a, b)
    with_q = claims.evaluate(CLAIM, a, b, hits_a=hits_a, hits_b=hits_b)
    assert with_q.queries == 60
    assert with_q.high - with_q.low > without.high - without.low


def test_one_seed_gives_no_interval_and_deterministic_claims_need_none():
    assert claims.evaluate(CLAIM, [0.9], [0.1]).verdict == "not established"
    exact = claims.Claim(id="csalr.test_exact", where="eq. (16)", quote="exact", metric="error",
                         a="error", b=None, direction="less", notebook="01", bound=1e-8,
                         deterministic=True)
    assert claims.evaluate(exact, [1e-15]).verdict == "reproduced"
    assert claims.evaluate(exact, [0.5]).verdict == "reversed"


def test_equal_direction_uses_the_tolerance():
    eq = claims.Claim(id="aia.test_eq", where="Table 8", quote="0.12 M", metric="params (M)",
                      a="SE", b=None, direction="equal", notebook="05", bound=0.12,
                      tolerance=0.01, deterministic=True)
    assert claims.evaluate(eq, [0.125]).verdict == "reproduced"
    assert claims.evaluate(eq, [0.2]).verdict == "reversed"


@pytest.mark.parametrize("a, b, message", [
    ([], [], "at least one value"),
    ([0.1, float("nan")], [0.1, 0.2], "non-finite"),
    ([0.1, 0.2], [0.1], "one value per seed"),
    ([0.1, 0.2], None, "pass b"),
])
def test_bad_values_are_refused(a, b, message):
    with pytest.raises(ValueError, match=message):
        claims.evaluate(CLAIM, a, b)


def test_registry_claims_are_complete_and_quote_their_paper():
    """Every registered claim names a known paper and notebook, and its quote stands in the
    paper's text (white space and case folded; garbled maths may be repaired, so only quotes
    of plain prose are checked letter for letter)."""
    data = tomllib.loads(claims.REGISTRY.read_text(encoding="utf-8"))
    assert len(data["claim"]) == len(claims.CLAIMS)
    notebooks = {p.stem for p in (Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")}
    for c in claims.CLAIMS.values():
        assert c.notebook in notebooks, f"{c.id}: unknown notebook {c.notebook!r}"
        if PAPERS.is_dir() and "\\" not in c.quote:
            text = "".join((PAPERS / c.paper).read_text(encoding="utf-8").split()).lower()
            text = text.replace("$", "")  # inline maths markers of the PDF extraction
            for part in c.quote.split("…"):  # an elided quote: every part stands in the paper
                part = "".join(part.split()).lower().replace("$", "")[:80]  # layout folded
                assert part in text, f"{c.id}: quote not in {c.paper}: {part!r}"


def test_assess_writes_claims_json_and_a_verdict_metric(tmp_path):
    outputs.set_output_dir(tmp_path)
    cid = next(iter(claims.CLAIMS))
    c = claims.CLAIMS[cid]
    kwargs = {} if c.b is None else {"b": [0.1, 0.1, 0.1]}
    claims.assess(cid, [0.9, 0.8, 0.85], **kwargs)
    saved = json.loads((tmp_path / "claims.json").read_text())
    assert saved[0]["id"] == cid and saved[0]["quote"] == c.quote
    assert outputs.recorded()[f"claim:{cid}"] == saved[0]["verdict"]
    assert cid in repr(claims.table()) and "<table" in claims.table()._repr_html_()
    with pytest.raises(ValueError, match="unknown claim"):
        claims.assess("aia.no_such_claim", [1.0])


def _summary(verdict: str) -> dict:
    claim = {"id": "aia.x", "verdict": verdict, "effect": 0.1, "low": 0.05, "high": 0.15,
             "seeds": 3, "agree": 3, "paper": "aia.txt", "where": "Table 3", "quote": "q",
             "compared": "R@1: a > b"}
    return {"profile": "quick", "device_resolved": "cpu", "notebooks": {"05_aia": {
        "status": "ok", "html": "05_aia/05_aia.html", "claims_cell": "abc", "claims": [claim],
        "metrics": {"claim:aia.x": verdict}}}}


def test_ledger_rows_link_to_the_claims_cell_and_changes_are_listed():
    rows = ledger.ledger(_summary("reproduced"))
    assert rows[0]["link"] == "05_aia/05_aia.html#cell-id=abc" and rows[0]["device"] == "cpu"
    assert "reproduced" in "\n".join(ledger.ledger_markdown(_summary("reproduced")))
    assert 'class="v ok"' in ledger.ledger_html(_summary("reproduced"))
    assert ledger.verdict_changes(_summary("reproduced"), _summary("not established")) == [
        ("aia.x", "reproduced", "not established")]


def test_a_changed_verdict_is_its_own_regression():
    entries = {"claim:aia.x": {"value": "reproduced"}}
    regs = baseline.find_regressions({"claim:aia.x": "not established"}, entries)
    assert regs[0]["reason"] == "verdict changed: reproduced → not established"


def test_baseline_from_seed_runs(tmp_path):
    runs = []
    for seed, (r1, gain, verdict) in enumerate([(0.80, 0.010, "reproduced"),
                                                (0.84, -0.02, "reproduced"),
                                                (0.82, 0.030, "not established")]):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({
            "profile": "quick", "device_resolved": "cpu", "parameters": {"seed": seed},
            "notebooks": {"nb": {"status": "ok", "metrics": {
                "nb.r1": r1, "nb.gain": gain, "claim:aia.x": verdict, "nb.count": 7,
                "claim:aia.y": "reproduced"}}}}))
        runs.append(d)
    path, changes = baseline.make_baseline(runs, tmp_path / "quick.json")
    entries = baseline.load_baseline(path)["notebooks"]["nb"]
    assert entries["nb.r1"]["value"] == 0.8 and entries["nb.r1"]["abs"] == pytest.approx(0.08)
    assert "nb.gain" not in entries  # its tolerance exceeds its size: guards nothing
    assert "claim:aia.x" not in entries  # its verdict flips with the seed: not guarded
    assert entries["claim:aia.y"]["value"] == "reproduced"  # a stable verdict is
    assert any("claim:aia.x differs across the runs" in c for c in changes)
    assert entries["nb.count"]["value"] == 7 and "abs" not in entries["nb.count"]
    assert any("dropped nb.gain" in c for c in changes)


def test_derive_seed_streams_are_independent():
    """No two (seed, epoch) pairs for seeds 0-4 and epochs 0-9 give the same batch order."""
    labels = torch.arange(20).repeat_interleave(6)
    orders = set()
    for seed in range(5):
        sampler = PKSampler(labels, p=4, k=2, seed=seed)
        for _ in range(10):
            orders.add(tuple(torch.cat(list(sampler)).tolist()))
    assert len(orders) == 50
    assert derive_seed(1, 0) != derive_seed(0, 1)
    with pytest.raises(ValueError, match="counter 1"):
        derive_seed(0, -1)


def test_the_registry_covers_every_paper():
    """At least 25 headline claims, from all five papers, each tested by one notebook."""
    assert len(claims.CLAIMS) >= 25
    assert {c.id.split(".")[0] for c in claims.CLAIMS.values()} == set(claims.PAPERS)


def test_one_seed_with_queries_is_still_not_established():
    hits = np.ones((1, 50)), np.zeros((1, 50))
    r = claims.evaluate(CLAIM, [1.0], [0.0], hits_a=hits[0], hits_b=hits[1])
    assert r.verdict == "not established" and "one seed" in r.reason


@pytest.mark.parametrize("kwargs, message", [
    ({"hits_a": np.ones((3, 4))}, "pass both hits_a and hits_b"),
    ({"hits_b": np.ones((3, 4))}, "pass both hits_a and hits_b"),
    ({"hits_a": np.zeros((3, 4)), "hits_b": np.zeros((3, 4))}, "do not average to a and b"),
    ({"hits_a": np.ones((2, 4)), "hits_b": np.zeros((2, 4))}, r"\(seeds, queries\)"),
])
def test_query_values_must_be_paired_and_match(kwargs, message):
    with pytest.raises(ValueError, match=message):
        claims.evaluate(CLAIM, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], **kwargs)


def test_whole_classes_resampled_when_queries_are_correlated():
    """Queries of one class share their fate; resampling classes widens the interval."""
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(12), 10)
    per_class = rng.random(12) < 0.5  # the whole class is hit or missed
    hits_a = np.tile(per_class[groups].astype(float), (3, 1))
    hits_b = np.tile((rng.random(120) < 0.5).astype(float), (3, 1))
    a, b = hits_a.mean(1), hits_b.mean(1)
    single = claims.evaluate(CLAIM, a, b, hits_a=hits_a, hits_b=hits_b)
    by_class = claims.evaluate(CLAIM, a, b, hits_a=hits_a, hits_b=hits_b, groups=groups)
    assert by_class.high - by_class.low > single.high - single.low


def test_deterministic_values_that_differ_span_their_range_and_bounds_take_no_b():
    exact = claims.Claim(id="csalr.test_det", where="eq. (16)", quote="exact", metric="error",
                         a="error", b=None, direction="less", notebook="01", bound=0.0,
                         deterministic=True)
    r = claims.evaluate(exact, [-0.3, 0.1])
    assert (r.low, r.high) == pytest.approx((-0.3, 0.1)) and r.verdict == "not established"
    with pytest.raises(ValueError, match="pass a alone"):
        claims.evaluate(exact, [0.1], [0.2])


def test_equal_over_several_seeds():
    eq = claims.Claim(id="aia.test_eq5", where="Table 8", quote="q", metric="m", a="x", b=None,
                      direction="equal", notebook="05", bound=1.0, tolerance=0.1)
    assert claims.evaluate(eq, [1.01, 0.99, 1.0, 1.02, 0.98]).verdict == "reproduced"
    assert claims.evaluate(eq, [1.5, 1.6, 1.55, 1.52, 1.58]).verdict == "reversed"
    assert claims.evaluate(eq, [0.8, 1.2, 1.0, 0.9, 1.1]).verdict == "not established"
