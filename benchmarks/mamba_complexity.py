"""Cost of one forward pass against the window length: bidirectional Mamba vs attention (seed 003 section 3.2).

For T = 8, 16, 30, 60 frames of a 16x16 feature map (L = 256 T tokens) it measures, for
- ``mamba``: the U-Net's :class:`~oddframe.models.mamba.MambaVideoBlock` (time-major scan over all L tokens, O(L)),
- ``temporal_attention``: st_diffusion's :class:`~oddframe.models.unet3d.TemporalAttention` (attention over the T
  frames at each pixel, O(H W T^2)),
- ``full_attention``: RaMViD-style self-attention over all L tokens (O(L^2); a reference built here),
- ``denoiser_mamba`` / ``denoiser_attention``: one forward of the whole U-Net denoiser with 16x16 frames,

the CPU time (process time of one thread, median of ``--repeats``; on a GPU, CUDA-synchronised wall time) and the
peak memory of the forward (CPU: rise of the process's peak RSS, each case in a fresh subprocess; CUDA:
``max_memory_allocated``). Prints a Markdown table, writes ``complexity.json`` and a plot ``complexity.png``.

Usage: python benchmarks/mamba_complexity.py --out docs [--frames 8 16 30 60] [--channels 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

CASES = ("mamba", "temporal_attention", "full_attention", "denoiser_mamba", "denoiser_attention")


class FullAttention(nn.Module):
    """Self-attention over all ``T H W`` tokens (what RaMViD's attention sees), with a residual."""

    def __init__(self, channels: int, num_heads: int = 4) -> None:
        super().__init__()
        self.heads = num_heads
        self.norm = nn.GroupNorm(8, channels)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.proj = nn.Conv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, t, h, w = x.shape
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three n d) t y x -> three b n (t y x) d", three=3, n=self.heads)
        out = rearrange(F.scaled_dot_product_attention(q, k, v), "b n (t y x) d -> b (n d) t y x", t=t, y=h, x=w)
        return x + self.proj(out)


def _build(case: str, channels: int) -> tuple[nn.Module, tuple]:
    from oddframe.models.mamba import MambaVideoBlock
    from oddframe.models.unet3d import SpatioTemporalUNet, TemporalAttention

    if case == "mamba":
        return MambaVideoBlock(channels, d_state=16, expand=2), ()
    if case == "temporal_attention":
        return TemporalAttention(channels, num_heads=4), ()
    if case == "full_attention":
        return FullAttention(channels), ()
    block = "attention" if case == "denoiser_attention" else None
    if block is None:
        from functools import partial

        block = partial(MambaVideoBlock, d_state=16, expand=2)
    net = SpatioTemporalUNet(
        in_channels=1, cond_channels=2, base_channels=channels // 2, channel_mult=(1, 2), num_res_blocks=1,
        attention_resolutions=(1, 2), temporal_block=block,
    )
    return net, ("denoiser",)


def measure(case: str, frames: int, channels: int, size: int, repeats: int, device: str) -> dict:
    """One case in this process: ``{"seconds": median forward time, "peak_mb": peak memory of the forward}``."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dev = torch.device(device)
    model, kind = _build(case, channels)
    model = model.to(dev).eval()
    if kind:
        x = torch.randn(1, 1, frames, 2 * size, 2 * size, device=dev)  # the U-Net halves it once: 16x16 at level 2
        args = (x, torch.tensor([10], device=dev), torch.randn(1, 2, frames, 2 * size, 2 * size, device=dev))
    else:
        args = (torch.randn(1, channels, frames, size, size, device=dev),)
    cuda = dev.type == "cuda"
    times = []
    with torch.inference_mode():
        model(*args)  # warm-up (allocator, kernels)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        for _ in range(repeats):
            t0 = time.perf_counter() if cuda else time.process_time()
            model(*args)
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() if cuda else time.process_time()) - t0)
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:  # ru_maxrss (KiB on Linux): the rise of the peak RSS since before the case was built (model + forward)
        peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - _RSS_BEFORE) / 1024
    times.sort()
    return {"case": case, "frames": frames, "tokens": frames * size * size, "seconds": times[len(times) // 2],
            "peak_mb": peak}


_RSS_BEFORE = 0


def _child(args: argparse.Namespace) -> None:
    global _RSS_BEFORE
    import oddframe.models.unet3d  # noqa: F401  (imports before the baseline)
    import oddframe.models.mamba  # noqa: F401

    _RSS_BEFORE = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(measure(args.case, args.frames[0], args.channels, args.size, args.repeats, args.device)))


def plot(rows: list[dict], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    styles = {"mamba": ("tab:blue", "o-"), "temporal_attention": ("tab:orange", "s-"),
              "full_attention": ("tab:red", "^-"), "denoiser_mamba": ("tab:blue", "o--"),
              "denoiser_attention": ("tab:orange", "s--")}
    for case in CASES:
        pts = sorted((r["frames"], r["seconds"], r["peak_mb"]) for r in rows if r["case"] == case)
        if not pts:
            continue
        color, style = styles[case]
        f, s, m = zip(*pts)
        axes[0].plot(f, [v * 1000 for v in s], style, color=color, label=case)
        axes[1].plot(f, m, style, color=color, label=case)
    for ax, label in zip(axes, ("forward time (ms)", "peak memory of the forward (MiB)")):
        ax.set_xlabel("window length T (frames)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    timing = "CUDA wall time" if device == "cuda" else "CPU time, 1 thread"
    fig.suptitle(f"One forward pass vs window length ({timing}): Mamba is linear in L, full attention quadratic\n"
                 "blocks: 64 channels on a 16x16 map, L = 256 T tokens; denoiser: the whole U-Net on 32x32 frames",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs")
    p.add_argument("--frames", type=int, nargs="+", default=[8, 16, 30, 60])
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--device", default="cpu")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: measure one case in a child process
    args = p.parse_args()
    if args.case:
        _child(args)
        return
    rows = []
    for case in args.cases:
        for t in args.frames:
            cmd = [sys.executable, __file__, "--case", case, "--frames", str(t), "--channels", str(args.channels),
                   "--size", str(args.size), "--repeats", str(args.repeats), "--device", args.device]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                print(f"{case} T={t} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"| {case} | {t} | {r['tokens']} | {r['seconds'] * 1000:.1f} | {r['peak_mb']:.1f} |", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "complexity.json").write_text(json.dumps(rows, indent=2))
    plot(rows, out / "complexity.png", args.device)
    print(f"wrote {out / 'complexity.json'} and {out / 'complexity.png'}")


if __name__ == "__main__":
    main()
