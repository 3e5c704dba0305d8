"""Time and peak memory of explicit self-attention, SDPA and CSALR at growing N.

Chen et al. (IJCAI-20) motivate CSALR by the O(N²) cost of self-attention on high-resolution
feature maps. This script measures, in one run and on one device, the attention aggregation
alone (no projections), for one image and ``C`` channels:

* ``sa``     explicit ``softmax(q kᵀ / √C) v`` through the N × N map (eqs. 1–2);
* ``sdpa``   ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels, no N × N
  map on the kernels that support it);
* ``plain``  the same low-rank attention written the obvious way (kernel = stride average
  pooling, three einsum softmaxes, the indicator of eqs. 15–16, one ``torch.linalg.solve``):
  the reference dmlviz's CSALR should not be slower than;
* ``csalr-G`` :func:`dmlviz.attention.csalr.csalr_attention` with ``M`` pooled landmarks and
  ``G`` groups (the channels split into G heads), indicator on (eqs. 15–16: ``A_nm + Pᵀ``,
  ``A_mm + I`` solved exactly, ``B = A_mn``).

The thread count is printed with the table; ratios are between rows of the same run.

Time: median of ``--repeats`` forward passes after ``--warmup`` (``dmlviz.cost.images_per_second``
with batch 1). Peak memory: bytes allocated during a pass above the inputs
(``dmlviz.cost.peak_memory``: CUDA allocator peak, or the CPU storage tracker). Ratios are
taken between numbers of the same run. Explicit SA is skipped where its N × N maps (logits
and softmax, 2·N²·itemsize) would exceed ``--max-gib``.

    python benchmarks/attention_cost.py                       # CPU, N = 1024, 4096, 16384
    python benchmarks/attention_cost.py --device cuda --dtype bfloat16 --sizes 1024 4096 16384 65536
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from dmlviz.attention.csalr import csalr_attention
from dmlviz.attention.landmarks import landmark_grid, patches
from dmlviz.cost import images_per_second, peak_memory
from dmlviz.utils import get_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ExplicitSA(nn.Module):
    def forward(self, q, k, v):  # (1, 1, N, C) each
        a = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)  # (1, 1, N, N)
        return a @ v


class SDPA(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


class PlainLowRank(nn.Module):
    """Eqs. (11)–(17) in a dozen lines: the reference for ``csalr-1``."""

    def __init__(self, landmarks: int, size: tuple[int, int]):
        super().__init__()
        grid = landmark_grid(landmarks, size)
        patch = patches(size[0] * size[1], grid, size)  # (N,) disjoint patch of each position
        onehot = (patch[None, :] == torch.arange(grid[0] * grid[1])[:, None]).float()  # (M, N)
        self.register_buffer("p_t", onehot.T.contiguous())  # (N, M): 1(Q_i, K'_j)
        self.register_buffer("mean", onehot / onehot.sum(1, keepdim=True))  # (M, N) average pooling

    def forward(self, q, k, v):  # (1, 1, N, C) each
        q, k, v = q[0, 0], k[0, 0], v[0, 0]  # (N, C)
        s = q.shape[-1] ** -0.5
        qt, kt = self.mean.to(q.dtype) @ q, self.mean.to(q.dtype) @ k  # (M, C) landmarks
        a_nm = torch.softmax(torch.einsum("nc,mc->nm", q, kt) * s, -1) + self.p_t.to(q.dtype)  # (15)
        a_mm = torch.softmax(torch.einsum("ic,jc->ij", qt, kt) * s, -1)
        a_mm = a_mm + torch.eye(len(qt), dtype=q.dtype, device=q.device)  # (16)
        b = torch.softmax(torch.einsum("mc,nc->mn", qt, k) * s, -1)  # (13)
        w_ = torch.linalg.solve(a_mm, a_nm, left=False)  # W = A_nm A_mm⁻¹, (14)
        return torch.einsum("nm,mc->nc", w_, torch.einsum("mn,nc->mc", b, v))[None, None]  # (17)


class CSALRCore(nn.Module):
    def __init__(self, groups: int, landmarks: int, size: tuple[int, int]):
        super().__init__()
        self.groups, self.landmarks, self.size = groups, landmarks, size

    def forward(self, q, k, v):  # (1, 1, N, C) → (1, G, N, C/G)
        g = self.groups

        def split(t):
            return t.reshape(1, t.shape[2], g, -1).transpose(1, 2)

        c = q.shape[-1] // g
        return csalr_attention(split(q), split(k), split(v), self.landmarks, size=self.size,
                               scale=c ** -0.5)


def side(n: int) -> tuple[int, int]:
    h = int(math.isqrt(n))
    if h * h != n:
        raise SystemExit(f"--sizes must be square numbers of positions (H = W), got {n}")
    return h, h


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--sizes", type=int, nargs="+", default=None,
                    help="N = H·W (square maps); default 1024 4096 16384 (+ 65536 on CUDA)")
    ap.add_argument("--channels", type=int, default=64, help="C of q, k, v (default 64)")
    ap.add_argument("--landmarks", type=int, default=96, help="M (default 96, an 8×12 grid)")
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max-gib", type=float, default=None,
                    help="skip explicit SA when its two N×N maps exceed this (default 4 CPU, "
                         "40 CUDA)")
    args = ap.parse_args(argv)
    device = get_device(args.device)
    dtype = DTYPES[args.dtype]
    sizes = args.sizes or ([1024, 4096, 16384] + ([65536] if device.type == "cuda" else []))
    max_bytes = (args.max_gib if args.max_gib is not None
                 else (40.0 if device.type == "cuda" else 4.0)) * 2**30
    item = torch.empty((), dtype=dtype).element_size()
    print(f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU, ' + str(torch.get_num_threads()) + ' threads'}), "
          f"dtype={args.dtype}, C={args.channels}, M={args.landmarks}, torch {torch.__version__}")
    header = f"{'N':>7s} {'method':>9s} {'ms':>10s} {'peak MiB':>10s} {'vs SA time':>11s} {'vs SDPA time':>13s} {'SA mem / mem':>13s}"
    print(header)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for n in sizes:
        size = side(n)
        q, k, v = (torch.randn(1, 1, n, args.channels, generator=g).to(device, dtype) for _ in range(3))
        methods = {"sa": ExplicitSA(), "sdpa": SDPA(), "plain": PlainLowRank(args.landmarks, size)}
        methods.update({f"csalr-{gr}": CSALRCore(gr, args.landmarks, size) for gr in args.groups})
        results = {}
        for name, mod in methods.items():
            if name == "sa" and 2 * n * n * item > max_bytes:
                print(f"{n:>7d} {name:>9s}   skipped: two N×N maps need "
                      f"{2 * n * n * item / 2**30:.1f} GiB > --max-gib {max_bytes / 2**30:.1f}")
                continue
            try:
                ips = images_per_second(mod, (q, k, v), repeats=args.repeats,
                                        warmup=args.warmup, device=device)
                mem = peak_memory(mod, (q, k, v), device=device)
            except (RuntimeError, torch.OutOfMemoryError) as err:  # e.g. out of memory
                print(f"{n:>7d} {name:>9s}   failed: {str(err).splitlines()[0][:90]}")
                continue
            results[name] = (1e3 / ips, mem)
        for name, (ms, mem) in results.items():
            sa, sd = results.get("sa"), results.get("sdpa")
            r_sa = f"{sa[0] / ms:.1f}×" if sa else "—"
            r_sd = f"{sd[0] / ms:.1f}×" if sd else "—"
            r_mem = f"{sa[1] / max(mem, 1):.0f}×" if sa else "—"
            print(f"{n:>7d} {name:>9s} {ms:>10.2f} {mem / 2**20:>10.2f} {r_sa:>11s} {r_sd:>13s} {r_mem:>13s}")
        sys.stdout.flush()
    print(f"(total {time.perf_counter() - start:.0f} s; ratios > 1× mean CSALR/SDPA is faster or "
          "smaller than the reference column)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
