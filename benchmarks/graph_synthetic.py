"""graph_oneclass on synthetic circles: an appearance anomaly and a frozen stretch (the settings of
tests/test_graph_oneclass.py), trained once on normal sequences and evaluated on both test sets.

Usage: python benchmarks/graph_synthetic.py --out runs/graph_synth [--set model.params.nodes=frames ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from oddframe import api

BASE = [
    "model.name=graph_oneclass", "data.size=[32,32]", "data.clip_length=4", "data.train_stride=2",
    "score.stride=2", "score.rule=max", "train.batch_size=8", "train.lr=0.002", "train.epochs=12",
    "model.params.pretrain_epochs=3", "model.params.widths=[16,32]", "model.params.convs_per_stage=[1,1]",
    "model.params.embed_dim=32", "model.params.hidden=16", "model.params.heads=4", "model.params.out_dim=32",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    args = p.parse_args()
    out = Path(args.out)
    data = {kind: out / f"data_{kind}" for kind in ("appearance", "frozen")}
    for kind, path in data.items():  # same seed: the same normal training sequences
        if not path.exists():
            api.write_synthetic_dataset(path, n_train=24, n_test=6, length=16, size=32, anomaly=kind, seed=1)
    config = api.load_config(None, BASE + [f"data.path={data['appearance']}"] + args.overrides)
    t0 = time.perf_counter()
    api.train(config, out / "run", progress=False)
    summary = {"overrides": args.overrides, "train_seconds": time.perf_counter() - t0}
    for kind, path in data.items():
        for rule in ("max", "mse"):
            m = api.evaluate(out / "run", path, out / f"eval_{kind}_{rule}", overrides=[f"score.rule={rule}"],
                             progress=False, report=False)
            summary[f"{kind}/{rule}"] = {k: m[k] for k in ("frame_auroc_micro", "frame_auroc_macro", "pixel_auroc")}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
