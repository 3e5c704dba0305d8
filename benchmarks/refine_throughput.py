"""Throughput of neighbour refinement (Alg. 2) and of the kNN search that builds its contexts.

Measured in one run, on one device, with the thread count set and printed:

* ``knn``        :func:`dmlviz.metrics.knn` of a whole gallery against itself (self excluded),
  ``--gallery`` × ``--dim`` embeddings, K neighbours — the search step of Alg. 2;
* ``per-pair``   today's formula: :class:`~dmlviz.attention.refine.NeighborRefiner` on batches
  of queries with their contexts gathered as ``(B, K, D)`` rows, so every (query, neighbour)
  pair is projected to its key and value again in every block;
* ``shared``     the same formula with each gallery row projected once per block and the
  projected rows gathered (:meth:`NeighborRefiner.refine_gallery`, what
  :func:`~dmlviz.neighbours.refine_embeddings` runs);
* ``alg2``       :func:`~dmlviz.neighbours.refine_embeddings` end to end (kNN + refine)
  on the whole gallery (by default on CUDA only; ``--alg2`` forces it).

Both refine rows refine the same ``--refine-rows`` gallery rows (default: 16,384 on a CPU, the
whole gallery on CUDA) with the same neighbour indices (random: the cost does not depend on
which rows they are) and print embeddings refined per second; ``speed-up`` is shared / per-pair
of this run. Each time is the median of ``--repeats`` runs, after one warm-up (CUDA:
synchronised). The refiner has random weights (``zero_init=False``).

    python benchmarks/refine_throughput.py --threads 1                      # CPU, float32
    python benchmarks/refine_throughput.py --device cuda --dtype bfloat16   # the GPU targets
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dmlviz.attention.refine import NeighborRefiner
from dmlviz.metrics import knn
from dmlviz.neighbours import refine_embeddings
from dmlviz.utils import get_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def median_seconds(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_pair(refiner: NeighborRefiner, gallery: torch.Tensor, idx: torch.Tensor,
             batch: int) -> torch.Tensor:
    """Today's formula: contexts gathered as rows, every pair projected in every block."""
    return torch.cat([refiner(gallery[s:s + batch], gallery[idx[s:s + batch]])
                      for s in range(0, len(gallery), batch)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's current setting)")
    ap.add_argument("--gallery", type=int, default=60_000, help="N embeddings of the kNN (60,000)")
    ap.add_argument("--refine-rows", type=int, default=None,
                    help="gallery rows refined per timing (default 16,384 CPU, --gallery CUDA)")
    ap.add_argument("--dim", type=int, default=512, help="D (default 512)")
    ap.add_argument("--k", type=int, default=8, help="K neighbours (default 8)")
    ap.add_argument("--blocks", type=int, default=8, help="T refinement blocks (default 8)")
    ap.add_argument("--heads", type=int, default=8, help="H heads (default 8)")
    ap.add_argument("--batch", type=int, default=None,
                    help="queries per refiner batch (default 4096 CPU, 65536 CUDA)")
    ap.add_argument("--chunk", type=int, default=None,
                    help="kNN queries per similarity block (default 1024 CPU, 8192 CUDA)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--alg2", action="store_true", help="time Alg. 2 end to end on a CPU too")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    dtype = DTYPES[args.dtype]
    cuda = device.type == "cuda"
    batch = args.batch or (65_536 if cuda else 4096)
    chunk = args.chunk or (8192 if cuda else 1024)
    rows = min(args.refine_rows or (args.gallery if cuda else 16_384), args.gallery)
    where = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"device={device} ({where}), threads={torch.get_num_threads()}, dtype={args.dtype}, "
          f"N={args.gallery:,}, refine rows={rows:,}, D={args.dim}, K={args.k}, T={args.blocks}, "
          f"H={args.heads}, batch={batch}, torch {torch.__version__}")

    g = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(args.gallery, args.dim, generator=g), dim=1)
    gallery = gallery.to(device, dtype)
    refiner = NeighborRefiner(args.dim, args.blocks, args.heads, zero_init=False).to(device, dtype).eval()
    sub = gallery[:rows]
    idx = torch.randint(0, rows, (rows, args.k), generator=g).to(device)

    t_knn = median_seconds(lambda: knn(gallery, None, k=args.k, chunk_size=chunk), device,
                           args.repeats)
    with torch.no_grad():
        t_pair = median_seconds(lambda: per_pair(refiner, sub, idx, batch), device, args.repeats)
        t_shared = median_seconds(lambda: refiner.refine_gallery(sub, sub, idx, batch_size=batch),
                                  device, args.repeats)
        err = (per_pair(refiner, sub[:256], idx[:256] % 256, batch).float()
               - refiner.refine_gallery(sub[:256], sub[:256], idx[:256] % 256).float()).abs().max()
    print(f"{'step':<10s} {'seconds':>10s} {'embeddings/s':>14s}")
    print(f"{'knn':<10s} {t_knn:>10.3f} {args.gallery / t_knn:>14,.0f}   (whole gallery, self excluded)")
    print(f"{'per-pair':<10s} {t_pair:>10.3f} {rows / t_pair:>14,.0f}   (today's formula: K, V "
          "projected per (query, neighbour) pair)")
    print(f"{'shared':<10s} {t_shared:>10.3f} {rows / t_shared:>14,.0f}   (K, V projected once per "
          f"gallery row and block; max |difference| {float(err):.1e})")
    print(f"speed-up shared / per-pair: {t_pair / t_shared:.2f}× (same run, same threads; target ≥ 2×)")
    if cuda or args.alg2:
        t_alg2 = median_seconds(lambda: refine_embeddings(
            refiner, gallery, args.k, batch_size=batch, chunk_size=chunk, device=device, dtype=dtype),
            device, args.repeats)
        print(f"{'alg2':<10s} {t_alg2:>10.3f} {args.gallery / t_alg2:>14,.0f}   (kNN + refine, results "
              f"on the CPU; kNN is {t_knn / t_alg2:.0%} of it)")
    if cuda:
        rate = rows / t_shared
        print(f"targets (bf16): refine ≥ 1,000,000/s -> {'met' if rate >= 1e6 else 'NOT met'}; "
              f"kNN < 50 ms -> {'met' if t_knn < 0.05 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
