"""The claims ledger: every paper claim a notebook tests, evaluated the same sound way.

A :class:`Claim` (from the registry ``claims.toml`` beside this file, :data:`CLAIMS`) quotes a
paper's sentence, says where it stands (section, table, figure of the text in
``shared/papers/``), what is compared (a metric of method ``a`` against method ``b``, or against
a ``bound``) and the direction the paper asserts. A notebook trains or measures both sides
over **independent** seeds and calls :func:`assess`, which evaluates and records the result.

How the verdict is computed (:func:`evaluate`)
----------------------------------------------
* Per seed s, the paired difference ``d_s = a_s - b_s`` (or ``a_s - bound``). The **effect**
  is the mean of ``d_s`` over the S seeds.
* Seed variation: a Student-t interval, half-width ``t(0.975, S-1) · sd(d) / sqrt(S)``.
  Fewer than two seeds give no interval (the verdict is then *not established*, whatever
  the queries say), unless the claim is ``deterministic`` (a count, an exact float64 error),
  where the interval is ``[min d, max d]`` (the value itself when the runs agree).
* Test-set sampling (retrieval metrics): with per-query values ``(S, Q)`` for both sides
  (``hits_a``, ``hits_b``: Recall@1 hits or per-query AP, whose means must equal ``a`` and
  ``b``), the test set is resampled with replacement ``n_boot`` times — whole classes when
  ``groups`` gives each query's class (queries of one class are correlated, and which
  classes were drawn is the main source of variance on unseen classes), else single
  queries — with the same draw for every seed and both sides, so the pairing is kept. The
  standard deviation of the resampled seed-mean difference, times 1.96, is the query
  half-width. The two half-widths add in quadrature, ``h = sqrt(h_seed² + h_query²)``, and
  the interval is ``effect ± h``: an approximation that treats the two sources as
  independent (a two-level bootstrap would be exact; with 3–5 seeds it is not reliable).
  Paired differences that are identical on every seed, without query values, give a
  zero-width interval: the seeds did not change the outcome.
* Verdict: **reproduced** when the interval excludes 0 on the paper's side; **reversed** when
  it excludes 0 on the other side; **not established** when it contains 0; **not testable
  here** when the notebook says why it cannot be tested (:func:`not_testable`). For
  ``direction = "equal"`` (a claimed value, within ``tolerance``): reproduced when the whole
  95 % interval lies within ``±tolerance`` of it (a conservative equivalence test; TOST
  would use the 90 % interval), reversed when it lies wholly outside.
* Many claims at 95 % each: about one in twenty true-null claims is expected to show a
  reproduced or reversed verdict by chance; read single verdicts with that in mind.

Every result is written to ``<out_dir>/claims.json`` at once (a notebook that fails later
keeps it) and each verdict is also recorded as the metric ``claim:<id>``, so a baseline can
guard the verdict itself. :func:`table` shows the notebook's claims as one table.
"""

from __future__ import annotations

import html
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from dmlviz.outputs import CLAIMS_FILE, output_dir, record

REGISTRY = Path(__file__).with_name("claims.toml")
VERDICTS = ("reproduced", "reversed", "not established", "not testable here")
DIRECTIONS = ("greater", "less", "equal")
PAPERS = {
    "csalr": "csalr-compressed-self-attention-ijcai20.txt",
    "soa": "multi-head-global-local-soa-hybrid-loss.txt",
    "crt": "crt-coded-residual-transform-neurips22.txt",
    "aia": "aia-attention-in-attention-kernels-tpami.txt",
    "refine": "refine-attend-to-context-neighbours.txt",
}
PAPER_TITLES = {
    "csalr": "CSALR — Chen et al., IJCAI-20",
    "soa": "Global + local features, SOA, hybrid loss — Ebrahimpour et al.",
    "crt": "CRT — Kan et al., NeurIPS 2022",
    "aia": "Attention in Attention — Fang et al., TPAMI",
    "refine": "Neighbour refinement — \"Attend to context…\" (ICLR submission)",
}


@dataclass(frozen=True)
class Claim:
    """One claim of a paper, as the registry states it.

    Attributes:
        id: ``"<paper>.<name>"``, e.g. ``"aia.lin_aia_beats_se"``; the prefix is a key of
            :data:`PAPERS`.
        where: its place in the paper (``"Table 3"``, ``"Sec. 3.3"``, ``"Fig. 1"``).
        quote: the paper's own words.
        metric: what is compared (``"Recall@1"``, ``"relative error"``, …).
        a: the method (or quantity) the paper says is better.
        b: what it is compared with, or ``None`` for a comparison with ``bound``.
        direction: ``"greater"`` (a > b), ``"less"`` (a < b) or ``"equal"`` (a = b within
            ``tolerance``).
        notebook: the notebook that tests it (``"05_aia_kernel_attention"``).
        bound: the value ``a`` is compared with when ``b`` is ``None``.
        tolerance: the allowed distance for ``"equal"``.
        deterministic: the quantity has no seed noise (a count, an exact computation).
        note: how the workbench tests it, when that differs from the paper's set-up.
    """

    id: str
    where: str
    quote: str
    metric: str
    a: str
    b: str | None
    direction: str
    notebook: str
    bound: float = 0.0
    tolerance: float = 0.0
    deterministic: bool = False
    note: str = ""

    @property
    def paper(self) -> str:
        """The paper's file in ``shared/papers/``."""
        return PAPERS[self.id.split(".")[0]]

    @property
    def compared(self) -> str:
        """``"Recall@1: Lin+AiA > SE"`` — the comparison in a few words."""
        sign = {"greater": ">", "less": "<", "equal": "≈"}[self.direction]
        other = self.b if self.b is not None else f"{self.bound:g}"
        return f"{self.metric}: {self.a} {sign} {other}"


@dataclass
class Result:
    """A claim's evaluation: the effect, its 95 % interval, the seeds and the verdict."""

    id: str
    verdict: str
    effect: float | None = None
    low: float | None = None
    high: float | None = None
    seeds: int = 0
    agree: int = 0
    queries: int = 0
    reason: str = ""
    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        claim = CLAIMS[self.id]
        return {**asdict(self), "paper": claim.paper,
                "paper_title": PAPER_TITLES[claim.id.split(".")[0]], "where": claim.where,
                "quote": claim.quote,
                "compared": claim.compared, "notebook": claim.notebook}


def _check_claim(claim: Claim) -> Claim:
    prefix = claim.id.split(".")[0]
    if prefix not in PAPERS or "." not in claim.id:
        raise ValueError(f"claim id {claim.id!r} must be '<paper>.<name>' with paper one of "
                         f"{tuple(PAPERS)}")
    if claim.direction not in DIRECTIONS:
        raise ValueError(f"claim {claim.id!r}: direction must be one of {DIRECTIONS}, "
                         f"got {claim.direction!r}")
    if not claim.quote.strip():
        raise ValueError(f"claim {claim.id!r} needs the paper's sentence in 'quote'")
    return claim


def load_registry(path: str | Path = REGISTRY) -> dict[str, Claim]:
    """Read the claims registry (a TOML file with one ``[[claim]]`` table per claim)."""
    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    claims: dict[str, Claim] = {}
    for entry in data.get("claim", []):
        claim = _check_claim(Claim(**{"b": None, **entry}))  # no b: compared with bound
        if claim.id in claims:
            raise ValueError(f"{path}: claim id {claim.id!r} appears twice")
        claims[claim.id] = claim
    return claims


CLAIMS: dict[str, Claim] = load_registry()


def _as_seed_values(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} needs at least one value (one per seed), got none")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(arr)).sum())} non-finite value(s) "
                         f"of {arr.size}: {arr.tolist()}")
    return arr


def _query_halfwidth(claim: Claim, a: np.ndarray, b: np.ndarray, hits_a, hits_b, groups,
                     n_boot: int, seed: int) -> tuple[float, int]:
    if claim.b is not None and (hits_a is None) != (hits_b is None):
        raise ValueError(f"claim {claim.id} compares two methods: pass both hits_a and hits_b "
                         "(the same queries, paired), or neither")
    ha = np.atleast_2d(np.asarray(hits_a, dtype=float))
    hb = (np.atleast_2d(np.asarray(hits_b, dtype=float)) if hits_b is not None
          else np.zeros_like(ha))
    if ha.shape != hb.shape or ha.shape[0] != a.size:
        raise ValueError(f"claim {claim.id}: hits_a and hits_b must both be (seeds, queries) = "
                         f"({a.size}, Q), got {ha.shape} and {hb.shape}")
    if not (np.isfinite(ha).all() and np.isfinite(hb).all()):
        raise ValueError(f"claim {claim.id}: hits_a / hits_b hold non-finite values")
    if not np.allclose(ha.mean(1), a, atol=1e-6) or (
            hits_b is not None and not np.allclose(hb.mean(1), b, atol=1e-6)):
        raise ValueError(f"claim {claim.id}: the per-query values do not average to a and b "
                         f"(means {ha.mean(1).round(4).tolist()} vs a {a.round(4).tolist()}): "
                         "they must be the same metric on the same runs")
    diff = ha - hb  # (S, Q)
    q = diff.shape[1]
    rng = np.random.default_rng(seed)
    if groups is not None:
        groups = np.asarray(groups).reshape(-1)
        if groups.size != q:
            raise ValueError(f"claim {claim.id}: groups must give one class per query ({q}), "
                             f"got {groups.size}")
        members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    means = np.empty(n_boot)
    for i in range(n_boot):
        if groups is None:
            idx = rng.integers(0, q, q)
        else:  # whole classes, drawn with replacement
            idx = np.concatenate([members[j] for j in rng.integers(0, len(members),
                                                                    len(members))])
        means[i] = diff[:, idx].mean()
    return 1.96 * float(means.std(ddof=1)), q


def evaluate(claim: Claim | str, a, b=None, *, hits_a=None, hits_b=None, groups=None,
             n_boot: int = 2000, boot_seed: int = 0) -> Result:
    """Evaluate one claim from per-seed paired values.

    Args:
        claim: a :class:`Claim` or its id in :data:`CLAIMS`.
        a: ``(S,)`` the metric of method ``a``, one value per independent seed.
        b: ``(S,)`` the metric of method ``b`` on the same seeds (paired), or ``None`` when
            the claim compares ``a`` with its ``bound``.
        hits_a, hits_b: optional ``(S, Q)`` per-query values (0/1 hits for Recall@1, or
            per-query AP) on the same queries for both sides, averaging to ``a`` and ``b``;
            adds the test-set sampling error.
        groups: optional ``(Q,)`` class of each query: the bootstrap then draws whole classes.
        n_boot: bootstrap draws over queries.
        boot_seed: seed of the bootstrap.

    Returns:
        The :class:`Result` (see the module docstring for the method).
    """
    claim = CLAIMS[claim] if isinstance(claim, str) else claim
    a = _as_seed_values(a, f"claim {claim.id}: a")
    if claim.b is not None and b is None:
        raise ValueError(f"claim {claim.id} compares {claim.a!r} with {claim.b!r}: pass b")
    if claim.b is None and b is not None:
        raise ValueError(f"claim {claim.id} compares {claim.a!r} with the bound "
                         f"{claim.bound:g}: pass a alone")
    b_arr = (_as_seed_values(b, f"claim {claim.id}: b") if b is not None
             else np.full_like(a, claim.bound))
    if a.shape != b_arr.shape:
        raise ValueError(f"claim {claim.id}: a and b must hold one value per seed each (paired), "
                         f"got {a.size} and {b_arr.size}")
    d = a - b_arr  # (S,)
    s = d.size
    effect = float(d.mean())
    h_seed = 0.0
    if s > 1 and not claim.deterministic:
        h_seed = float(stats.t.ppf(0.975, s - 1) * d.std(ddof=1) / math.sqrt(s))
    h_query, q = 0.0, 0
    if hits_a is not None or hits_b is not None:
        h_query, q = _query_halfwidth(claim, a, b_arr, hits_a, hits_b, groups, n_boot,
                                      boot_seed)
    h = math.hypot(h_seed, h_query)
    low, high = effect - h, effect + h
    if claim.deterministic:
        low, high = float(d.min()) - h_query, float(d.max()) + h_query
    result = Result(claim.id, "not established", effect, low, high, s, queries=q,
                    a=a.tolist(), b=b_arr.tolist())
    if claim.direction == "equal":
        result.agree = int((np.abs(d) <= claim.tolerance).sum())
    else:
        sign = 1.0 if claim.direction == "greater" else -1.0
        result.agree = int((np.sign(d) == sign).sum())
    if s < 2 and not claim.deterministic:
        result.reason = "one seed: no interval over seeds"
        return result
    if claim.direction == "equal":
        if -claim.tolerance <= low and high <= claim.tolerance:
            result.verdict = "reproduced"
        elif low > claim.tolerance or high < -claim.tolerance:
            result.verdict = "reversed"
    elif (low > 0 and claim.direction == "greater") or (high < 0 and claim.direction == "less"):
        result.verdict = "reproduced"
    elif low > 0 or high < 0:
        result.verdict = "reversed"
    return result


# --------------------------------------------------------------------------- the notebook's ledger

_results: dict[str, Result] = {}
_ledger_dir: list[Path | None] = [None]


def _write(result: Result) -> Result:
    out = output_dir()
    if _ledger_dir[0] != out:  # a new notebook run (set_output_dir): start a fresh ledger
        _results.clear()
        _ledger_dir[0] = out
    _results[result.id] = result
    path = out / CLAIMS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps([r.as_dict() for r in _results.values()], indent=2))
    tmp.replace(path)
    record(f"claim:{result.id}", result.verdict, show=False)
    return result


def assess(claim_id: str, a, b=None, **kwargs) -> Result:
    """Evaluate a claim (:func:`evaluate`, same arguments) and record it in the ledger."""
    if claim_id not in CLAIMS:
        raise ValueError(f"unknown claim {claim_id!r}; add it to {REGISTRY.name} "
                         f"(known: {len(CLAIMS)} claims)")
    return _write(evaluate(CLAIMS[claim_id], a, b, **kwargs))


def not_testable(claim_id: str, reason: str) -> Result:
    """Record that a claim cannot be tested here, and why (e.g. it needs Market-1501)."""
    if claim_id not in CLAIMS:
        raise ValueError(f"unknown claim {claim_id!r}; add it to {REGISTRY.name}")
    if not reason.strip():
        raise ValueError(f"not_testable({claim_id!r}) needs the reason")
    return _write(Result(claim_id, "not testable here", reason=reason))


def results() -> list[Result]:
    """The claims recorded since the notebook's output directory was set."""
    return list(_results.values()) if _ledger_dir[0] == output_dir() else []


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:+.3f}"


class Table:
    """The notebook's claims table: text in a terminal, HTML in Jupyter."""

    COLUMNS = ("claim", "paper, where", "compared", "effect", "95 % interval", "seeds agree",
               "verdict")

    def __init__(self, rows: list[Result]):
        self.rows = rows

    def _cells(self, r: Result) -> tuple[str, ...]:
        c = CLAIMS[r.id]
        interval = "" if r.low is None else f"[{r.low:+.3f}, {r.high:+.3f}]"
        agree = f"{r.agree}/{r.seeds}" if r.seeds else ""
        verdict = r.verdict + (f" ({r.reason})" if r.reason else "")
        return (r.id, f"{c.id.split('.')[0]}, {c.where}", c.compared, _fmt(r.effect), interval,
                agree, verdict)

    def __repr__(self) -> str:
        rows = [self.COLUMNS] + [self._cells(r) for r in self.rows]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.COLUMNS))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                         for row in rows)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.COLUMNS)
        body = ""
        for r in self.rows:
            cells = "".join(f"<td>{html.escape(x)}</td>" for x in self._cells(r))
            body += f'<tr class="verdict-{r.verdict.replace(" ", "-")}">{cells}</tr>'
        return f'<table class="dmlviz-claims"><tr>{head}</tr>{body}</table>'


def table(ids: list[str] | None = None) -> Table:
    """The claims recorded in this notebook (or just ``ids``), as one table."""
    rows = results()
    if ids is not None:
        rows = [r for r in rows if r.id in ids]
    return Table(rows)
