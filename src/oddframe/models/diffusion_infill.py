"""``st_diffusion``: a 3D U-Net denoiser + the Gaussian process + a masking policy -> an anomaly model.

Video anomaly detection as conditional infilling (seed 000; RaMViD, Höppe et al. 2022; seed 003): the model
learns to generate hidden frames of normal clips from the visible ones; at test time each frame is infilled
from its neighbours and the residual ``|observed - infilled|`` is the anomaly map. Short clips (``T <= 8``)
are scored leave-one-out so every frame gets a real residual; long windows use the selective-anchor mask and
score 0 on the anchors (the detector takes the max over overlapping windows, seed 003 section 3.3).
"""

from __future__ import annotations

from typing import Sequence

import torch
from einops import rearrange, reduce, repeat

from oddframe.data.clips import Batch
from oddframe.diffusion import EMA, GaussianDiffusion, beta_schedule
from oddframe.diffusion import masking
from oddframe.diffusion.gaussian import SAMPLERS
from oddframe.errors import ConfigError
from oddframe.models.base import AnomalyModel
from oddframe.models.unet3d import SpatioTemporalUNet, TemporalBlockFactory
from oddframe.registry import register_model

TRAIN_MASKS: tuple[str, ...] = ("auto", "random", "anchors", "single")
SCORE_MASKS: tuple[str, ...] = ("auto", "leave_one_out", "anchors", "single")
#: Clips up to this length are scored leave-one-out under ``"auto"``; longer ones use selective anchors.
SHORT_CLIP = 8


def _choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
    return value


@register_model("st_diffusion")
class SpatioTemporalDiffusion(AnomalyModel):
    """Spatiotemporal DDPM with a 3D U-Net that infills masked frames; anomaly = |observed - infilled|.

    Args:
        in_channels: image channels ``C``.
        clip_length: frames per clip ``T`` (4 in seed 000, 30 in seed 003).
        image_size: ``(H, W)``, divisible by ``2 ** (len(channel_mult) - 1)``.
        base_channels: U-Net channels at full resolution (RaMViD: 128).
        channel_mult: U-Net channel multiplier per level.
        num_res_blocks: residual blocks per U-Net level.
        attention_resolutions: downsampling factors at which temporal attention is used.
        num_heads: temporal-attention heads.
        dropout: dropout in the residual blocks.
        temporal_block: temporal mixing at ``attention_resolutions``: ``"attention"``, ``"none"``, or a factory
            ``channels -> nn.Module`` (how a subclass swaps in bidirectional Mamba blocks).
        use_checkpoint: gradient checkpointing in the U-Net encoder.
        diffusion_steps: steps ``N`` of the training process.
        schedule: ``"linear"`` or ``"cosine"`` betas.
        variance: ``"fixed_large"`` or ``"fixed_small"`` reverse variance (DDPM sampler).
        prediction: denoiser target, ``"eps"`` (RaMViD, seed 000), ``"v"`` or ``"x0"`` (see
            :class:`~oddframe.diffusion.gaussian.GaussianDiffusion`).
        sampling_steps: respaced sampling steps (int, ``"ddimK"`` or section counts); seed 003 used 200.
        sampler: ``"ddim"`` or ``"ddpm"``.
        eta: DDIM noise scale (0: deterministic given the initial noise).
        train_masks: ``"auto"`` (``"random"`` for ``T <= 8``, else ``"anchors"``), ``"random"`` (RaMViD),
            ``"anchors"`` (seed 003's fixed selective mask) or ``"single"`` (frame ``T // 2``, seed 000).
        max_masked: most frames hidden by ``"random"`` (None: ``max(1, T // 4)``, one frame for ``T = 4``).
        uncondition_rate: probability of hiding every frame under ``"random"`` (RaMViD: 0.25-0.75; 0 here
            because scoring never generates unconditionally).
        score_masks: ``"auto"`` (leave-one-out for ``T <= 8``, else anchors), ``"leave_one_out"``,
            ``"anchors"`` or ``"single"``.
        n_samples: infills averaged per frame (their residuals are averaged).
        ema_decay: EMA decay of the weights used for sampling (0 disables the EMA copy).
        seed: seed of the sampling noise, so that maps are deterministic.
    """

    map_power = 1
    cheap_reconstruction = False  # reconstruct() runs the sampler

    def __init__(
        self,
        *,
        in_channels: int = 1,
        clip_length: int = 4,
        image_size: tuple[int, int] = (64, 64),
        base_channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2, 4),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (2, 4),
        num_heads: int = 4,
        dropout: float = 0.1,
        temporal_block: str | TemporalBlockFactory = "attention",
        use_checkpoint: bool = False,
        diffusion_steps: int = 1000,
        schedule: str = "linear",
        variance: str = "fixed_large",
        prediction: str = "eps",
        sampling_steps: int | str = 50,
        sampler: str = "ddim",
        eta: float = 0.0,
        train_masks: str = "auto",
        max_masked: int | None = None,
        uncondition_rate: float = 0.0,
        score_masks: str = "auto",
        n_samples: int = 1,
        ema_decay: float = 0.9999,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.in_channels, self.clip_length = in_channels, clip_length
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if clip_length < 2:
            raise ValueError(f"clip_length must be >= 2 to infill a frame from others, got {clip_length}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        short = clip_length <= SHORT_CLIP
        train = _choice("train_masks", train_masks, TRAIN_MASKS)
        score = _choice("score_masks", score_masks, SCORE_MASKS)
        self.train_masks = ("random" if short else "anchors") if train == "auto" else train
        self.score_masks = ("leave_one_out" if short else "anchors") if score == "auto" else score
        self.max_masked = max(1, clip_length // 4) if max_masked is None else max_masked
        self.uncondition_rate = uncondition_rate
        self.sampler = _choice("sampler", sampler, SAMPLERS)
        self.sampling_steps, self.eta, self.n_samples, self.seed = sampling_steps, eta, n_samples, seed

        self.diffusion = GaussianDiffusion(
            betas=beta_schedule(schedule, diffusion_steps), variance=variance, prediction=prediction
        )
        self.diffusion.respaced(sampling_steps)  # fail now, not after training, if the steps cannot be respaced
        # Build both policies once: this validates them against clip_length (e.g. anchors need T >= 5).
        self._score_patterns = self._patterns(self.score_masks)
        if self.train_masks != "random":
            self._patterns(self.train_masks)
        else:
            masking.random_mask(1, clip_length, max_masked=self.max_masked, uncondition_rate=uncondition_rate)

        factor = 2 ** (len(channel_mult) - 1)
        if self.image_size[0] % factor or self.image_size[1] % factor:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by {factor} for channel_mult {channel_mult}"
            )
        self.denoiser = SpatioTemporalUNet(
            in_channels=in_channels,
            out_channels=in_channels,
            cond_channels=in_channels + 1,  # the given frames and the mask (RaMViD)
            base_channels=base_channels,
            channel_mult=channel_mult,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            num_heads=num_heads,
            dropout=dropout,
            temporal_block=temporal_block,
            use_checkpoint=use_checkpoint,
        )
        self.ema = EMA(self.denoiser, decay=ema_decay) if ema_decay > 0 else None

    # ------------------------------------------------------------------------------------------ helpers
    def _patterns(self, policy: str) -> torch.Tensor:
        """The fixed frame masks ``(P, T)`` of a deterministic policy."""
        t = self.clip_length
        if policy == "leave_one_out":
            return masking.leave_one_out(t)
        if policy == "anchors":
            return masking.selective_anchors(t)
        return masking.single_frame(t, index=t // 2)

    def _check(self, batch: Batch) -> None:
        _, c, t, h, w = batch.frames.shape
        if (c, t, (h, w)) != (self.in_channels, self.clip_length, self.image_size):
            names = ", ".join(sorted(set(batch.video))[:3]) or "<unnamed>"
            raise ConfigError(
                f"{self.model_name} expects clips of {self.in_channels} channel(s), {self.clip_length} frames of "
                f"{self.image_size[0]}x{self.image_size[1]}, got {c}, {t}, {h}x{w} (videos: {names}); "
                "make data.clip_length / image_size / channels match the model"
            )

    def sampling_network(self) -> torch.nn.Module:
        """The EMA copy once it has been updated at least once, else the live denoiser."""
        if self.ema is not None and int(self.ema.num_updates) > 0:
            return self.ema.module
        return self.denoiser

    @staticmethod
    def missing_frames(batch: Batch) -> torch.Tensor:
        """``(B, T)`` bool, True for frames with no valid pixel (padding): never given as conditioning."""
        return ~reduce(batch.valid, "b 1 t h w -> b t", "max")

    def train_frame_masks(self, batch_size: int) -> torch.Tensor:
        """``(B, T)`` bool masks of the training policy for one batch (CPU)."""
        if self.train_masks == "random":
            return masking.random_mask(
                batch_size, self.clip_length, max_masked=self.max_masked, uncondition_rate=self.uncondition_rate
            )
        return self._patterns(self.train_masks).expand(batch_size, -1)

    # --------------------------------------------------------------------------------------- contract
    def training_loss(self, batch: Batch) -> torch.Tensor:
        """RaMViD's masked denoising MSE on a batch of normal clips (a scalar).

        Padded frames are hidden rather than given (the model should not learn to condition on black padding)
        and, having no valid pixel, stay out of the loss.
        """
        self._check(batch)
        x0 = batch.frames.float()
        t = self.diffusion.sample_timesteps(x0.shape[0], device=x0.device)
        mask = self.train_frame_masks(x0.shape[0]).to(x0.device) | self.missing_frames(batch).to(x0.device)
        return self.diffusion.training_loss(self.denoiser, x0, t, mask=mask, valid=batch.valid)

    def on_train_step_end(self) -> None:
        """Update the EMA weights (the trainer calls this after every optimiser step)."""
        if self.ema is not None:
            self.ema.update(self.denoiser)

    @torch.inference_mode()
    def infill(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Infill every frame the scoring policy hides, ``n_samples`` times.

        All ``P`` mask patterns of all ``B`` clips and samples go through the sampler as one batch of
        ``n_samples * B * P`` clips, with noise from a generator seeded by ``seed`` (deterministic maps).
        Memory grows with that product: the caller bounds ``B`` (8 leave-one-out patterns at ``T = 8``).

        Returns:
            ``(recon, residual)``: ``recon`` ``(B, C, T, H, W)`` the mean infill of each frame (the observed frame
            where no pattern hides it) and ``residual`` ``(B, T, H, W)`` the per-pixel ``|x - x_hat|`` averaged
            over channels, over the samples and over the patterns that hide the frame (0 on anchors).
        """
        self._check(batch)
        x = batch.frames.float()
        b = x.shape[0]
        patterns = self._score_patterns.to(x.device)  # (P, T)
        p = patterns.shape[0]
        known = repeat(x, "b c t h w -> (s b p) c t h w", s=self.n_samples, p=p)
        # Padded frames are infilled too (not given as conditioning) but never scored.
        missing = self.missing_frames(batch).to(x.device)
        mask = repeat(patterns, "p t -> s b p t", s=self.n_samples, b=b) | rearrange(missing, "b t -> 1 b 1 t")
        mask = rearrange(mask, "s b p t -> (s b p) t")
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        # One x_T per sample index, shared by every clip and pattern (common random numbers): a clip's map then
        # does not depend on which clips share its batch or where it sits, and frames are compared under the
        # same noise. (Per-step noise of the ddpm sampler or eta > 0 is still drawn per batch element.)
        x_T = torch.randn((self.n_samples, 1, *x.shape[1:]), generator=gen, device=x.device)
        x_T = repeat(x_T, "s 1 c t h w -> (s b p) c t h w", b=b, p=p)
        net = self.sampling_network()
        was_training = net.training
        net.eval()  # no dropout while sampling, even if called mid-training
        try:
            out = self.diffusion.sample(
                net, known.shape, known=known, mask=mask, steps=self.sampling_steps,
                sampler=self.sampler, eta=self.eta, generator=gen, noise=x_T,
            )
        finally:
            net.train(was_training)
        out = rearrange(out, "(s b p) c t h w -> s b p c t h w", s=self.n_samples, b=b)
        hide = rearrange(patterns, "p t -> 1 1 p 1 t 1 1").float()
        count = reduce(hide, "s b p c t h w -> t", "sum")  # how many patterns hide each frame
        denom = rearrange(count.clamp_min(1.0), "t -> 1 t 1 1")
        err = reduce((out - x[None, :, None]).abs() * hide, "s b p c t h w -> b t h w", "sum")
        residual = err / (denom * self.n_samples * self.in_channels)
        mean_infill = reduce(out * hide, "s b p c t h w -> b c t h w", "sum") / (denom[:, None] * self.n_samples)
        covered = rearrange(count > 0, "t -> 1 1 t 1 1")
        return torch.where(covered, mean_infill, x), residual

    def anomaly_map(self, batch: Batch) -> torch.Tensor:
        """``(B, T, H, W)`` ``|observed - infilled|`` (mean over channels and samples), 0 on given frames and
        invalid pixels."""
        _, residual = self.infill(batch)
        return residual * batch.valid[:, 0].to(residual.device, residual.dtype)

    def reconstruct(self, batch: Batch) -> torch.Tensor:
        """The infilled clip ``(B, C, T, H, W)`` in ``[-1, 1]`` (observed frames where nothing is infilled)."""
        recon, _ = self.infill(batch)
        return recon
