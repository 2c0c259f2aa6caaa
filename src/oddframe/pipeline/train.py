"""The training loop (Lightning Fabric): Adam, cosine-annealed learning rate, gradient clipping, resumable.

Fabric gives DDP across GPUs and nodes and mixed precision without owning the loop; everything a model needs
is its ``training_loss(batch)`` (and, optionally, ``on_train_step_end()`` for an EMA of its weights).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from lightning_fabric import Fabric
from torch.utils.data import DataLoader, DistributedSampler

from oddframe import runs
from oddframe.config import Config, config_from_dict
from oddframe.data.augment import ClipAugment
from oddframe.data.clips import Batch, collate
from oddframe.data.loading import VideoFrames, WindowDataset, iter_frames, normal_videos, stack_frames
from oddframe.data.prepared import is_prepared, prepared_dataset
from oddframe.data.transforms import frame_transform
from oddframe.errors import CheckpointError, ConfigError, Interrupted
from oddframe.features import with_features
from oddframe.files import output_lock
from oddframe.models.base import AnomalyModel
from oddframe.registry import build_model
from oddframe.models.fusion import FUSION
from oddframe.pipeline.fusion import FusedDetector, member_statistics
from oddframe.pipeline.engine import warn_conversions
from oddframe.progress import progress_bar
from oddframe.stopping import StopRequest


@dataclass
class TrainResult:
    """What a finished (or resumed) training run did."""

    run_dir: Path
    epochs: int  #: epochs the run holds now (the configured total once finished)
    final_loss: float
    seconds: float
    train_frames_per_second: float
    fitted_only: bool = False  #: fitted in one pass (no gradient training, no loss)
    first_epoch: int = 0  #: epochs the run already held when this call started (0 unless resumed)
    epochs_run: int = 0  #: epochs this call trained
    already_finished: bool = False  #: resumed a run that had finished all its epochs: nothing was done


def training_videos(
    config: Config, *, progress: bool = True, features: Mapping[str, Mapping[str, Any]] | None = None
) -> list[VideoFrames]:
    """Load the normal training videos named by ``config.data.path`` (less the held-out ones) into memory,
    with the derived inputs ``features`` (``{name: params}``, see :mod:`oddframe.features`) of every frame."""
    if not config.data.path:
        raise ConfigError("data.path is not set: give the training data with --set data.path=FOLDER")
    layout, videos = normal_videos(config.data.path, start_frame=config.data.start_frame,
                                   stop_frame=config.data.stop_frame, scenes=config.data.scenes)
    if config.data.holdout_videos:
        if config.data.holdout_videos >= len(videos):
            raise ConfigError(
                f"data.holdout_videos={config.data.holdout_videos} leaves no training video (have {len(videos)})"
            )
        videos = videos[: len(videos) - config.data.holdout_videos]
    if not videos:
        raise ConfigError(f"{config.data.path}: the {layout} layout has no training videos")
    warn_conversions(videos, config)
    transform = frame_transform(config.data)
    out = []
    with progress_bar(progress) as bar:
        task = bar.add_task("loading training videos", total=len(videos))
        for v in videos:
            frames = iter_frames(
                v.source,
                transform,
                sample_interval=config.data.sample_interval,
                sample_interval_sec=config.data.sample_interval_sec,
            )
            out.append(stack_frames(v.name, with_features(frames, features or {}), v.source.path))
            bar.advance(task)
    return out


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's data order and augmentations: a function of the run's seed and the epoch alone."""
    return (seed * 1_000_003 + epoch) % (2**63)


def _precision(config: Config) -> str:
    if config.train.precision:
        return config.train.precision
    return "bf16-mixed" if torch.cuda.is_available() and config.train.accelerator in ("auto", "cuda") else "32-true"


def train(
    config: Config,
    out: str | Path,
    *,
    resume: bool = False,
    videos: list[VideoFrames] | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``config.model`` on normal clips and write a run folder to ``out``.

    Args:
        config: the resolved configuration.
        out: run folder; created if absent. Without ``resume`` it must not hold a run already.
        resume: continue the run in ``out`` from its last completed epoch.
        videos: training videos already in memory (default: load ``config.data.path``).
        progress: show a Rich progress bar.
        on_epoch_end: called with ``(epoch, mean_loss)`` after each epoch's checkpoint is written.
    """
    run_dir = Path(out)
    # One process writes the run: the first of the first node. Fabric's other ranks (re-launched copies of this
    # process, with LOCAL_RANK / NODE_RANK set) must not take the lock their rank 0 holds.
    first = os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
    with output_lock(run_dir, "oddframe train") if first else contextlib.nullcontext():
        if config.model.name == FUSION:
            return _fit_fusion(config, run_dir, resume=resume, progress=progress)
        return _train(config, run_dir, resume=resume, videos=videos, progress=progress, on_epoch_end=on_epoch_end)


def _resume_point(config: Config, run_dir: Path, resume: bool) -> dict[str, Any] | None:
    """The saved training state to continue from (None: start afresh), after checking ``run_dir`` allows it."""
    state_path = run_dir / runs.STATE
    if not resume:
        if (run_dir / runs.WEIGHTS).exists():
            raise CheckpointError(f"{run_dir} already holds a run; use --resume to continue it or choose another --out")
        return None
    if (run_dir / runs.CONFIG).is_file():
        runs.check_same_training(config, runs.read_run_config(run_dir), run_dir)
    if not state_path.is_file():
        if (run_dir / runs.WEIGHTS).is_file():  # a fitted-only run, or weights of an unknown origin
            raise CheckpointError(f"{run_dir}: nothing to resume ({runs.STATE} is missing: the run is complete)")
        raise CheckpointError(
            f"{run_dir}: nothing to resume ({runs.STATE} is missing: no epoch was completed); start the run again "
            "without --resume"
        )
    return runs.load_state(state_path)


def _train(
    config: Config,
    run_dir: Path,
    *,
    resume: bool,
    videos: list[VideoFrames] | None,
    progress: bool,
    on_epoch_end: Callable[[int, float], None] | None,
) -> TrainResult:
    tc = config.train
    state = _resume_point(config, run_dir, resume)
    if state is not None and int(state["epoch"]) >= tc.epochs:
        history = runs.read_history(run_dir)
        loss = history[-1]["loss"] if history else float("nan")
        return TrainResult(run_dir, int(state["epoch"]), loss, 0.0, 0.0, first_epoch=int(state["epoch"]),
                           already_finished=True)
    fabric = Fabric(
        accelerator=tc.accelerator, devices=tc.devices, num_nodes=tc.num_nodes, precision=_precision(config)
    )
    fabric.launch()
    fabric.seed_everything(tc.seed, verbose=False)

    model = runs.build_checked_model(config)  # the model's own constraints, before any data is read
    if model.fit_before_epoch is not None and model.fit_before_epoch >= tc.epochs and any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"{config.model.name} is fitted before epoch {model.fit_before_epoch + 1} (e.g. "
                          f"model.params.pretrain_epochs) but train.epochs={tc.epochs}: raise train.epochs")
    features = model.derived_inputs()
    augment = ClipAugment(**tc.augment.model_dump(), seed=tc.seed)
    is_identity = not any(tc.augment.model_dump().values())
    if videos is None and config.data.path and is_prepared(config.data.path):
        if features:
            raise ConfigError(
                f"model {config.model.name} needs derived inputs ({', '.join(features)}) that prepared folders do not "
                f"carry: train it on the source footage (data.path={config.data.path} is a prepared folder)"
            )
        # A folder from `oddframe prep` (and `review`): its clips, less those set aside.
        dataset = prepared_dataset(
            config.data.path,
            clip_length=config.data.clip_length,
            augment=None if is_identity else augment,
            transform=frame_transform(config.data),
        )
    else:
        if videos is None:
            videos = training_videos(config, progress=progress and fabric.is_global_zero, features=features)
        dataset = WindowDataset(
            videos,
            clip_length=config.data.clip_length,
            stride=config.data.train_stride,
            augment=None if is_identity else augment,
        )
    # The shuffling generator is reseeded at every epoch from (seed, epoch), as is the augmentation, so a resumed
    # run sees exactly the data order and augmentations an uninterrupted run would have seen from that epoch on.
    order = torch.Generator()
    loader = DataLoader(
        dataset,
        batch_size=tc.batch_size,
        shuffle=True,
        num_workers=tc.num_workers,
        collate_fn=functools.partial(collate, length=config.data.clip_length),  # picklable for workers
        drop_last=len(dataset) > tc.batch_size,
        generator=order,
    )
    loader = fabric.setup_dataloaders(loader, move_to_device=False)

    if not any(p.requires_grad for p in model.parameters()):
        # Fitted, not trained (density models): one pass over the normal clips, then the run is complete.
        return _fit_only(model, dataset, config, run_dir, resume=resume, progress=progress and fabric.is_global_zero)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = len(loader) if tc.max_steps_per_epoch is None else min(len(loader), tc.max_steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, tc.epochs * steps_per_epoch))

    start_epoch, step, history = 0, 0, []
    if state is not None:
        runs.load_weights(model, run_dir / runs.WEIGHTS)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        if "rng" in state:  # the global generator (dropout, diffusion timesteps) continues where it stopped
            torch.set_rng_state(state["rng"])
        history = runs.read_history(run_dir)
    model, optimizer = fabric.setup(model, optimizer)

    writer = None
    if fabric.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.write_config(config, run_dir)
        writer = _summary_writer(run_dir)

    frames_per_clip = config.data.clip_length
    t_start, frames_seen, mean_loss = time.perf_counter(), 0, float("nan")
    with progress_bar(progress and fabric.is_global_zero) as bar, StopRequest(
        "training", enabled=fabric.world_size == 1  # DDP ranks could stop at different steps and wait on each other
    ) as stop:
        task = bar.add_task("training", total=(tc.epochs - start_epoch) * steps_per_epoch)
        for epoch in range(start_epoch, tc.epochs):
            order.manual_seed(epoch_seed(tc.seed, epoch))
            augment.reseed(epoch_seed(tc.seed, epoch) + 1)
            if isinstance(getattr(loader, "sampler", None), DistributedSampler):
                loader.sampler.set_epoch(epoch)
            module = model.module if hasattr(model, "module") else model
            if module.fit_before_epoch == epoch:
                _fit(module, dataset, config, fabric.device, bar)
            model.train()
            losses = []
            t_epoch = time.perf_counter()
            for i, batch in enumerate(loader):
                if i >= steps_per_epoch:
                    break
                if stop.requested:  # the checkpoint holds the last completed epoch: nothing else to save
                    if writer is not None:
                        writer.close()
                    raise Interrupted(
                        f"training stopped in epoch {epoch + 1} of {tc.epochs} (step {i} of {steps_per_epoch}); "
                        f"{run_dir} holds {epoch} completed epoch(s)"
                        + (f" ({runs.WEIGHTS}, {runs.STATE}, {runs.HISTORY}); continue with: oddframe train "
                           f"--out {run_dir} --resume" if epoch else "; start it again to train"),
                        signum=stop.signum or 2,
                    )
                batch = batch.to(fabric.device)
                loss = model.training_loss(batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch + 1}, step {i}")
                optimizer.zero_grad(set_to_none=True)
                fabric.backward(loss)
                if tc.grad_clip:
                    fabric.clip_gradients(model, optimizer, max_norm=tc.grad_clip)
                optimizer.step()
                scheduler.step()
                hook = getattr(model, "on_train_step_end", None)
                if callable(hook):
                    hook()
                step += 1
                losses.append(loss.item())
                frames_seen += len(batch) * frames_per_clip
                rate = frames_seen / max(time.perf_counter() - t_start, 1e-9)
                bar.update(task, advance=1, description=f"epoch {epoch + 1}/{tc.epochs} loss {loss.item():.4g} {rate:.0f} frames/s")
                if writer is not None:
                    writer.add_scalar("loss/train", loss.item(), step)
                    writer.add_scalar("lr", scheduler.get_last_lr()[0], step)
            mean_loss = float(sum(losses) / max(len(losses), 1))
            if fabric.is_global_zero:
                history.append(
                    {
                        "epoch": epoch + 1,
                        "step": step,
                        "loss": mean_loss,
                        "lr": scheduler.get_last_lr()[0],
                        "seconds": time.perf_counter() - t_epoch,
                    }
                )
                _checkpoint(model, optimizer, scheduler, epoch + 1, step, history, run_dir, config)
                if progress:  # one line per epoch, which also reaches logs where the bar cannot redraw
                    bar.console.print(
                        f"epoch {epoch + 1}/{tc.epochs}: loss {mean_loss:.5g}, "
                        f"{history[-1]['seconds']:.1f} s, lr {history[-1]['lr']:.3g}",
                        highlight=False,
                    )
                module = model.module if hasattr(model, "module") else model
                log_now = (epoch + 1) % tc.log_images_every == 0 or epoch + 1 == tc.epochs
                if writer is not None and log_now and module.cheap_reconstruction:
                    _log_images(writer, model, batch, step)
            fabric.barrier()
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, mean_loss)
    seconds = time.perf_counter() - t_start
    if writer is not None:
        writer.close()
    if fabric.is_global_zero:
        from oddframe.render.plots import plot_loss

        plot_loss(history, run_dir / "loss.png")
    return TrainResult(run_dir, tc.epochs, mean_loss, seconds, frames_seen / max(seconds, 1e-9),
                       first_epoch=start_epoch, epochs_run=tc.epochs - start_epoch)


def _checkpoint(
    model, optimizer, scheduler, epoch: int, step: int, history: list[dict], run_dir: Path, config: Config
) -> None:
    # Weights first, then state: a run killed between the two resumes from the previous epoch's state with the
    # newer weights, which is harmless; the reverse could pair new optimiser moments with old weights.
    module = model.module if hasattr(model, "module") else model
    runs.save_weights(module, run_dir / runs.WEIGHTS, config)
    runs.save_state(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step,
         "rng": torch.get_rng_state()},
        run_dir / runs.STATE,
    )
    runs.write_history(history, run_dir)


def _summary_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training alive without it
        return None
    return SummaryWriter(log_dir=str(run_dir / "tb"))


@torch.inference_mode()
def _log_images(writer, model, batch: Batch, step: int) -> None:
    """A few reconstructions (middle frame of up to 4 clips: input above, reconstruction below) to TensorBoard."""
    module = model.module if hasattr(model, "module") else model
    was_training = module.training
    module.eval()
    small = Batch(batch.frames[:4], batch.valid[:4], batch.video[:4],
                  None if batch.frame_index is None else batch.frame_index[:4], {k: v[:4] for k, v in batch.extras.items()})
    recon = module.reconstruct(small)
    module.train(was_training)
    if recon is None:
        return
    t = small.frames.shape[2] // 2
    grid = torch.cat([small.frames[:, :, t], recon[:, :, t].to(small.frames.dtype)], dim=0)  # (2B, C, H, W)
    grid = ((grid.float().clamp(-1, 1) + 1) / 2).cpu()
    writer.add_images("reconstruction/top_input_bottom_output", grid, step)


def _fit_batches(dataset: Any, config: Config, device: torch.device | str) -> Iterator[Batch]:
    """The training clips in order, without augmentation, in batches on ``device``: what ``fit`` sees."""
    saved, dataset.augment = dataset.augment, None
    try:
        size, length = config.train.batch_size, config.data.clip_length
        for start in range(0, len(dataset), size):
            yield collate([dataset[i] for i in range(start, min(start + size, len(dataset)))], length).to(device)
    finally:
        dataset.augment = saved


def _fit(model: AnomalyModel, dataset: Any, config: Config, device: torch.device | str, bar: Any) -> None:
    """Call the model's fit step over every normal training clip, with a progress bar."""
    task = bar.add_task(f"fitting {config.model.name}", total=len(dataset))
    was_training = model.training
    model.eval()

    def advancing() -> Iterator[Batch]:
        for batch in _fit_batches(dataset, config, device):
            yield batch
            bar.advance(task, len(batch))

    with torch.no_grad():
        model.fit(advancing())
    model.train(was_training)


def _fit_only(
    model: AnomalyModel, dataset: Any, config: Config, run_dir: Path, *, resume: bool, progress: bool
) -> TrainResult:
    """Train a model that has no trainable parameters: fit it once, write the run (config, fitted state, history)."""
    if resume and (run_dir / runs.WEIGHTS).is_file():
        raise CheckpointError(f"{run_dir}: {config.model.name} is fitted in one pass and the run is complete; "
                              "there is nothing to resume")
    t0 = time.perf_counter()
    with progress_bar(progress) as bar:
        _fit(model, dataset, config, "cpu", bar)
    seconds = time.perf_counter() - t0
    run_dir.mkdir(parents=True, exist_ok=True)
    runs.write_config(config, run_dir)
    runs.save_weights(model, run_dir / runs.WEIGHTS, config)
    runs.write_history([{"epoch": 1, "step": 0, "loss": float("nan"), "lr": 0.0, "seconds": seconds}], run_dir)
    frames = len(dataset) * config.data.clip_length
    return TrainResult(run_dir, 1, float("nan"), seconds, frames / max(seconds, 1e-9), fitted_only=True, epochs_run=1)


# --- Fusion: trained runs combined; "training" calibrates each member on normal frames ---------------------------


def fusion_config(
    members: list[str], *, rule: str = "sum", weights: list[float] | None = None, data: str | None = None,
    overrides: tuple[str, ...] | list[str] = (),
) -> Config:
    """The config of a fusion of trained run folders (``oddframe fuse``); ``data`` defaults to the first member's."""
    params: dict[str, Any] = {"members": [str(m) for m in members], "rule": rule}
    if weights is not None:
        params["weights"] = list(weights)
    base: dict[str, Any] = {"model": {"name": FUSION, "params": params}, "score": {"normalise": "calibrated"}}
    if data is not None:
        base["data"] = {"path": str(data)}
    return config_from_dict(base, overrides)


def fuse(
    members: list[str], out: str | Path, *, rule: str = "sum", weights: list[float] | None = None,
    data: str | None = None, overrides: tuple[str, ...] | list[str] = (), progress: bool = True,
) -> TrainResult:
    """``oddframe fuse``: combine trained runs into one fused run folder (see :func:`fusion_config`)."""
    config = fusion_config(members, rule=rule, weights=weights, data=data, overrides=overrides)
    return train(config, out, progress=progress)


def _fit_fusion(config: Config, run_dir: Path, *, resume: bool, progress: bool) -> TrainResult:
    """Fuse trained runs: embed their configs and weights, calibrate each on normal training frames, write the run.

    The normal frames are those calibration uses: the held-out training videos (``data.holdout_videos``) when the
    fused config has some, else the training videos of ``data.path`` (default: the first member's).
    """
    if resume:
        raise CheckpointError(f"{run_dir}: a fusion is fitted in one pass; there is nothing to resume")
    if (run_dir / runs.WEIGHTS).exists():
        raise CheckpointError(f"{run_dir} already holds a run; choose another --out")
    t0 = time.perf_counter()
    members = config.model.params.get("members") or []
    if not members or not all(isinstance(m, str) for m in members):
        raise ConfigError("model.params.members: list the trained run folders to fuse, e.g. [runs/a, runs/b]")
    loaded = [runs.load_run(m) for m in members]
    resolved = config.to_dict()
    resolved["model"]["params"]["members"] = [c.to_dict() for _, c in loaded]
    # The first member's data settings (path, size of the shown frame), with what the fused config sets on top.
    resolved["data"] = loaded[0][1].data.model_dump(mode="json")
    resolved["data"].update({k: v for k, v in config.data.model_dump(mode="json").items() if k in config.data.model_fields_set})
    config = config_from_dict(resolved)
    model = build_model(FUSION, **config.model_kwargs())
    for target, (source, _) in zip(model.members, loaded):
        target.load_state_dict(source.state_dict())
    if not config.data.path:
        raise ConfigError("no normal data to calibrate the fusion members on: set data.path")
    _, train_videos = normal_videos(config.data.path, scenes=config.data.scenes)
    k = config.data.holdout_videos
    videos = train_videos[len(train_videos) - k:] if k else train_videos
    detector = FusedDetector(model, config, device="cpu")
    with progress_bar(progress) as bar:
        task = bar.add_task("calibrating fusion members on normal frames",
                            total=sum(len(v.source) // config.data.sample_interval for v in videos))
        stats = member_statistics(detector, videos, seed=config.train.seed, progress=lambda: bar.advance(task))
    model.set_calibration(**stats)
    seconds = time.perf_counter() - t0
    run_dir.mkdir(parents=True, exist_ok=True)
    runs.write_config(config, run_dir)
    runs.save_weights(model, run_dir / runs.WEIGHTS, config)
    runs.write_history([{"epoch": 1, "step": 0, "loss": float("nan"), "lr": 0.0, "seconds": seconds}], run_dir)
    frames = detector.timing.frames
    return TrainResult(run_dir, 1, float("nan"), seconds, frames / max(seconds, 1e-9), fitted_only=True, epochs_run=1)
