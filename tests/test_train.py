import pytest
import torch
from torch import nn

from dmlviz.cache import cache_dir, digest, load_entry, save_entry
from dmlviz.losses import MultiSimilarityLoss, ProxyAnchorLoss
from dmlviz.train import embed, fit

pytestmark = pytest.mark.usefixtures("private_cache")  # checkpoints and features in tmp_path


def _blobs(classes=8, per_class=12, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 1.5
    labels = torch.arange(classes).repeat_interleave(per_class)
    x = centres[labels] + torch.randn(len(labels), dim, generator=g)
    return x, labels


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def test_fit_learns_and_records_history():
    x, y = _blobs()
    xt, yt = _blobs(seed=1)
    model = _model()
    hist = fit(model, MultiSimilarityLoss(), x, y, test_inputs=xt, test_labels=yt,
               epochs=6, p=4, k=4, eval_every=2, progress=False)
    assert len(hist.loss) == 6 and hist.eval_epochs == [0, 2, 4, 6]
    assert hist.loss[-1] < hist.loss[0]
    assert len(hist.metrics["recall@1"]) == 4
    assert not model.training and not hist.from_cache


def test_fit_is_reproducible_and_cached():
    x, y = _blobs()
    a, b = _model(), _model()
    ha = fit(a, MultiSimilarityLoss(), x, y, epochs=3, p=4, k=4, progress=False, cache=False)
    hb = fit(b, MultiSimilarityLoss(), x, y, epochs=3, p=4, k=4, progress=False)
    assert ha.loss == hb.loss
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    c = _model()
    hc = fit(c, MultiSimilarityLoss(), x, y, epochs=3, p=4, k=4, progress=False)
    assert hc.from_cache and hc.loss == hb.loss
    assert torch.equal(embed(c, x), embed(b, x))


def test_corrupt_checkpoint_is_retrained():
    x, y = _blobs()
    fit(_model(), MultiSimilarityLoss(), x, y, epochs=1, p=4, k=4, progress=False)
    (ckpt,) = (cache_dir() / "checkpoints").glob("*.pt")
    ckpt.write_bytes(b"truncated garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        hist = fit(_model(), MultiSimilarityLoss(), x, y, epochs=1, p=4, k=4, progress=False)
    assert not hist.from_cache
    assert load_entry(ckpt) is not None  # rewritten


def test_loss_parameters_are_trained_with_their_own_rate():
    x, y = _blobs()
    loss = ProxyAnchorLoss(num_classes=8, embedding_dim=8)
    before = loss.proxies.detach().clone()
    fit(_model(), loss, x, y, epochs=1, p=4, k=4, loss_lr=1e-2, progress=False, cache=False)
    assert not torch.equal(before, loss.proxies.detach())


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 0}, "epochs"), ({"p": 9}, "p must be"), ({"eval_every": 0}, "eval_every"),
    ({"test_inputs": torch.zeros(3, 16)}, "both test_inputs and test_labels"),
])
def test_fit_bad_arguments(kwargs, match):
    x, y = _blobs()
    with pytest.raises(ValueError, match=match):
        fit(_model(), MultiSimilarityLoss(), x, y, progress=False, **kwargs)


def test_fit_mismatched_lengths():
    x, y = _blobs()
    with pytest.raises(ValueError, match="samples but labels"):
        fit(_model(), MultiSimilarityLoss(), x[:-1], y, progress=False)


def test_digest_and_entries(tmp_path):
    assert digest(torch.ones(3), {"a": 1}) == digest(torch.ones(3), {"a": 1})
    assert digest(torch.ones(3)) != digest(torch.ones(3, dtype=torch.float64))
    assert digest(torch.ones(3)) != digest(torch.ones(1, 3))
    save_entry(tmp_path / "x.pt", {"t": torch.arange(3)})
    assert torch.equal(load_entry(tmp_path / "x.pt")["t"], torch.arange(3))
    assert load_entry(tmp_path / "missing.pt") is None


class _TwoInputs(nn.Module):
    """Adds two views of the input before a linear map: checks ``model(*batch)``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(16, 8), nn.Linear(4, 8)

    def forward(self, x, z):
        return self.a(x) + self.b(z)


def test_fit_and_embed_accept_a_tuple_of_inputs():
    x, y = _blobs()
    z = x[:, :4] * 2
    xt, yt = _blobs(seed=1)
    model = _TwoInputs()
    hist = fit(model, MultiSimilarityLoss(), (x, z), y, test_inputs=(xt, xt[:, :4] * 2),
               test_labels=yt, epochs=3, p=4, k=4, progress=False)
    assert len(hist.loss) == 3 and len(hist.metrics["recall@1"]) == 4
    expected = model(x, z)
    assert torch.allclose(embed(model, (x, z), batch_size=5), expected, atol=1e-6)
    again = fit(_TwoInputs(), MultiSimilarityLoss(), (x, z), y, test_inputs=(xt, xt[:, :4] * 2),
                test_labels=yt, epochs=3, p=4, k=4, progress=False)
    assert again.from_cache and again.loss == hist.loss


@pytest.mark.parametrize("inputs, match", [
    (lambda x: (x, x[:-1]), "same length"),
    (lambda x: (x, "text"), "tuple of tensors"),
    (lambda x: (), "tuple of tensors"),
])
def test_fit_bad_tuple_inputs(inputs, match):
    x, y = _blobs()
    with pytest.raises(ValueError, match=match):
        fit(_model(), MultiSimilarityLoss(), inputs(x), y, progress=False)


def test_cache_key_includes_hyper_parameters_outside_the_state_dict():
    x, y = _blobs()
    fit(_model(), MultiSimilarityLoss(alpha=2.0), x, y, epochs=1, p=4, k=4, progress=False)
    other = fit(_model(), MultiSimilarityLoss(alpha=3.0), x, y, epochs=1, p=4, k=4, progress=False)
    assert not other.from_cache


def test_checkpoint_key_covers_the_code_that_defines_the_model(monkeypatch):
    """A stale checkpoint (trained by other code) is never loaded: the key holds a hash of the
    source that decides training (the model's and loss's modules, every attention module)."""
    from pathlib import Path

    from dmlviz.attention.csalr import CSALR
    from dmlviz.losses import MultiSimilarityLoss
    from dmlviz.train import source_digest

    plain = source_digest(CSALR(8), MultiSimilarityLoss())
    read = Path.read_bytes
    for edited in ("losses.py", "nystrom.py", "landmarks.py"):  # the loss; helpers CSALR's forward calls
        monkeypatch.setattr(Path, "read_bytes", lambda self, e=edited: read(self) + (
            b"# edited" if self.name == e else b""))
        assert source_digest(CSALR(8), MultiSimilarityLoss()) != plain
