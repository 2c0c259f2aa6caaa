"""``oddframe detect`` over many inputs: one detection per video, in parallel worker processes or on a Dask cluster.

Inputs are paths, folders of videos (or of image folders), globs and text files that list them
(:func:`expand_inputs`). Each becomes a job whose outputs are a complete single detection in ``OUT/<name>/``
(:func:`oddframe.pipeline.detect.detect`: journaled, atomic, resumable). Running the same command again skips the
jobs whose detection is complete and resumes the interrupted ones; a failing job is reported with its error while
the others go on. At the end ``OUT/summary.csv`` has one row per job and ``OUT/scores.csv`` every complete job's
frame scores, in input order, whatever order the workers finished in.

Where the jobs run:

- ``workers=1``: here, one after the other.
- ``workers=N``: a pool of N worker processes on this machine (``spawn``: no forked torch threads), each with
  ``threads`` torch threads.
- ``cluster=ADDRESS``: the workers of a running Dask distributed scheduler (``tcp://host:8786``), or ``"auto"``
  for a local cluster of ``workers`` processes on the loopback interface. Dask rather than Ray: detection jobs are
  independent files in, files out, which is exactly ``Client.map`` over a list of paths; Dask is pure Python
  (a small optional extra, ``oddframe[cluster]``), starts a local cluster in about a second, and its workers keep
  module state between tasks, so each worker process loads the model once (:func:`run_job`). A cluster's workers
  must see the run, the inputs and ``OUT`` at the same paths (a shared file system).
"""

from __future__ import annotations

import csv
import glob
import json
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from oddframe.data.layouts import detect_layout
from oddframe.data.sources import is_source
from oddframe.errors import ConfigError, Interrupted, LayoutError, OutputError, SourceError
from oddframe.files import output_lock, safe_name, write_json
from oddframe.pipeline.detect import FIELDS, JOURNAL, RECORD, SCORES, detect, load_for_detection
from oddframe.pipeline.outputs import write_scores_csv
from oddframe.progress import progress_bar
from oddframe.stopping import StopRequest

LIST_SUFFIXES = (".txt", ".lst", ".list")
SUMMARY, ARCHIVE_RECORD = "summary.csv", "archive.json"
SUMMARY_FIELDS = ["job", "input", "status", "frames", "flagged", "invalid", "seconds", "worker", "error"]
CLUSTER_EXTRA = "pip install 'oddframe[cluster]' (Dask distributed)"


def _is_dataset(path: Path) -> bool:
    try:
        detect_layout(path)
    except LayoutError:
        return False
    return True


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Every input a list of paths, folders, globs and list files names, in order, each once.

    - a dataset folder or a frame source (video, image folder, FITS, array) is one input;
    - another folder stands for the sources directly inside it (a folder of videos or of image folders);
    - a ``.txt``/``.lst``/``.list`` file lists inputs, one a line (``#`` comments; relative to the list's folder);
    - a path that does not exist but holds ``*``, ``?`` or ``[`` is a glob (``**`` reaches into sub-folders).

    Raises:
        SourceError: a path that does not exist, a glob that matches nothing, or a folder with nothing to read.
    """
    found: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_file() and p.suffix.lower() in LIST_SUFFIXES and not is_source(p):
            lines = [ln.strip() for ln in p.read_text().splitlines()]
            listed = [p.parent / ln for ln in lines if ln and not ln.startswith("#")]
            found += expand_inputs([str(x) for x in listed]) if listed else []
        elif p.is_dir() and not is_source(p) and not _is_dataset(p):
            children = sorted(c for c in p.iterdir() if not c.name.startswith(".") and is_source(c))
            if not children:
                raise SourceError(f"{p}: no dataset, video, image folder or other source in this folder")
            found += children
        elif p.exists():
            found.append(p)
        elif any(ch in str(item) for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
            if not matches:
                raise SourceError(f"{item}: the pattern matches no file or folder")
            found += [m for m in matches if m.is_dir() or is_source(m)]
        else:
            raise SourceError(f"{p}: no such file or folder")
    seen: set[Path] = set()
    return [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]  # type: ignore[func-returns-value]


def is_many(inputs: list[str | Path]) -> bool:
    """Whether ``inputs`` ask for one detection per input (several, or a folder of sources, a glob, a list)."""
    if len(inputs) != 1:
        return True
    p = Path(inputs[0]).expanduser()
    if not p.exists():
        return any(ch in str(inputs[0]) for ch in "*?[")
    if p.is_file():
        return p.suffix.lower() in LIST_SUFFIXES and not is_source(p)
    return not is_source(p) and not _is_dataset(p)


def job_names(paths: list[Path]) -> list[str]:
    """A distinct folder name per input: its name (stem for a file), with parent folders added where names repeat."""
    parts = [p.resolve().parts if p.is_dir() else p.resolve().with_suffix("").parts for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["_".join(pp[-d:]) for pp, d in zip(parts, depth)]
        repeated = {n for n in names if names.count(n) > 1}
        if not repeated or all(depth[i] >= len(parts[i]) for i, n in enumerate(names) if n in repeated):
            break
        depth = [d + 1 if n in repeated else d for d, n in zip(depth, names)]
    names = [safe_name(n) for n in names]
    return [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]


def job_state(out: Path) -> str:
    """``"complete"`` (skip it), ``"partial"`` (resume it), ``"leftover"`` (start again) or ``"new"``."""
    try:
        record = json.loads((out / RECORD).read_text()) if (out / RECORD).is_file() else {}
    except (OSError, ValueError):
        record = {}
    if record.get("status") == "complete" and (out / SCORES).is_file() and not (out / JOURNAL).exists():
        return "complete"
    if (out / JOURNAL).is_file():
        return "partial"
    return "leftover" if out.is_dir() and any(out.iterdir()) else "new"


# ----------------------------------------------------------------------------------------------- a worker

_LOADED: dict[tuple, Any] = {}  #: per worker process: the run loaded for detection, by (run, overrides, backend)
_LOADS = {"n": 0}  #: how many times this process loaded a run (tests check: once per worker)


def _quiet_worker(threads: int) -> None:
    """Pool initialiser: torch threads, and Ctrl-C left to the detection (which saves) rather than the idle loop."""
    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_job(job: dict[str, Any], *, run_dir: str, overrides: tuple[str, ...], backend: str, maps: bool,
            overwrite: bool, threads: int) -> dict[str, Any]:
    """Detect one input into its folder; the run is loaded once per process and kept for the next jobs.

    Returns a row of ``summary.csv`` (status ``done``, ``skipped``, ``interrupted`` or ``error`` with the error).
    """
    import torch

    t0 = time.perf_counter()
    out = Path(job["out"])
    row = {"job": job["name"], "input": job["input"], "frames": "", "flagged": "", "invalid": "", "error": "",
           "worker": f"{os.uname().nodename}:{os.getpid()}"}
    state = job_state(out)
    if state == "complete" and not overwrite:
        return {**row, "status": "skipped", "seconds": 0.0, "loads": _LOADS["n"]}
    try:
        key = (run_dir, tuple(overrides), backend)
        if key not in _LOADED:
            if threads:
                torch.set_num_threads(threads)
            _LOADED.clear()
            _LOADED[key] = load_for_detection(run_dir, overrides=overrides, backend=backend)
            _LOADS["n"] += 1
        s = detect(run_dir, job["input"], out, overrides=overrides, maps=maps, progress=False, backend=backend,
                   loaded=_LOADED[key], overwrite=overwrite or state == "leftover",
                   resume=state == "partial" and not overwrite)
        row.update(status="done", frames=s.n_frames, flagged=s.n_flagged if s.threshold is not None else "",
                   invalid=s.n_invalid)
    except Interrupted as exc:
        row.update(status="interrupted", error=str(exc).splitlines()[0])
    except Exception as exc:  # noqa: BLE001 - one broken input must not stop the others: reported in the summary
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
        row.update(status="error", error=f"{type(exc).__name__}: {first}")
    return {**row, "seconds": round(time.perf_counter() - t0, 3), "loads": _LOADS["n"]}


# ----------------------------------------------------------------------------------------------- the runners


def _local(jobs: list[dict], fn: Callable[[dict], dict], workers: int, threads: int,
           stop: StopRequest) -> Iterator[dict]:
    if workers <= 1:
        for job in jobs:
            if stop.requested:
                return
            row = fn(job)
            yield row
            if row["status"] == "interrupted":  # the detection took the signal (its handler, not ours): stop too
                return
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_quiet_worker, initargs=(threads or 1,)) as pool:
        futures = {pool.submit(fn, job): job for job in jobs}
        try:
            for f in as_completed(futures):
                yield _result(f, futures[f])
                if stop.requested:  # queued jobs are dropped; running ones finish their video (or stop on Ctrl-C)
                    for g in futures:
                        g.cancel()
        finally:
            for g in futures:
                g.cancel()


def _result(future: Any, job: dict) -> dict:
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - a worker that died (not the detection's own error, caught in run_job)
        if "Cancelled" in type(exc).__name__:
            return {"job": job["name"], "input": job["input"], "status": "not started", "error": ""}
        return {"job": job["name"], "input": job["input"], "status": "error",
                "error": f"worker failed: {type(exc).__name__}: {exc}"}


def require_dask() -> tuple[Any, Any]:
    """Dask distributed's ``Client`` and ``LocalCluster``; a :class:`ConfigError` says what to install."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError(f"--cluster needs Dask distributed: {CLUSTER_EXTRA}") from None
    return Client, LocalCluster


def dask_client(address: str, workers: int, threads: int) -> Any:
    """A Dask client of the scheduler at ``address``, or of a new local cluster (``"auto"``, loopback only).

    Raises:
        ConfigError: Dask distributed is not installed (the message says what to install), or no scheduler answers.
    """
    Client, LocalCluster = require_dask()
    if address == "auto":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, worker_dashboard_address=None,
                               env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        return Client(cluster)
    try:
        return Client(address, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"--cluster {address}: no Dask scheduler answers there ({exc})") from None


def _dask(jobs: list[dict], fn: Callable[[dict], dict], address: str, workers: int, threads: int,
          stop: StopRequest) -> Iterator[dict]:
    from dask.distributed import as_completed as dask_completed

    client = dask_client(address, workers, threads)
    try:
        futures = client.map(fn, jobs, key=[f"oddframe-detect-{j['name']}-{time.time_ns()}" for j in jobs])
        by_key = {f.key: j for f, j in zip(futures, jobs)}
        for f in dask_completed(futures):
            yield _result(f, by_key[f.key])
            if stop.requested:
                client.cancel(futures)
                break
    finally:
        cluster = getattr(client, "cluster", None) if address == "auto" else None
        client.close()
        if cluster is not None:
            cluster.close()


# ----------------------------------------------------------------------------------------------- the task


@dataclass
class ArchiveSummary:
    """What :func:`detect_many` did: one row per job (``summary.csv``) and the totals."""

    out: Path
    rows: list[dict[str, Any]]
    seconds: float
    files: list[Path] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)

    @property
    def frames(self) -> int:
        return sum(int(r["frames"]) for r in self.rows if r.get("frames") not in ("", None))

    @property
    def flagged(self) -> int:
        return sum(int(r["flagged"]) for r in self.rows if r.get("flagged") not in ("", None))

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "error"]


def detect_many(
    run_dir: str | Path,
    inputs: list[str | Path],
    out: str | Path,
    *,
    overrides: tuple[str, ...] | list[str] = (),
    maps: bool = False,
    backend: str = "torch",
    workers: int = 1,
    threads: int | None = None,
    cluster: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ArchiveSummary:
    """Detect every input of ``inputs`` (see :func:`expand_inputs`) into ``OUT/<name>/``, in parallel.

    Args:
        workers: worker processes (on this machine, or of the local cluster with ``cluster="auto"``).
        threads: torch threads per worker (default: the cores divided among the workers, at least 1; with one
            worker, this process's setting).
        cluster: a Dask scheduler address, or ``"auto"`` for a local cluster; None runs on this machine.
        overwrite: detect every input again (default: skip the complete ones, resume the interrupted ones).

    Raises:
        SourceError: an input names nothing to read (before any job starts).
        ConfigError: a bad run, config or backend (checked here once), or ``--cluster`` without Dask.
        OutputError: ``out`` is being written by another process, or holds a single detection.
    """
    t0 = time.perf_counter()
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    out = Path(out).resolve()
    paths = expand_inputs(list(inputs))
    load_for_detection(run_dir, overrides=overrides, backend=backend)  # refuse a bad run before any worker starts
    if cluster:
        require_dask()
    here = workers == 1 and not cluster  # in this process: its thread setting stays unless threads is given
    threads = threads or (0 if here else max(1, (os.cpu_count() or 1) // workers))
    jobs = [{"name": n, "input": str(p.resolve()), "out": str(out / n)} for n, p in zip(job_names(paths), paths)]
    fn = _Job(str(Path(run_dir).resolve()), tuple(overrides), backend, maps, overwrite, threads)
    with output_lock(out, "oddframe detect (many inputs)"):
        if (out / RECORD).is_file():
            raise OutputError(f"{out} holds a single detection ({out / RECORD}); choose another output for many inputs")
        write_json({"status": "running", "jobs": len(jobs), "cluster": cluster, "workers": workers}, out / ARCHIVE_RECORD)
        results: dict[str, dict] = {}
        with StopRequest("the detections", enabled=True) as stop, progress_bar(progress) as bar:
            task = bar.add_task("detecting inputs", total=len(jobs))
            runner = _dask(jobs, fn, cluster, workers, threads, stop) if cluster else \
                _local(jobs, fn, workers, threads, stop)
            for r in runner:
                results[r["job"]] = r
                bar.advance(task)
        rows = [results.get(j["name"], {"job": j["name"], "input": j["input"], "status": "not started"}) for j in jobs]
        files = _write_outputs(out, jobs, rows)
        interrupted = stop.requested or any(r["status"] in ("interrupted", "not started") for r in rows)
        write_json({"status": "interrupted" if interrupted else "complete", "jobs": len(jobs), "cluster": cluster,
                    "workers": workers, "seconds": time.perf_counter() - t0}, out / ARCHIVE_RECORD)
    summary = ArchiveSummary(out, rows, time.perf_counter() - t0, files)
    if interrupted:
        raise Interrupted(f"stopped after {summary.count('done')} of {len(jobs)} inputs; written: {out / SUMMARY}; run "
                          "the same command again to continue", signum=stop.signum or signal.SIGINT)
    return summary


@dataclass(frozen=True)
class _Job:
    """:func:`run_job` with the run's settings bound: a picklable callable for process pools and Dask."""

    run_dir: str
    overrides: tuple[str, ...]
    backend: str
    maps: bool
    overwrite: bool
    threads: int

    def __call__(self, job: dict[str, Any]) -> dict[str, Any]:
        return run_job(job, run_dir=self.run_dir, overrides=self.overrides, backend=self.backend, maps=self.maps,
                       overwrite=self.overwrite, threads=self.threads)


def _write_outputs(out: Path, jobs: list[dict], rows: list[dict]) -> list[Path]:
    """``summary.csv`` (one row per job) and ``scores.csv`` (every complete job's scores, in input order)."""
    write_scores_csv(rows, out / SUMMARY, SUMMARY_FIELDS)
    scores: list[dict[str, Any]] = []
    for job, row in zip(jobs, rows):
        path = Path(job["out"]) / SCORES
        if row["status"] in ("done", "skipped") and path.is_file():
            with path.open(newline="") as f:
                scores += [{"job": job["name"], **r} for r in csv.DictReader(f)]
    write_scores_csv(scores, out / SCORES, ["job", *FIELDS])
    return [out / SUMMARY, out / SCORES]
