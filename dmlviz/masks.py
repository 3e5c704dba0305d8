"""Attention mass on object masks: how much of a map lies on the object, for every method.

The procedural shapes (:func:`dmlviz.data.make_shapes`) come with an ``(S, S)`` object mask per
image. These statistics turn a mask and a map on the feature grid (attention rows, coding
weights, feature norms) into one number a claim can test, the same way for every method:

* :func:`object_fraction` — the fraction ``m_n`` of object pixels in each cell ``n`` of an
  ``H × W`` feature grid (the mask averaged over the pixels the cell covers). Every other
  statistic here is written in terms of ``m``, and its mean over the cells is the chance level
  (what a map spread evenly over the grid would put on the object).
* :func:`object_attention_mass` — for attention rows ``a_i·`` (query ``i`` attends to key
  ``j``), the mass ``Σ_j a_ij m_j`` that background queries and object queries put on the
  object, beside the chance level. Ebrahimpour et al. (WACV 2022), Sec. 4.5, Fig. 6: "For
  locations in the background, interestingly, the attention from that feature is distributed
  within the main object in the image" — claim ``soa.background_attends_object``, notebook 03;
  notebook 02 measures the same on CSALR's original and Nyström-reconstructed maps (Chen et
  al., IJCAI-20, Fig. 4).
* :func:`object_share` — for any non-negative map ``e`` over the grid, the share
  ``Σ_n e_n m_n / Σ_n e_n`` of its total on the object. Notebook 04 applies it to CRT's coding
  weights per prototype (Kan et al., NeurIPS 2022, Fig. 2: object vs "background" prototypes),
  notebook 05 to the feature energy before and after AiA's mask (Fang et al., TPAMI 2022,
  Fig. 9: does ``x^z = z ⊗ x`` move the energy towards the object?).
* :func:`channel_energy` — the channel norm ``‖x_n‖`` of a feature map at each position, the
  heatmap of a feature map in Fang et al.'s Fig. 9 and the ``e`` that notebook 05 gives
  :func:`object_share`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["channel_energy", "object_attention_mass", "object_fraction", "object_share"]


def object_fraction(masks: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Fraction of object pixels in each cell of an ``H × W`` feature grid.

    Args:
        masks: ``(B, S, S)`` boolean (or 0/1 float) object masks of the images.
        size: the feature map's ``(H, W)`` (or one int for a square map).

    Returns:
        ``(B, N)`` float in [0, 1], positions in the row-major order of a flattened map.
    """
    if not torch.is_tensor(masks) or masks.ndim != 3:
        raise ValueError(f"masks must be a tensor (B, S, S), got "
                         f"{tuple(masks.shape) if torch.is_tensor(masks) else type(masks).__name__}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    cells = F.adaptive_avg_pool2d(masks[:, None].float(), size)  # (B, 1, H, W)
    return cells.flatten(1)  # (B, N)


def object_attention_mass(attn: torch.Tensor, fraction: torch.Tensor,
                          background_below: float = 1e-6,
                          object_above: float = 0.5) -> dict[str, float]:
    """How much attention background and object positions put on the object.

    The attention mass of query ``i`` on the object is ``Σ_j a_ij m_j`` with ``m_j`` the
    object fraction of cell ``j``. A uniform attention row would give the image's mean
    object fraction — the chance level, computed per query and averaged over the same
    queries, so the two numbers are directly comparable.

    Args:
        attn: ``(B, N, N)`` attention rows (each sums to 1), e.g. ``SOAMaps.attention`` or
            ``SelfAttentionMaps.attention`` of a block called with ``return_maps=True``.
        fraction: ``(B, N)`` object fraction per cell (:func:`object_fraction`).
        background_below: a query is *background* when its cell's object fraction is
            below this (default: no object pixel at all).
        object_above: a query is *object* when its cell's object fraction exceeds this.

    Returns:
        ``{"background_to_object", "background_chance", "object_to_object",
        "object_chance", "background_queries", "object_queries"}`` — means over all
        queries of that kind in the batch, and how many there were.
    """
    if not torch.is_tensor(attn) or attn.ndim != 3 or attn.shape[1] != attn.shape[2]:
        raise ValueError(f"attn must be a tensor (B, N, N), got "
                         f"{tuple(attn.shape) if torch.is_tensor(attn) else type(attn).__name__}")
    if not torch.is_tensor(fraction) or fraction.shape != attn.shape[:2]:
        raise ValueError(f"fraction must be (B, N) = {tuple(attn.shape[:2])} to match attn, got "
                         f"{tuple(fraction.shape) if torch.is_tensor(fraction) else type(fraction).__name__}")
    m = fraction.to(attn.dtype)
    mass = (attn @ m[..., None]).squeeze(-1)  # (B, N) Σ_j a_ij m_j
    chance = m.mean(dim=1, keepdim=True).expand_as(m)  # (B, N) uniform attention
    out = {}
    for kind, mask in (("background", m < background_below), ("object", m > object_above)):
        n = int(mask.sum())
        out[f"{kind}_to_object"] = float(mass[mask].mean()) if n else float("nan")
        out[f"{kind}_chance"] = float(chance[mask].mean()) if n else float("nan")
        out[f"{kind}_queries"] = n
    return out


def object_share(energy: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """Share of a non-negative map's total that lies on the object, per image.

    ``Σ_n e_n m_n / Σ_n e_n`` with ``m_n`` the object fraction of cell ``n``
    (:func:`object_fraction`). Comparing the share of the masked map ``x^z`` with that of the
    input map ``x`` says whether the mask moved the feature energy towards the object.

    Args:
        energy: ``(B, N)`` or ``(B, H, W)`` non-negative values (e.g. the channel norm of a map).
        fraction: ``(B, N)`` object fraction per cell.

    Returns:
        ``(B,)`` shares in [0, 1].
    """
    if not torch.is_tensor(energy) or energy.ndim not in (2, 3):
        raise ValueError(f"energy must be a tensor (B, N) or (B, H, W), got "
                         f"{tuple(energy.shape) if torch.is_tensor(energy) else type(energy).__name__}")
    e = energy.flatten(1).double()
    if not torch.is_tensor(fraction) or fraction.shape != e.shape:
        raise ValueError(f"fraction must be (B, N) = {tuple(e.shape)} to match energy, got "
                         f"{tuple(fraction.shape) if torch.is_tensor(fraction) else type(fraction).__name__}")
    if (e < 0).any():
        raise ValueError("energy must be non-negative (use a norm or the mask itself)")
    return (e * fraction.double()).sum(1) / e.sum(1).clamp_min(1e-12)


def channel_energy(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` map → ``(B, H, W)`` channel norm ``‖x_n‖`` per position, on the CPU (the
    heatmap of a feature map in Fang et al.'s Fig. 9)."""
    if not torch.is_tensor(x) or x.ndim != 4:
        raise ValueError(f"x must be a tensor (B, C, H, W), got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    return x.detach().float().norm(dim=1).cpu()
