"""The one execution path of ``dmlviz run`` and ``dmlviz sweep``: papermill jobs as Dask tasks.

Every job (one notebook execution, the dict :func:`dmlviz.runner.execute_one` takes) is one
task on **Dask distributed**:

* default: an in-process ``LocalCluster`` of ``workers`` worker *processes*, one thread each
  (one notebook at a time per worker; memory limits off, since the notebook's kernel is a
  child process the worker's memory monitor does not see). Nothing to start.
* ``scheduler="tcp://host:8786"``: the tasks go to an existing cluster (``dask scheduler`` and
  ``dask worker --nthreads 1`` started elsewhere with the same environment, see the README).
  Run directories are written by the workers, so ``--out`` must then be a path every worker
  and this machine see (a shared file system); the results (status, metrics) come back to the
  client either way.

Faults:

* A notebook that fails (error in a cell, cell timeout, dead kernel) is a finished task whose
  result says so; it is never retried.
* A worker process that dies while running a task (killed, out of memory) loses the task; the
  scheduler hands it to another worker **once** (``distributed.scheduler.allowed-failures`` = 1
  on the local cluster). Each attempt registers itself in ``<out_dir>/.dmlviz-attempts.json``
  (keyed by this execution's token), so the retry is recorded (``attempts``, ``died_on``) and a
  third attempt — possible on a cluster configured with more allowed failures — is refused
  with status ``worker_died``. When the scheduler gives up instead (``KilledWorker``) the task
  is resubmitted once by the client, unless it was already tried twice.
* Ctrl-C cancels what has not finished, shuts the local cluster down and re-raises
  :class:`KeyboardInterrupt`; every result already passed to ``on_result`` is kept by the caller.

Inside a worker a task redirects the process's stdout/stderr to the notebook's ``run.log`` (as
the former one-process-per-notebook pool did) and restores them, the environment and logging
afterwards; a lock keeps a worker with several threads to one notebook at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ATTEMPTS_FILE = ".dmlviz-attempts.json"
MAX_ATTEMPTS = 2  # the first try and one retry on another worker
_LOCK = threading.Lock()


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def _read_attempts(out_dir: str | os.PathLike, token: str) -> list[dict]:
    """The attempts registered for this execution (``token``) in ``out_dir``."""
    path = Path(out_dir) / ATTEMPTS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return list(data.get("attempts", [])) if data.get("token") == token else []


def _write_attempts(out_dir: str | os.PathLike, token: str, attempts: list[dict]) -> None:
    path = Path(out_dir) / ATTEMPTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"token": token, "attempts": attempts}, indent=1))
    tmp.replace(path)


def died_result(error: dict, attempts: list[dict]) -> dict:
    """The result of a task whose worker died (no notebook result came back)."""
    return {"status": "worker_died", "duration_s": None, "error": error, "metrics": {},
            "executed": None, "html": None, "log": None, "figures": [], "claims": [],
            "worker": attempts[-1]["worker"] if attempts else None, "attempts": attempts,
            "died_on": [a["worker"] for a in attempts]}


def run_task(job: dict) -> dict:
    """Execute one job on this worker (the function Dask runs).

    Args:
        job: the dict of :func:`dmlviz.runner.execute_one`, plus ``token`` (this execution's
            id, for the attempts file).

    Returns:
        The result of :func:`~dmlviz.runner.execute_one` plus ``worker`` (its address),
        ``attempts`` (one ``{"worker", "started"}`` per try, the earlier ones on workers that
        died) and ``died_on`` (their addresses).
    """
    from dmlviz.runner import execute_one

    with _LOCK:
        worker = _worker_name()
        token = job.get("token", "")
        attempts = _read_attempts(job["out_dir"], token)
        if len(attempts) >= MAX_ATTEMPTS:
            return died_result({"cell": None, "exec_count": None, "ename": "WorkerDied",
                                "evalue": f"the worker died during each of {len(attempts)} "
                                "attempts; not tried again"}, attempts)
        attempts.append({"worker": worker, "host": socket.gethostname(), "pid": os.getpid(),
                         "started": _now()})
        _write_attempts(job["out_dir"], token, attempts)
        saved_fds = os.dup(1), os.dup(2)
        saved_std = sys.stdout, sys.stderr
        saved_env = dict(os.environ)
        root = logging.getLogger()
        saved_log = root.handlers[:], root.level
        try:
            result = execute_one(job)
        finally:
            log = sys.stdout
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            sys.stdout, sys.stderr = saved_std
            if log not in saved_std and hasattr(log, "close"):
                log.close()
            os.environ.clear()
            os.environ.update(saved_env)
            root.handlers[:] = saved_log[0]
            root.setLevel(saved_log[1])
    return {**result, "worker": worker, "attempts": attempts,
            "died_on": [a["worker"] for a in attempts[:-1]]}


# --------------------------------------------------------------------------- the client side

class Cluster:
    """A Dask client: on a fresh ``LocalCluster`` (``scheduler=None``) or an existing scheduler.

    Use as a context manager; ``client``, ``workers`` (how many are connected) and
    ``dashboard`` (its address, or ``None`` when unavailable) are set on entry.
    """

    def __init__(self, scheduler: str | None = None, workers: int = 1):
        if scheduler is None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.scheduler, self.n_workers = scheduler, workers
        self.cluster = self.client = None
        self.dashboard: str | None = None

    def __enter__(self) -> Cluster:
        import dask
        from distributed import Client, LocalCluster

        if self.scheduler is None:
            with dask.config.set({"distributed.scheduler.allowed-failures": MAX_ATTEMPTS - 1,
                                  "distributed.scheduler.worker-saturation": 1.0}):
                self.cluster = LocalCluster(n_workers=self.n_workers, threads_per_worker=1,
                                            processes=True, memory_limit=0,
                                            dashboard_address=":0")
            self.client = Client(self.cluster, set_as_default=False)
        else:
            try:
                self.client = Client(self.scheduler, timeout=30, set_as_default=False)
            except OSError as e:
                raise ValueError(f"--scheduler {self.scheduler}: cannot connect ({e}); start "
                                 "one with 'dask scheduler' (see the README)") from e
        self.dashboard = self._dashboard()
        return self

    def _dashboard(self) -> str | None:
        try:
            import bokeh  # noqa: F401 - the dashboard pages need it
        except ImportError:
            return None
        try:
            return self.client.dashboard_link
        except Exception:  # noqa: BLE001 - no dashboard service
            return None

    @property
    def workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    def __exit__(self, *exc) -> None:
        for thing in (self.client, self.cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - closing on the way out, maybe after Ctrl-C
                    logging.getLogger(__name__).debug("closing %s failed", thing, exc_info=True)


def _error_result(e: BaseException) -> dict:
    return {"status": "failed", "duration_s": None, "error": {
        "cell": None, "exec_count": None, "ename": type(e).__name__, "evalue": str(e)},
        "metrics": {}, "executed": None, "html": None, "log": None, "figures": [], "claims": [],
        "worker": None, "attempts": [], "died_on": []}


def _line(key: str, r: dict) -> str:
    from dmlviz.report import fmt_duration

    mark = "✓" if r["status"] == "ok" else "✗"
    err = r.get("error") or {}
    where = ""
    if err:
        where = f" (cell {err['cell']}: {err['ename']})" if err.get("cell") is not None \
            else f" ({err.get('ename')})"
    retry = f", retried after the worker died on {', '.join(r['died_on'])}" \
        if r.get("died_on") else ""
    return f"{mark} {key}: {r['status']}{where} {fmt_duration(r.get('duration_s'))}{retry}"


def execute(jobs: list[dict], *, scheduler: str | None = None, workers: int = 1,
            progress: bool = True, desc: str = "notebooks",
            on_result: Callable[[dict, dict], None] | None = None,
            on_start: Callable[[Cluster], None] | None = None) -> dict[str, dict]:
    """Run ``jobs`` as Dask tasks and return ``{job["key"]: result}``.

    Args:
        jobs: dicts for :func:`dmlviz.runner.execute_one`, each with a unique ``key`` (the
            notebook stem for ``dmlviz run``, the point id for ``dmlviz sweep``).
        scheduler: address of an existing scheduler; ``None`` = a local cluster.
        workers: worker processes of the local cluster (ignored with ``scheduler``).
        progress: a progress bar over tasks (done / failed / running) on stderr, and the
            dashboard address when one is available.
        desc: the bar's label.
        on_result: called as ``on_result(job, result)`` as each task finishes (in the order
            they finish), so the caller can save it at once.
        on_start: called with the :class:`Cluster` once it is up (before submitting).

    Returns:
        Every job's result (see :func:`run_task`); a job the workers could not run gets
        status ``worker_died`` (its worker died twice) or ``failed`` (with the exception).

    Raises:
        KeyboardInterrupt: after cancelling what had not finished (Ctrl-C).
    """
    from distributed import KilledWorker
    from tqdm.auto import tqdm

    keys = [j["key"] for j in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"job keys must be unique, got {keys}")
    token = uuid.uuid4().hex[:12]
    jobs = [{**j, "token": token} for j in jobs]
    results: dict[str, dict] = {}
    if not jobs:
        return results
    with Cluster(scheduler, workers) as cl:
        if on_start:
            on_start(cl)
        if progress:
            where = f"local cluster, {workers} worker process(es)" if scheduler is None \
                else f"scheduler {scheduler}, {cl.workers} worker(s) connected"
            print(f"dask: {where}; dashboard: "
                  f"{cl.dashboard or 'not available (install bokeh for it)'}", file=sys.stderr)
        client = cl.client
        futures = {}
        # one task group (tuple keys sharing a name), so a long sweep is queued on the
        # scheduler and handed out as workers free up
        for i, job in enumerate(jobs):
            futures[client.submit(run_task, job, key=(f"dmlviz-{token}", i),
                                  pure=False, retries=0)] = job
        resubmitted: set[str] = set()
        failed = 0
        bar = tqdm(total=len(jobs), desc=desc, unit="task", file=sys.stderr,
                   disable=not progress, dynamic_ncols=True)
        last_poll = 0.0
        try:
            while futures:
                finished = [f for f in futures if f.done()]
                for fut in finished:
                    job = futures.pop(fut)
                    if fut.status == "finished":
                        try:
                            r = fut.result()
                        except Exception as e:  # noqa: BLE001 - result could not be fetched
                            r = _error_result(e)
                    else:
                        try:
                            e = fut.exception()
                        except (Exception, asyncio.CancelledError) as c:  # noqa: BLE001 - cancelled
                            e = c
                        if isinstance(e, KilledWorker):
                            seen = _read_attempts(job["out_dir"], token)
                            if len(seen) < MAX_ATTEMPTS and job["key"] not in resubmitted:
                                resubmitted.add(job["key"])
                                retry = client.submit(run_task, job, pure=False, retries=0,
                                                      key=(f"dmlviz-{token}-retry",
                                                           keys.index(job["key"])))
                                futures[retry] = job
                                continue
                            r = died_result({"cell": None, "exec_count": None,
                                             "ename": "KilledWorker", "evalue": str(e)}, seen)
                        else:
                            r = _error_result(e)
                    results[job["key"]] = r
                    failed += r["status"] != "ok"
                    if on_result:
                        on_result(job, r)
                    if progress:
                        bar.write(_line(job["key"], r), file=sys.stderr)
                    bar.update(1)
                now = time.monotonic()
                if progress and (finished or now - last_poll > 2):
                    last_poll = now
                    # started = registered an attempt (a task the scheduler assigned to a
                    # worker may still wait there for the worker's one thread)
                    running = sum(1 for j in futures.values()
                                  if _read_attempts(j["out_dir"], token))
                    bar.set_postfix_str(f"done {len(results) - failed}, failed {failed}, "
                                        f"running {running}, waiting {len(futures) - running}")
                if futures and not finished:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            client.cancel(list(futures))
            bar.close()
            raise
        bar.close()
    return results
