"""Bad input gets a clear error everywhere, and nothing is lost (issue 20).

One table per layer: ``(case, call, expected exception, fragment of the message)``. A case
passes when the call raises that exception type and its message holds the fragment (a plain
substring, not a regex), and, where the table says so, does *not* hold a misleading hint.
Behaviours that keep something (the history of a diverged ``fit``, a rebuilt checkpoint, a
model trained with an unwritable cache, rows dropped on request, a relative ``-p`` path)
have their own tests below the tables.

To add a case: one line in the right table. Keep each call small (CPU, milliseconds).
"""

from __future__ import annotations

import http.server
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dmlviz import cli, data, heads, metrics, neighbours, runner, train
from dmlviz.attention import aia, crt, csalr, refine, second_order
from dmlviz.cache import cache_dir, save_entry
from dmlviz.losses import HybridLoss, MultiSimilarityLoss, ProxyAnchorLoss, TripletLoss

NAN, INF = float("nan"), float("inf")


pytestmark = pytest.mark.usefixtures("private_cache")  # checkpoints and features in tmp_path


def _emb(n=20, d=8, classes=4, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.arange(classes).repeat(n // classes)


def _poisoned(value=NAN, row=3, **kw):
    e, y = _emb(**kw)
    e[row, 1] = value
    return e, y


def _map(b=2, c=16, h=4, w=4, dtype=torch.float32, poison=None):
    x = torch.randn(b, c, h, w, dtype=dtype)
    if poison is not None:
        x[0, 0, 1, 1] = poison
    return x


# ------------------------------------------------------------------ metrics and losses

METRIC_CASES = [
    ("knn: a NaN row in queries", lambda: metrics.knn(_poisoned()[0], k=2),
     ValueError, "queries has 1 non-finite row(s)"),
    ("knn: inf in the reference", lambda: metrics.knn(_emb()[0], _poisoned(INF)[0], k=2),
     ValueError, "reference has 1 non-finite row(s)"),
    ("knn: -inf in queries", lambda: metrics.knn(_poisoned(-INF)[0], k=2),
     ValueError, "non-finite row(s) (NaN or ±inf)"),
    ("knn: float32 queries, float64 reference",
     lambda: metrics.knn(_emb()[0], _emb(dtype=torch.float64)[0], k=2),
     ValueError, "same dtype: queries torch.float32, reference torch.float64"),
    ("knn: k = 2.5", lambda: metrics.knn(_emb()[0], k=2.5), ValueError,
     "k must be an integer, got 2.5"),
    ("knn: chunk_size = 0", lambda: metrics.knn(_emb()[0], k=2, chunk_size=0), ValueError,
     "chunk_size must be in >= 1, got 0"),
    ("retrieval_metrics: one NaN row of 20", lambda: metrics.retrieval_metrics(*_poisoned()),
     ValueError, "embeddings has 1 non-finite row(s) (NaN or ±inf) out of 20"),
    ("retrieval_metrics: inf in a NumPy array",
     lambda: metrics.retrieval_metrics(_poisoned(INF)[0].numpy(), _emb()[1].numpy()),
     ValueError, "first at index 3"),
    ("retrieval_metrics: ks = (2.5,)", lambda: metrics.retrieval_metrics(*_emb(), ks=(2.5,)),
     ValueError, "must be an integer"),
    ("retrieval_metrics: float labels",
     lambda: metrics.retrieval_metrics(_emb()[0], _emb()[1].float()), ValueError,
     "labels must be an integer tensor"),
    ("retrieval_metrics: one class",
     lambda: metrics.retrieval_metrics(_emb()[0], torch.zeros(20, dtype=torch.long)),
     ValueError, "at least 2 classes"),
    ("recall_hits: a NaN row", lambda: metrics.recall_hits(*_poisoned()), ValueError,
     "embeddings has 1 non-finite row(s)"),
    ("recall_hits: k = 2.5", lambda: metrics.recall_hits(*_emb(), k=2.5), ValueError,
     "must be an integer"),
    ("embedding_space_density: NaN", lambda: metrics.embedding_space_density(*_poisoned()),
     ValueError, "non-finite row(s)"),
    ("spectral_decay: inf", lambda: metrics.spectral_decay(_poisoned(INF)[0], drop_largest=False), ValueError,
     "non-finite row(s)"),
]

LOSS_CASES = [
    ("MS: NaN embeddings", lambda: MultiSimilarityLoss()(*_poisoned()), ValueError,
     "embeddings has 1 non-finite row(s)"),
    ("proxy-anchor: inf embeddings", lambda: ProxyAnchorLoss(4, 8)(*_poisoned(INF)),
     ValueError, "non-finite row(s)"),
    ("triplet: NaN embeddings", lambda: TripletLoss()(*_poisoned()), ValueError,
     "non-finite row(s)"),
    ("hybrid: NaN embeddings",
     lambda: HybridLoss(MultiSimilarityLoss(), ProxyAnchorLoss(4, 8))(*_poisoned()),
     ValueError, "non-finite row(s)"),
    ("MS: a one-class batch",
     lambda: MultiSimilarityLoss()(_emb()[0], torch.full((20,), 2)), ValueError,
     "single class (2) in 20 samples, so MultiSimilarityLoss has no negative pair"),
    ("triplet (batch hard): a one-class batch",
     lambda: TripletLoss()(_emb()[0], torch.zeros(20, dtype=torch.long)), ValueError,
     "TripletLoss has no negative pair"),
    ("triplet (all): a one-class batch",
     lambda: TripletLoss(mining="all")(_emb()[0], torch.zeros(20, dtype=torch.long)),
     ValueError, "single class"),
    ("hybrid: a one-class batch",
     lambda: HybridLoss(MultiSimilarityLoss(), ProxyAnchorLoss(4, 8))(
         _emb()[0], torch.zeros(20, dtype=torch.long)), ValueError, "single class"),
    ("MS: a single sample", lambda: MultiSimilarityLoss()(_emb()[0][:1], torch.zeros(1).long()),
     ValueError, "single class"),
    ("proxy-anchor: label outside [0, C)", lambda: ProxyAnchorLoss(3, 8)(*_emb()),
     ValueError, "labels must lie in [0, num_classes)"),
    ("MS: alpha = nan", lambda: MultiSimilarityLoss(alpha=NAN), ValueError,
     "alpha must be a finite number"),
    ("MS: float16 labels", lambda: MultiSimilarityLoss()(_emb()[0], _emb()[1].half()),
     ValueError, "labels must be an integer tensor"),
]

# ------------------------------------------------------------------ attention modules


def _csalr():
    torch.manual_seed(0)
    return csalr.CSALR(16, landmarks=(2, 2))


def _sa():
    torch.manual_seed(0)
    return csalr.SelfAttention(16)


ATTENTION_CASES = [
    ("CSALR: empty batch B = 0", lambda: _csalr()(_map(b=0)), ValueError,
     "B, C, H, W >= 1 (a non-empty batch of non-empty maps), got shape (0, 16, 4, 4)"),
    ("SelfAttention: empty batch B = 0", lambda: _sa()(_map(b=0)), ValueError,
     "got shape (0, 16, 4, 4)"),
    ("CSALR: H = 0", lambda: _csalr()(_map(h=0)), ValueError, "got shape (2, 16, 0, 4)"),
    ("CSALR: W = 0", lambda: _csalr()(_map(w=0)), ValueError, "got shape (2, 16, 4, 0)"),
    ("SelfAttention: H = 0", lambda: _sa()(_map(h=0)), ValueError, "B, C, H, W >= 1"),
    ("SelfAttention: W = 0", lambda: _sa()(_map(w=0)), ValueError, "B, C, H, W >= 1"),
    ("CSALR: a NaN in the map", lambda: _csalr()(_map(poison=NAN)), ValueError,
     "x has 1 non-finite feature map(s)"),
    ("SelfAttention: inf in the map", lambda: _sa()(_map(poison=INF)), ValueError,
     "non-finite feature map(s)"),
    ("SelfAttention: float16 input, float32 module (CPU)",
     lambda: _sa()(_map(dtype=torch.float16)), ValueError,
     "x has dtype torch.float16 but the module's weights are torch.float32"),
    ("CSALR: float16 input, float32 module (CPU)",
     lambda: _csalr()(_map(dtype=torch.float16)), ValueError, "pass x.to(torch.float32)"),
    ("CSALR: float64 input, float32 module", lambda: _csalr()(_map(dtype=torch.float64)),
     ValueError, "dtype torch.float64"),
    ("CSALR: wrong channel count", lambda: _csalr()(_map(c=8)), ValueError,
     "C = 16 channels"),
    ("CSALR: a 3-D tensor", lambda: _csalr()(torch.randn(16, 4, 4)), ValueError,
     "float feature map (B, C, H, W)"),
    ("CSALR embedder: B = 0",
     lambda: heads.build_head("csalr", 16, 8, landmarks=(2, 2))[0](_map(b=0)), ValueError,
     "B, C, H, W >= 1"),
    ("AiA kernel attention: B = 0", lambda: aia.KernelAttention(16)(_map(b=0)), ValueError,
     "B, C, H, W >= 1"),
    ("AiA SE block: NaN", lambda: aia.SEBlock(16, 4)(_map(poison=NAN)), ValueError,
     "non-finite feature map(s)"),
    ("AiA kernel attention: float16 input", lambda: aia.KernelAttention(16)(
        _map(dtype=torch.float16)), ValueError, "dtype torch.float16"),
    ("CRT: H = 0", lambda: crt.CodedResidualTransform(16, 4, 8)(_map(h=0)), ValueError,
     "B, C, H, W >= 1"),
    ("CRT: NaN", lambda: crt.CodedResidualTransform(16, 4, 8)(_map(poison=NAN)), ValueError,
     "non-finite feature map(s)"),
    ("second-order attention: B = 0",
     lambda: second_order.SecondOrderAttention(16)(_map(b=0)), ValueError, "B, C, H, W >= 1"),
    ("second-order attention: inf",
     lambda: second_order.SecondOrderAttention(16)(_map(poison=INF)), ValueError,
     "non-finite feature map(s)"),
    ("refine_embeddings nn_avg: one NaN row",
     lambda: neighbours.refine_embeddings("nn_avg", _poisoned()[0], k=3, device="cpu"),
     ValueError, "embeddings has 1 non-finite row(s)"),
    ("refine_embeddings: k = 2.5",
     lambda: neighbours.refine_embeddings("nn_avg", _emb()[0], k=2.5, device="cpu"),
     ValueError, "must be an integer"),
    ("refine_embeddings: NaN in the reference",
     lambda: neighbours.refine_embeddings("nn_avg", _emb()[0], k=3, reference=_poisoned()[0],
                                      device="cpu"), ValueError, "reference has 1 non-finite"),
    ("build_contexts: inf", lambda: neighbours.build_contexts(_poisoned(INF)[0], k=3),
     ValueError, "non-finite row(s)"),
    ("neighbour_average: NaN in the context",
     lambda: refine.neighbour_average(_emb()[0][:4], torch.full((4, 3, 8), NAN)), ValueError,
     "context has 4 non-finite context(s)"),
    ("NeighborRefiner: NaN query",
     lambda: refine.NeighborRefiner(8, 1, 2)(_poisoned()[0][:4], torch.randn(4, 3, 8)),
     ValueError, "e0 has 1 non-finite row(s)"),
]

# ------------------------------------------------------------------ data and training


def _npz(tmp_path: Path, name="e.npz", **arrays) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _good_arrays(n=20, d=4):
    return {"embeddings": np.random.default_rng(0).standard_normal((n, d)).astype(np.float32),
            "labels": np.arange(n) % 4}


def _with(**changes):
    arrays = _good_arrays()
    arrays.update(changes)
    return arrays


def _nan_rows(rows):
    e = _good_arrays()["embeddings"]
    e[rows, 0] = np.nan
    return e


def _text_npz(tmp_path):
    (tmp_path / "notes.npz").write_text("embeddings,labels\n0.1,1\n")
    return tmp_path / "notes.npz"


def _npy_npz(tmp_path):
    np.save(tmp_path / "single.npy", np.zeros((3, 2)))
    os.replace(tmp_path / "single.npy", tmp_path / "single.npz")
    return tmp_path / "single.npz"


DATA_CASES = [  # call(tmp_path)
    ("load_embeddings: a NaN row", lambda t: data.load_embeddings(_npz(t, embeddings=_nan_rows(
        [2]), labels=np.arange(20) % 4)), ValueError, "has 1 non-finite row(s) (NaN or ±inf) out of 20"),
    ("load_embeddings: three NaN rows", lambda t: data.load_embeddings(_npz(t, embeddings=_nan_rows(
        [1, 5, 7]), labels=np.arange(20) % 4)), ValueError, "3 non-finite row(s)"),
    ("load_embeddings: float64 overflowing float32 (inf)", lambda t: data.load_embeddings(
        _npz(t, **_with(embeddings=np.full((20, 4), 1e300)))), ValueError, "non-finite row(s)"),
    ("load_embeddings: every row NaN, drop_nonfinite", lambda t: data.load_embeddings(
        _npz(t, **_with(embeddings=np.full((20, 4), np.nan, np.float32))), drop_nonfinite=True),
     ValueError, "every row"),
    ("load_embeddings: an object array", lambda t: data.load_embeddings(_npz(t, **_with(
        embeddings=np.array([np.zeros(4), "x"] * 10, dtype=object)))), ValueError,
     "is an object array (pickled Python objects)"),
    ("load_embeddings: a text file named .npz", lambda t: data.load_embeddings(_text_npz(t)),
     ValueError, "not a readable .npz archive (not a zip archive"),
    ("load_embeddings: a .npy file named .npz", lambda t: data.load_embeddings(_npy_npz(t)),
     ValueError, "a single .npy array"),
    ("load_embeddings: missing relative path", lambda t: data.load_embeddings("no/such.npz"),
     FileNotFoundError, f"{os.getcwd()}/no/such.npz"),
    ("load_embeddings: missing key", lambda t: data.load_embeddings(_npz(t, x=np.zeros(3))),
     ValueError, "lacks array(s) ['embeddings', 'labels']"),
    ("load_embeddings: integer embeddings", lambda t: data.load_embeddings(_npz(t, **_with(
        embeddings=np.zeros((20, 4), np.int64)))), ValueError, "must be a 2-D float array"),
    ("load_embeddings: float labels", lambda t: data.load_embeddings(_npz(t, **_with(
        labels=np.zeros(20)))), ValueError, "must be a 1-D integer array"),
    ("load_embeddings: lengths differ", lambda t: data.load_embeddings(_npz(t, **_with(
        labels=np.arange(19)))), ValueError, "they must match"),
    ("load_embeddings: zero columns", lambda t: data.load_embeddings(_npz(t, **_with(
        embeddings=np.zeros((20, 0), np.float32)))), ValueError, "is empty"),
    ("make_shapes: per_class = 2.5", lambda t: data.make_shapes(2, per_class=2.5), ValueError,
     "per_class must be an integer, got 2.5 (a float)"),
    ("make_shapes: num_classes = 1", lambda t: data.make_shapes(1), ValueError,
     "num_classes must be in [2, 96]"),
    ("make_shapes: size = 32.0", lambda t: data.make_shapes(2, 2, size=32.0), ValueError,
     "size (pixels) must be an integer"),
    ("PKSampler: k = 2.5", lambda t: data.PKSampler(torch.arange(8) % 2, p=2, k=2.5),
     ValueError, "k must be an integer, got 2.5"),
    ("PKSampler: p = 1.5", lambda t: data.PKSampler(torch.arange(8) % 2, p=1.5, k=2),
     ValueError, "p must be an integer"),
    ("PKSampler: p = 3 of 2 classes", lambda t: data.PKSampler(torch.arange(8) % 2, p=3, k=2),
     ValueError, "p must be in 1..2 (the number of classes)"),
    ("PKSampler: batches_per_epoch = 0.5", lambda t: data.PKSampler(
        torch.arange(8) % 2, p=2, k=2, batches_per_epoch=0.5), ValueError,
     "batches_per_epoch must be an integer"),
    ("class_disjoint_split: train_fraction = nan",
     lambda t: data.class_disjoint_split(torch.arange(8) % 4, NAN), ValueError,
     "train_fraction must be strictly between 0 and 1"),
    ("ImageFolder: a missing relative root", lambda t: data.ImageFolder("no/such/images"),
     FileNotFoundError, f"{os.getcwd()}/no/such/images' does not exist"),
    ("ImageFolder: a file as root", lambda t: data.ImageFolder(_text_npz(t)),
     FileNotFoundError, "is not a folder"),
    ("class_disjoint_split: train_fraction = '0.5'",
     lambda t: data.class_disjoint_split(torch.arange(8) % 4, "0.5"), ValueError,
     "train_fraction must be strictly between 0 and 1, got 0.5"),
    ("make_shapes: seed = -1", lambda t: data.make_shapes(2, 2, seed=-1), ValueError,
     "seed must be in >= 0, got -1"),
    ("load_embeddings: a folder", lambda t: data.load_embeddings(t), ValueError,
     "is a folder; allowed is an .npz file"),
    ("load_photos: an unknown name", lambda t: data.load_photos("cat"), ValueError,
     "unknown photo(s) ['cat']"),
    ("class_disjoint_split: one class",
     lambda t: data.class_disjoint_split(torch.zeros(8, dtype=torch.long)), ValueError,
     "at least 2 classes"),
]


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _fit(**kw):
    x, y = kw.pop("data", None) or _emb(32, 8, 4)
    return train.fit(kw.pop("model", None) or _model(), MultiSimilarityLoss(), x, y,
                     progress=False, **{"epochs": 1, "p": 2, "k": 4, **kw})


TRAIN_CASES = [
    ("fit: epochs = 1.5", lambda: _fit(epochs=1.5), ValueError,
     "epochs must be an integer, got 1.5"),
    ("fit: k = 2.5", lambda: _fit(k=2.5), ValueError, "k must be an integer, got 2.5"),
    ("fit: p = 2.5", lambda: _fit(p=2.5), ValueError, "p must be an integer"),
    ("fit: eval_every = 0.5", lambda: _fit(eval_every=0.5), ValueError,
     "eval_every must be an integer"),
    ("fit: epochs = 0", lambda: _fit(epochs=0), ValueError, "epochs must be in >= 1, got 0"),
    ("fit: a NaN input sample", lambda: _fit(data=_poisoned(n=32)), ValueError,
     "inputs has 1 non-finite sample(s)"),
    ("fit: inf in the test inputs", lambda: _fit(test_inputs=_poisoned(INF, n=32)[0],
                                                  test_labels=_emb(32)[1]), ValueError,
     "test_inputs has 1 non-finite sample(s)"),
    ("fit: NaN in the second input of a tuple",
     lambda: train.fit(_model(), MultiSimilarityLoss(), (_emb(32)[0], _poisoned(n=32)[0]),
                       _emb(32)[1], progress=False), ValueError, "inputs[1] has 1 non-finite"),
    ("fit: float test_labels", lambda: _fit(test_inputs=_emb(32)[0],
                                            test_labels=_emb(32)[1].float()), ValueError,
     "test_labels must be an integer tensor"),
    ("fit: test lengths differ", lambda: _fit(test_inputs=_emb(32)[0], test_labels=_emb(28)[1]),
     ValueError, "test_inputs has 32 samples but test_labels has 28"),
    ("embed: no samples", lambda: train.embed(_model(), torch.zeros(0, 8), device="cpu"),
     ValueError, "inputs is empty (N = 0)"),
    ("fit: weight_decay = nan", lambda: _fit(weight_decay=NAN), ValueError,
     "weight_decay must be a finite number >= 0"),
    ("fit: lr = inf", lambda: _fit(lr=INF, cache=False), ValueError,
     "lr must be a finite number"),
    ("embed: batch_size = 0", lambda: train.embed(_model(), _emb()[0], batch_size=0,
                                                   device="cpu"), ValueError,
     "batch_size must be in >= 1, got 0"),
    ("embed: batch_size = 2.5", lambda: train.embed(_model(), _emb()[0], batch_size=2.5,
                                                     device="cpu"), ValueError,
     "batch_size must be an integer"),
    ("embed: a NaN input", lambda: train.embed(_model(), _poisoned()[0], device="cpu"),
     ValueError, "inputs has 1 non-finite sample(s)"),
]

MISLEADING = ("allow_pickle",)  # no message may suggest unpickling a user's file


def _check(call, exc, fragment):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message, "an error message is one line"
    assert not any(m in message for m in MISLEADING), message


@pytest.mark.parametrize(("call", "exc", "fragment"),
                         [pytest.param(*c[1:], id=c[0]) for c in
                          METRIC_CASES + LOSS_CASES + ATTENTION_CASES + TRAIN_CASES])
def test_bad_input_is_refused(call, exc, fragment):
    _check(call, exc, fragment)


@pytest.mark.parametrize(("call", "exc", "fragment"),
                         [pytest.param(*c[1:], id=c[0]) for c in DATA_CASES])
def test_bad_data_is_refused(call, exc, fragment, tmp_path):
    _check(lambda: call(tmp_path), exc, fragment)


# ------------------------------------------------------------------ the command line

CLI_CASES = [  # argv after "dmlviz run [07] --baseline none --no-progress"; exit 2, one line
    ("--timeout nan", ["--timeout", "nan"], "--timeout nan: allowed is a finite number of seconds > 0"),
    ("--timeout inf", ["--timeout", "inf"], "--timeout inf: allowed is"),
    ("--timeout 0", ["--timeout", "0"], "--timeout 0.0: allowed is"),
    ("--timeout -5", ["--timeout", "-5"], "--timeout -5.0: allowed is"),
    ("--out under a file", ["--out", "{file}/run"], "is under the file"),
    ("--out is a file", ["--out", "{file}"], "is a file; allowed is a folder path"),
    ("--figures is a file", ["--figures", "{file}"], "--figures"),
    ("-p seed abc (int declared)", ["-p", "seed", "abc"],
     "-p seed 'abc': a str, but 07_comparison declares seed = 0; allowed is an int"),
    ("-p seed 1.5", ["-p", "seed", "1.5"], "-p seed 1.5: a float"),
    ("-p refine_k True", ["-p", "refine_k", "True"], "allowed is an int"),
    ("-p embedding_dim None", ["-p", "embedding_dim", "None"], "-p embedding_dim None"),
    ("-p temperature yes (float declared)", ["01", "-p", "temperature", "yes"],
     "01_nystrom_proof declares temperature = 0.5; allowed is a number"),
    ("-p report_ms 5 (tuple declared)", ["01", "-p", "report_ms", "5"],
     "allowed is a tuple or list"),
    ("-p photo 5 (str declared)", ["01", "-p", "photo", "5"], "allowed is a string"),
    ("-p embeddings_npz missing relative path", ["-p", "embeddings_npz", "rel/missing.npz"],
     "the file '{cwd}/rel/missing.npz' does not exist"),
    ("-p datasets missing folder", ["-p", "datasets", "['shapes', 'no_such_folder']"],
     "the folder '{cwd}/no_such_folder' does not exist"),
    ("-p datasets a number", ["-p", "datasets", "5"], "allowed is a list of names"),
    ("-p unknown name", ["-p", "no_such_parameter", "1"],
     "unknown parameter -p no_such_parameter"),
]


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    """The command runs in an empty tmp dir (the notebooks come from the checkout)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    return tmp_path


@pytest.mark.parametrize(("argv", "fragment"), [pytest.param(*c[1:], id=c[0]) for c in CLI_CASES])
def test_cli_refuses_bad_values_before_any_notebook(argv, fragment, in_tmp, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(runner, "run", lambda *a, **k: started.append(k))
    argv = [a.format(file=in_tmp / "afile", cwd=in_tmp) for a in argv]
    names, argv = (argv[:1], argv[1:]) if argv[0].isdigit() else (["07"], argv)
    rc = cli.main(["run", *names, "--baseline", "none", "--no-progress", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not started
    assert "\n" not in err and err.startswith("dmlviz run: error: ")
    assert fragment.format(cwd=in_tmp) in err, err


REPORT_CASES = [  # report / baseline --out: exit 2, one line
    ("report --out under a file", ["report", "{run}", "{run}", "--out", "{file}/x.md"],
     "--out '{file}/x.md': '{file}/x.md' is under the file '{file}'"),
    ("report --out in a missing folder", ["report", "{run}", "{run}", "--out", "{tmp}/no/x.md"],
     "the folder '{tmp}/no' does not exist"),
    ("baseline --out a folder", ["baseline", "{run}", "--out", "{tmp}"], "is a folder"),
    ("report of a folder that is no run", ["report", "{tmp}", "{tmp}"],
     "is not a dmlviz run directory: no summary.json"),
]


@pytest.mark.parametrize(("argv", "fragment"),
                         [pytest.param(*c[1:], id=c[0]) for c in REPORT_CASES])
def test_report_and_baseline_refuse_bad_outputs(argv, fragment, in_tmp, capsys):
    fmt = {"run": str(in_tmp / "run"), "file": str(in_tmp / "afile"), "tmp": str(in_tmp)}
    (in_tmp / "run").mkdir()
    (in_tmp / "run" / "summary.json").write_text("{}")
    rc = cli.main([a.format(**fmt) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and fragment.format(**fmt) in err, err


def test_runner_refuses_a_nan_timeout():
    with pytest.raises(ValueError, match="timeout nan: allowed is a finite number"):
        runner.run(["07"], timeout=NAN, baseline=None)


def _fake_run(seen, out):
    def fake(names, **kwargs):
        seen.update(kwargs, names=names)
        return runner.RunResult({"notebooks": {}, "profile": kwargs["profile"], "ok": True,
                                 "device_resolved": "cpu", "duration_s": 0.0,
                                 "baseline": None}, out)
    return fake


def test_relative_npz_path_is_resolved_against_the_working_directory(in_tmp, monkeypatch):
    """``dmlviz run 07 -p embeddings_npz rel/my.npz`` run from a folder holding rel/my.npz
    hands the notebook (whose kernel runs in notebooks/) the absolute path."""
    (in_tmp / "rel").mkdir()
    arrays = _good_arrays()
    np.savez(in_tmp / "rel" / "my.npz", **arrays)
    seen: dict = {}
    monkeypatch.setattr(runner, "run", _fake_run(seen, in_tmp))
    rc = cli.main(["run", "07", "-p", "embeddings_npz", "rel/my.npz", "-p", "datasets", "rel",
                   "--baseline", "none", "--no-progress", "--timeout", "2.5"])
    assert rc == 0
    given = seen["parameters"]["embeddings_npz"]
    assert given == str(in_tmp / "rel" / "my.npz") and Path(given).is_absolute()
    assert seen["parameters"]["datasets"] == [str(in_tmp / "rel")]  # a string: one entry
    emb, labels = data.load_embeddings(given)  # what the notebook's cell then does
    assert emb.shape == (20, 4) and torch.equal(labels, torch.from_numpy(arrays["labels"]))


def test_fractional_timeout_is_rounded_up_for_nbclient(monkeypatch, tmp_path):
    """nbclient takes whole seconds; 2.5 becomes 3, never 2 (and never an nbclient error)."""
    jobs = []

    class Stop(Exception):
        pass

    def capture(job_list, *a, **k):
        jobs.extend(job_list)
        raise Stop

    if hasattr(runner, "executor"):  # the Dask executor
        monkeypatch.setattr(runner.executor, "execute", capture)
    else:
        monkeypatch.setattr(runner, "_execute_all", capture)
    with pytest.raises(Stop):
        runner.run(["07"], timeout=2.5, baseline=None, out=tmp_path / "out", progress=False)
    assert jobs and all(j["timeout"] == 3 and isinstance(j["timeout"], int) for j in jobs)


# ------------------------------------------------------------------ nothing is lost

class _Exploding(nn.Module):
    """A linear map whose output turns NaN from the ``at``-th forward call on."""

    def __init__(self, at: int):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.calls, self.at = nn.Linear(8, 4), 0, at

    def forward(self, x):
        self.calls += self.training  # training batches only (not the evaluations)
        out = self.lin(x)
        return out * NAN if self.calls >= self.at and self.training else out


def test_fit_stops_at_the_first_non_finite_batch_and_keeps_the_history():
    x, y = _emb(32, 8, 4)
    xt, yt = _emb(32, 8, 4, seed=1)
    model = _Exploding(at=4 * 2 + 2)  # 4 batches per epoch: epochs 1-2 complete
    with pytest.raises(train.NonFiniteLossError, match="fit stopped at epoch 3, batch 1") as info:
        train.fit(model, MultiSimilarityLoss(), x, y, test_inputs=xt, test_labels=yt, epochs=5,
                  p=2, k=4, progress=False)
    err = info.value
    assert isinstance(err, ValueError) and (err.epoch, err.batch) == (3, 1)
    assert len(err.history.loss) == 2 and all(np.isfinite(err.history.loss))
    assert err.history.eval_epochs == [0, 1, 2] and len(err.history.metrics["recall@1"]) == 3
    assert "2 completed epoch(s)" in str(err) and "err.history" in str(err)
    assert not list((cache_dir() / "checkpoints").glob("*.pt"))  # nothing cached


def test_fit_stops_at_a_non_finite_loss():
    class NanLoss(nn.Module):
        def forward(self, e, y):
            return MultiSimilarityLoss()(e, y) * NAN

    x, y = _emb(32, 8, 4)
    with pytest.raises(train.NonFiniteLossError, match="the loss is nan") as info:
        train.fit(_model(), NanLoss(), x, y, epochs=2, p=2, k=4, progress=False)
    assert info.value.history.loss == [] and (info.value.epoch, info.value.batch) == (1, 0)


def _one_checkpoint():
    (path,) = (cache_dir() / "checkpoints").glob("*.pt")
    return path


@pytest.mark.parametrize("corrupt", [
    lambda e: {"weights": e["model"]},  # KeyError 'model' before
    lambda e: {**e, "history": {"loss": [0.1], "bogus": 1}},  # TypeError from History before
    lambda e: {**e, "model": {k: torch.zeros(3) for k in e["model"]}},  # size mismatch before
    lambda e: {**e, "model": {"other.weight": torch.zeros(3)}},  # other keys
    lambda e: {**e, "loss": [1, 2]},  # not a state dict
    lambda e: [1, 2, 3],  # not a dict at all
], ids=["no model key", "bad history", "wrong shapes", "other keys", "loss not a dict",
        "a list"])
def test_checkpoint_of_the_wrong_structure_is_rebuilt(corrupt):
    x, y = _emb(32, 8, 4)
    first = _fit(data=(x, y))
    path = _one_checkpoint()
    entry = torch.load(path, weights_only=True)
    save_entry(path, corrupt(entry))
    model = _model()
    with pytest.warns(UserWarning, match="wrong structure"):
        again = _fit(data=(x, y), model=model)
    assert not again.from_cache and again.loss == first.loss  # retrained, same seed
    assert _fit(data=(x, y)).from_cache  # and the rebuilt entry is good again


def test_unwritable_cache_warns_and_returns_the_trained_model():
    x, y = _emb(32, 8, 4)
    cache_dir().mkdir(parents=True, exist_ok=True)
    (cache_dir() / "checkpoints").write_text("a file where the folder should be")
    model = _model()
    before = model[0].weight.detach().clone()
    with pytest.warns(UserWarning, match="could not write the checkpoint"):
        hist = _fit(data=(x, y), model=model)
    assert len(hist.loss) == 1 and not torch.equal(before, model[0].weight)


def test_unusable_cache_dir_warns_and_trains(monkeypatch, tmp_path):
    (tmp_path / "blocker").write_text("x")
    monkeypatch.setenv("DMLVIZ_CACHE_DIR", str(tmp_path / "blocker" / "cache"))
    with pytest.warns(UserWarning, match="checkpoint cache is unusable"):
        hist = _fit()
    assert len(hist.loss) == 1


def test_load_embeddings_can_drop_non_finite_rows(tmp_path):
    """The documented alternative to the error: drop_nonfinite=True drops and warns."""
    arrays = _good_arrays()
    arrays["embeddings"][[2, 9], 1] = [np.nan, np.inf]
    path = _npz(tmp_path, **arrays)
    with pytest.warns(UserWarning, match="dropped 2 of 20 rows"):
        emb, labels = data.load_embeddings(path, drop_nonfinite=True)
    keep = np.setdiff1d(np.arange(20), [2, 9])
    assert torch.equal(emb, torch.from_numpy(arrays["embeddings"][keep]))
    assert torch.equal(labels, torch.from_numpy(arrays["labels"][keep]))


def test_mixed_dtypes_under_autocast_are_left_to_torch():
    """The dtype check refuses float16 into a float32 module, except under torch.autocast,
    where torch casts inputs itself (documented in check_feature_map)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _sa()(_map(dtype=torch.bfloat16))
    assert y.shape == (2, 16, 4, 4) and torch.isfinite(y).all()


def test_one_nan_row_no_longer_poisons_recall():
    """The issue's example: one NaN row in 200 took Recall@1 from 1.000 to 0.095 silently."""
    e = torch.eye(4).repeat_interleave(50, dim=0) + 0.01 * torch.randn(200, 4)
    y = torch.arange(4).repeat_interleave(50)
    assert metrics.retrieval_metrics(e, y, nmi=False)["recall@1"] == 1.0
    e[7] = NAN
    with pytest.raises(ValueError, match="1 non-finite row"):
        metrics.retrieval_metrics(e, y, nmi=False)


# ------------------------------------------------------------------ the JupyterLab driver

def test_jupyterlab_driver_bypasses_proxies_for_loopback(monkeypatch):
    """With $http_proxy pointing nowhere, a request to 127.0.0.1 still goes straight there
    (urllib's default opener would send it, with the server token, to the proxy)."""
    import urllib.request

    from jupyterlab_driver import CHROMIUM_ARGS, LOOPBACK_OPENER

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"direct")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for var in ("http_proxy", "HTTP_PROXY", "all_proxy"):
            monkeypatch.setenv(var, "http://127.0.0.1:9")  # discard port: nothing listens
        for var in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(var, raising=False)
        url = f"http://127.0.0.1:{server.server_port}/api/status"
        with LOOPBACK_OPENER.open(url, timeout=5) as r:
            assert r.read() == b"direct"
        with warnings.catch_warnings(), pytest.raises(OSError):  # the default opener: proxy
            urllib.request.build_opener().open(url, timeout=5)
    finally:
        server.shutdown()
    assert "--no-proxy-server" in CHROMIUM_ARGS


# ------------------------------------------------------------------ CUDA (skipped without it)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
def test_cuda_inputs_are_checked_like_cpu_ones():
    """Device mismatch, NaN rows and half precision on CUDA get the same messages."""
    _check(lambda: _sa().cuda()(_map()), ValueError,
           "x is on cpu but the module's weights are on cuda:0")
    _check(lambda: metrics.knn(_poisoned()[0].cuda(), k=2), ValueError,
           "queries has 1 non-finite row(s)")
    _check(lambda: metrics.knn(_emb()[0].cuda(), _emb()[0], k=2), ValueError,
           "same device")
    _check(lambda: _sa().cuda()(_map(dtype=torch.float16).cuda()), ValueError,
           "dtype torch.float16")
    with torch.autocast("cuda", dtype=torch.float16):
        assert _sa().cuda()(_map(dtype=torch.float16).cuda()).shape == (2, 16, 4, 4)
