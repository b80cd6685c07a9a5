"""`lit-avatar data build --engine ray`: the build's jobs as Ray tasks, precompute as Ray actors.

Why the same jobs: a job (data_tools.sources.ShardJob) writes its own shards and done marker and nothing
else, so running it in a Ray task instead of a local process changes nothing in the bytes: the driver plans
and assembles the manifest, the workers decode, detect, crop, filter, encode and write (into --out on a file
system every node sees). A task whose worker dies is retried by Ray (it first removes what the dead attempt
left); a job that still cannot finish is recorded in the manifest, source by source, and the build goes on.

Precompute: the encoders (Wan VAE, wav2vec2) live in actors that load them once (one per GPU with
`num_gpus=1`; CPU actors where the cluster has no GPU), and the job tasks feed them batches of clips.

Ray is imported only here, only when --engine ray is asked for.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lit_avatar.errors import UserError

TASK_RETRIES = 3  # a job whose worker process dies is run again this many times
ACTOR_RESTARTS = 3


def import_ray():
    """The ray module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray: Ray is not installed; expected `pip install lit-avatar[cluster]` "
                        "(or `pip install ray`) on the driver and on every node") from None
    return ray


class PrecomputeActor:
    """Holds the encoders once and encodes batches of clips (data_tools.precompute.precompute_batch).

    Args:
        latents: --precompute-latents spec or None.
        audio: --precompute-audio spec or None.
        threads: torch CPU threads.
    """

    def __init__(self, latents: str | None, audio: str | None, threads: int) -> None:
        import torch

        from data_tools.precompute import Precomputer

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = Precomputer(latents, audio, threads=threads, device=device)

    def run(self, samples: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Exception | None]:
        from data_tools.precompute import precompute_batch

        return precompute_batch(self.model, samples)


class _ActorBatches:
    """The build worker's batch encoder, answered by an actor."""

    def __init__(self, actor) -> None:
        self.actor = actor

    def __call__(self, samples: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Exception | None]:
        import ray

        return ray.get(self.actor.run.remote(samples))


def _job_task(options, job, out_dir: str, actor) -> dict[str, Any]:
    """One job in a Ray worker: the worker's detector is loaded once per process and options."""
    from data_tools import build
    from data_tools.shards import discard_unfinished

    state = build._worker_state
    if state.get("options") != options or state.get("actor") != actor:
        build._init_worker(options, precompute=_ActorBatches(actor) if actor is not None else None)
        state["actor"] = actor
    discard_unfinished(Path(out_dir), [job.prefix], all_temps=False)  # a retried job: what the dead try left
    return build.run_job(job, out_dir)


def _failed_job(job, out: Path, error: Exception) -> dict[str, Any]:
    """The done marker of a job that no worker could finish: each source recorded with the reason."""
    from data_tools.clips import SourceReport
    from data_tools.shards import discard_unfinished, done_path
    from lit_avatar.data.atomic import write_json_atomic

    discard_unfinished(out, [job.prefix], all_temps=False)
    reports = []
    for source in job.sources:
        report = SourceReport(file=source.path, identity=source.identity, split=job.split)
        report.reason = "error"
        report.detail = f"{type(error).__name__}: the job's worker failed {TASK_RETRIES + 1} times"
        report.finish()
        reports.append(report.as_dict())
    done = {"job": job.prefix, "split": job.split, "sources": [s.name for s in job.sources], "parts": [],
            "reports": reports}
    write_json_atomic(done_path(out, job.prefix), done, durable=True)
    return done


def _actors(ray, options, workers: int) -> list:
    """One encoder actor per GPU of the cluster, or `workers` CPU actors; none without precompute."""
    if not (options.precompute_latents or options.precompute_audio):
        return []
    gpus = int(ray.cluster_resources().get("GPU", 0))
    resources = {"num_gpus": 1} if gpus else {"num_cpus": 0}  # a CPU actor works while its task waits on it
    actor = ray.remote(PrecomputeActor).options(max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS,
                                                **resources)
    return [actor.remote(options.precompute_latents, options.precompute_audio, options.threads)
            for _ in range(gpus or workers)]


def run_on_ray(todo: list, out: Path, options, workers: int, on_done: Callable[[dict], None],
               address: str | None = None) -> None:
    """Run `todo` as Ray tasks, at most `workers` in flight, calling `on_done` with each done marker.

    Args:
        todo: the jobs left.
        out: the build folder (shared by driver and workers).
        options: BuildOptions.
        workers: jobs in flight.
        on_done: called in the driver per finished job.
        address: the cluster (`auto`, HOST:PORT); None: the one this process is connected to, or a new local one.
    """
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, logging_level="warning")
        except ConnectionError as err:
            raise UserError(f"--ray-address {address}: no Ray cluster there ({err}); expected `auto` on a "
                            "node of a running cluster, or HOST:PORT of its head") from None
    try:
        _submit_all(ray, todo, out, options, workers, on_done)
    finally:
        if started:
            ray.shutdown()


def _submit_all(ray, todo: list, out: Path, options, workers: int, on_done) -> None:
    actors = _actors(ray, options, workers)
    task = ray.remote(_job_task).options(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=False)
    queue, pending = list(todo), {}
    while queue or pending:
        while queue and len(pending) < workers:
            job = queue.pop(0)
            actor = actors[job.index % len(actors)] if actors else None
            pending[task.remote(options, job, str(out), actor)] = job
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            job = pending.pop(ref)
            try:
                done = ray.get(ref)
            except ray.exceptions.RayError as err:  # retries spent: recorded, and the build goes on
                done = _failed_job(job, out, err)
            on_done(done)
