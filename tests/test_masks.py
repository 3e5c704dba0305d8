"""dmlviz.masks: the attention mass on object masks that every method's notebook measures,
checked by hand on grids small enough to count."""

from __future__ import annotations

import pytest
import torch

from dmlviz.masks import channel_energy, object_attention_mass, object_fraction, object_share


def test_object_fraction_and_mass_by_hand():
    """Ebrahimpour et al., Sec. 4.5 (Fig. 6): "For locations in the background, interestingly,
    the attention from that feature is distributed within the main object in the image" —
    the mass Σ_j a_ij m_j of a background query, against the uniform row's chance level."""
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True  # the object fills the top-left cell of a 2×2 grid
    frac = object_fraction(masks, 2)
    assert torch.equal(frac, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    uniform = torch.full((1, 4, 4), 0.25)
    s = object_attention_mass(uniform, frac)
    assert s["background_to_object"] == pytest.approx(0.25) == s["background_chance"]
    assert s["background_queries"] == 3 and s["object_queries"] == 1
    on_object = torch.zeros(1, 4, 4)
    on_object[0, :, 0] = 1.0  # every query attends to the object cell
    assert object_attention_mass(on_object, frac)["background_to_object"] == pytest.approx(1.0)


def test_object_fraction_averages_the_pixels_of_each_cell():
    masks = torch.zeros(1, 4, 6, dtype=torch.bool)
    masks[0, 0, :3] = True  # one row of the top-left 2×3 cell
    frac = object_fraction(masks, (2, 2))  # (B, N) row-major
    torch.testing.assert_close(frac, torch.tensor([[0.5, 0.0, 0.0, 0.0]]))


def test_object_share():
    """Σ_n e_n m_n / Σ_n e_n: the share of a non-negative map's total on the object."""
    energy = torch.tensor([[1.0, 3.0, 0.0, 0.0]])
    fraction = torch.tensor([[1.0, 0.5, 0.0, 1.0]])
    torch.testing.assert_close(object_share(energy, fraction), torch.tensor([2.5 / 4], dtype=torch.float64))
    torch.testing.assert_close(object_share(energy.reshape(1, 2, 2), fraction),
                               object_share(energy, fraction))  # (B, H, W) as (B, N)


def test_channel_energy_is_the_norm_over_channels():
    x = torch.zeros(1, 2, 1, 2)
    x[0, :, 0, 0] = torch.tensor([3.0, 4.0])
    energy = channel_energy(x.requires_grad_())
    torch.testing.assert_close(energy, torch.tensor([[[5.0, 0.0]]]))
    assert energy.device.type == "cpu" and not energy.requires_grad
    assert channel_energy(torch.rand(2, 8, 3, 3)).shape == (2, 3, 3)


def test_errors_name_the_argument():
    frac = torch.zeros(1, 4)
    with pytest.raises(ValueError, match=r"masks must be a tensor \(B, S, S\), got \(4, 4\)"):
        object_fraction(torch.zeros(4, 4), 2)
    with pytest.raises(ValueError, match=r"attn must be a tensor \(B, N, N\)"):
        object_attention_mass(torch.zeros(1, 4, 3), frac)
    with pytest.raises(ValueError, match="fraction must be"):
        object_attention_mass(torch.full((1, 4, 4), 0.25), frac[:, :3])
    with pytest.raises(ValueError, match="non-negative"):
        object_share(-torch.ones(1, 4), frac)
    with pytest.raises(ValueError, match="fraction must be"):
        object_share(torch.ones(1, 4), frac[:, :3])
    with pytest.raises(ValueError, match=r"x must be a tensor \(B, C, H, W\)"):
        channel_energy(torch.zeros(2, 3, 3))
