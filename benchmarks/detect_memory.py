"""Memory of long inputs: ``oddframe detect --video`` on a video and on the same video repeated N times.

Cuts the first ``--frames`` frames of VIDEO (packets copied, no re-encoding), writes that clip and the clip repeated
``--repeat`` times back to back (one file, timestamps continued), runs ``oddframe detect ... --video`` on each in
a fresh process and prints each one's peak resident memory (``ru_maxrss``), frames/s and the ratio of the peaks
(the target: a 10x longer input uses at most 1.1x the memory).

Usage:
    python benchmarks/detect_memory.py RUN ../shared/data/video/vtest.avi --out runs/mem --frames 100 --repeat 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import av


def cut_and_repeat(video: Path, out: Path, frames: int, repeat: int) -> int:
    """Write the first ``frames`` packets of ``video``, ``repeat`` times in a row, to ``out`` (Matroska)."""
    with av.open(str(video)) as src:
        s = src.streams.video[0]
        packets = [p for _, p in zip(range(frames), (p for p in src.demux(s) if p.size))]
        if not packets[0].is_keyframe:
            raise ValueError(f"{video}: the first packet is not a key frame")
        step = max(1, int(packets[1].pts - packets[0].pts)) if len(packets) > 1 else 1
        span = step * len(packets)
        with av.open(str(out), "w", format="matroska") as dst:
            o = dst.add_stream_from_template(s)
            for k in range(repeat):
                for p in packets:
                    q = av.Packet(bytes(p))
                    q.pts = p.pts + k * span
                    q.dts = (p.dts if p.dts is not None else p.pts) + k * span
                    q.time_base, q.is_keyframe = p.time_base, p.is_keyframe
                    q.stream = o
                    dst.mux(q)
    return len(packets) * repeat


def peak_rss_of(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float, list[tuple[float, float]]]:
    """Run ``cmd`` (output to ``log``); its peak RSS in MiB (``ru_maxrss`` of that child alone), wall seconds, and
    RSS samples ``(seconds, MiB)`` every 0.25 s (a plateau means no growth with the input's length)."""
    import psutil

    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        ps, samples = psutil.Process(proc.pid), []
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaps it ourselves, to read its rusage
            if pid:
                break
            try:
                samples.append((time.perf_counter() - t0, ps.memory_info().rss / 2**20))
            except psutil.Error:
                pass
            time.sleep(0.25)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{log.read_text()[-3000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0, samples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("video", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    rows = []
    for repeat in (1, args.repeat):
        clip = args.out / f"clip_x{repeat}.mkv"
        n = cut_and_repeat(args.video, clip, args.frames, repeat)
        det = args.out / f"detect_x{repeat}"
        cmd = [sys.executable, "-m", "oddframe.cli", "detect", str(clip), "--checkpoint", str(args.run), "--out",
               str(det), "--video", str(det / "anomaly.mp4"), "--overwrite"]
        mib, wall, samples = peak_rss_of(cmd, env, args.out / f"detect_x{repeat}.log")
        quarters = [max((m for t, m in samples if t <= wall * q), default=0.0) for q in (0.25, 0.5, 0.75, 1.0)]
        record = json.loads((det / "detect.json").read_text())
        fps = record["timing"]["fps"]
        rows.append({"repeat": repeat, "frames": record["n_frames"], "expected_frames": n, "peak_rss_mib": mib,
                     "wall_s": wall, "fps": fps, "rss_by_quarter_mib": quarters})
        print(f"x{repeat}: {record['n_frames']} frames, peak RSS {mib:.0f} MiB, {fps:.1f} frames/s "
              f"(detection loop), {wall:.1f} s wall for the whole command; largest RSS sampled by 1/4, 1/2, 3/4 and "
              f"all of the run: {', '.join(f'{q:.0f}' for q in quarters)} MiB", flush=True)
    ratio = rows[1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    print(f"peak RSS ratio x{args.repeat} / x1: {ratio:.3f} (target <= 1.1); "
          f"frames/s x1 {rows[0]['fps']:.1f}, x{args.repeat} {rows[1]['fps']:.1f}; {time.strftime('%Y-%m-%d')}")
    (args.out / "memory.json").write_text(json.dumps({"rows": rows, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
