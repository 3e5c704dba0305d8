"""Throughput of neighbour refinement (Alg. 2) and of the kNN search that builds its contexts.

The refinement paper reports 13K embeddings/s and 3.5 s per SOP split (60K × 512) on a TitanXP.
This script measures, in one run and on one device:

* ``knn``     :func:`dmlviz.metrics.knn` of a whole gallery against itself (self excluded),
  ``--gallery`` × ``--dim`` embeddings, K neighbours — the search step of Alg. 2;
* ``refine``  :class:`dmlviz.attention.refine.NeighborRefiner` (T blocks, H heads) forward on
  ``--batch`` queries with contexts already gathered — embeddings refined per second;
* ``alg2``    :func:`dmlviz.attention.refine.refine_embeddings` end to end (kNN + gather + refine)
  on the whole gallery, as a user calls it (by default on CUDA only: on a CPU it is the kNN time
  plus N / the refine rate, minutes at N = 60,000; ``--alg2`` forces it).

Each time is the median of ``--repeats`` runs, after one warm-up on CUDA (synchronised). The refiner
has random weights (``zero_init=False``): the cost does not depend on training. Ratios are
between numbers of the same run.

    python benchmarks/refine_throughput.py                                  # CPU, float32
    python benchmarks/refine_throughput.py --device cuda --dtype bfloat16   # the GPU targets
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dmlviz.attention.refine import NeighborRefiner, refine_embeddings
from dmlviz.metrics import knn
from dmlviz.utils import get_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PAPER = "paper (TitanXP): 13,000 embeddings/s refined, 3.5 s per SOP split"


def median_seconds(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up on CUDA)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        fn()
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--gallery", type=int, default=60_000, help="N embeddings (default 60,000)")
    ap.add_argument("--dim", type=int, default=512, help="D (default 512)")
    ap.add_argument("--k", type=int, default=8, help="K neighbours (default 8)")
    ap.add_argument("--blocks", type=int, default=8, help="T refinement blocks (default 8)")
    ap.add_argument("--heads", type=int, default=8, help="H heads (default 8)")
    ap.add_argument("--batch", type=int, default=None,
                    help="queries per refiner forward (default 4096 CPU, 65536 CUDA)")
    ap.add_argument("--chunk", type=int, default=None,
                    help="kNN queries per similarity block (default 1024 CPU, 8192 CUDA)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--alg2", action="store_true", help="time Alg. 2 end to end on a CPU too")
    args = ap.parse_args(argv)
    device = get_device(args.device)
    dtype = DTYPES[args.dtype]
    cuda = device.type == "cuda"
    batch = args.batch or (65_536 if cuda else 4096)
    chunk = args.chunk or (8192 if cuda else 1024)
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device={device} ({where}), dtype={args.dtype}, N={args.gallery:,}, D={args.dim}, "
          f"K={args.k}, T={args.blocks}, H={args.heads}, batch={batch}, torch {torch.__version__}")

    g = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(args.gallery, args.dim, generator=g), dim=1)
    gallery = gallery.to(device, dtype)
    refiner = NeighborRefiner(args.dim, args.blocks, args.heads, zero_init=False).to(device, dtype).eval()
    queries = gallery[:batch]
    context = gallery[torch.randint(0, args.gallery, (len(queries), args.k), generator=g).to(device)]

    t_knn = median_seconds(lambda: knn(gallery, None, k=args.k, chunk_size=chunk), device,
                           args.repeats)
    with torch.no_grad():
        t_refine = median_seconds(lambda: refiner(queries, context), device, args.repeats)
    refine_rate = len(queries) / t_refine
    print(f"{'step':<8s} {'seconds':>10s} {'embeddings/s':>14s}")
    print(f"{'knn':<8s} {t_knn:>10.3f} {args.gallery / t_knn:>14,.0f}   (whole gallery, self excluded)")
    print(f"{'refine':<8s} {t_refine:>10.4f} {refine_rate:>14,.0f}   ({len(queries):,} queries, "
          "contexts gathered)")
    if cuda or args.alg2:
        t_alg2 = median_seconds(lambda: refine_embeddings(
            refiner, gallery, args.k, batch_size=batch, chunk_size=chunk, device=device, dtype=dtype),
            device, args.repeats)
        print(f"{'alg2':<8s} {t_alg2:>10.3f} {args.gallery / t_alg2:>14,.0f}   (kNN + gather + refine, "
              f"results on the CPU; kNN is {t_knn / t_alg2:.0%} of it)")
    print(f"refine rate / paper's: {refine_rate / 13_000:.2f}× ({PAPER})")
    if cuda:
        print(f"targets (H100, bf16): refine ≥ 1,000,000/s -> {'met' if refine_rate >= 1e6 else 'NOT met'}; "
              f"kNN < 50 ms -> {'met' if t_knn < 0.05 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
