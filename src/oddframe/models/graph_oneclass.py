"""``graph_oneclass``: CNN features, a kNN cosine graph, a 2-layer GAT and the Deep SVDD one-class loss (seed 004).

The surveillance pipeline of seed 004: a CNN extracts spatial features from every frame, a kNN graph built on
the cosine similarity of those features links related frames of a window, a two-layer Graph Attention Network
(Velickovic et al., ICLR 2018; several concatenated heads, then one head for dimensionality reduction) aggregates
each node's neighbours, and the one-class loss of Deep SVDD (Ruff et al., ICML 2018) pulls the embeddings of
normal nodes towards a fixed centre ``c``. The anomaly score of a node is its squared distance to ``c``.

Deep SVDD, as in the paper and its reference code (lukasruff/Deep-SVDD-PyTorch):

- No bias term anywhere in the one-class network phi (convolutions, GAT layers) and BatchNorm without affine
  parameters (paper, Sec. 3.3, Prop. 2: a bias lets phi map everything to ``c`` trivially); no bounded
  activation (LeakyReLU; a saturating unit could become constant, Prop. 3).
- phi's CNN is first trained as the encoder of an autoencoder on normal frames (``pretrain_epochs`` epochs of
  reconstruction loss); the trainer then calls :meth:`GraphOneClass.fit` (``fit_before_epoch =
  pretrain_epochs``), which fixes ``c`` as the mean embedding of the normal training nodes, with coordinates
  closer to zero than ``eps`` pushed to ``+-eps`` (a zero coordinate is matched trivially by zero weights).
- One-class objective (paper Eq. 4): ``mean ||phi(x) - c||^2``; soft-boundary (Eq. 3): ``R^2 + 1/nu *
  mean(max(0, ||phi(x) - c||^2 - R^2))`` with ``R`` set after each step to the ``(1 - nu)``-quantile of the batch's
  distances, as the reference code does (there without a warm-up here: the contract has no epoch hook).
  Weight decay (the paper's lambda) is ``train.weight_decay``.

Graph (seed 004): nodes are the frames of a window (``nodes="frames"``, the seed's design: a frame embedding
by a bias-free linear layer over the CNN's feature map) or, to localise, the cells of every frame's CNN feature
map (``nodes="cells"``: ``T * h * w`` nodes). Each node receives edges from its ``k`` most cosine-similar other
nodes of the same window (a plain top-k over the similarity matrix; PyG's ``knn_graph`` needs compiled
extensions), and GATConv adds self-loops. The map paints each node's distance on its cell (bilinear) or on the
whole frame.

Motion (an extension, ``motion="flow"``): the CNN also sees the frame's dense optical flow (the ``flow`` derived
input, divided by ``flow_scale``), so a frozen stretch or a fast cyclist, which look normal frame by frame, are
out of the normal distribution. ``motion="none"`` is the seed's appearance-only CNN. The first frame of every
video has zero flow (no predecessor).

Before ``c`` is fitted (during the autoencoder pretraining) the map is the autoencoder's squared reconstruction
error, so a run stopped early still scores frames.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from oddframe.data.clips import Batch
from oddframe.models.base import AnomalyModel, masked_mean
from oddframe.registry import register_model

NODES = ("frames", "cells")
MOTIONS = ("none", "flow")
OBJECTIVES = ("one-class", "soft-boundary")


def _stage(c_in: int, c_out: int, kernel: int, convs: int) -> nn.Sequential:
    """``convs`` bias-free convolutions, each with affine-free BatchNorm and LeakyReLU (Ruff et al.'s block)."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(c_in if i == 0 else c_out, c_out, kernel if i == 0 else 3, padding=(kernel if i == 0 else 3) // 2, bias=False),
            nn.BatchNorm2d(c_out, eps=1e-4, affine=False),
            nn.LeakyReLU(0.1),
        ]
    return nn.Sequential(*layers)


class FrameEncoder(nn.Module):
    """Bias-free CNN: per stage convolution(s), BatchNorm (no affine), LeakyReLU, 2x2 max-pooling.

    Args:
        in_channels: input channels (grey or colour, plus 2 for optical flow).
        widths: channels of each stage; the feature map has stride ``2 ** len(widths)``.
        embed_dim: channels of the output cells (a bias-free 1x1 convolution).
        convs_per_stage: convolutions in each stage (the first stage's first one is 5x5, the rest 3x3).

    Shapes: ``(N, in_channels, H, W)`` -> ``(N, embed_dim, H / s, W / s)``.
    """

    def __init__(self, *, in_channels: int, widths: Sequence[int], embed_dim: int, convs_per_stage: Sequence[int]) -> None:
        super().__init__()
        stages, c = [], in_channels
        for i, (w, n) in enumerate(zip(widths, convs_per_stage)):
            stages += [_stage(c, w, 5 if i == 0 else 3, n), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*stages)
        self.project = nn.Conv2d(c, embed_dim, 1, bias=False)
        for m in self.modules():  # the reference code's initialisation for LeakyReLU networks
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain("leaky_relu", 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(x))


class FrameDecoder(nn.Module):
    """The autoencoder's decoder, used only to pretrain the encoder: upsample x2, conv, BatchNorm, LeakyReLU per
    stage (mirroring the encoder), and a last 3x3 convolution to the input channels (linear: flow is unbounded).

    Shapes: ``(N, embed_dim, h, w)`` -> ``(N, out_channels, h * s, w * s)``.
    """

    def __init__(self, *, out_channels: int, widths: Sequence[int], embed_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = embed_dim
        for w in reversed(widths):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), *_stage(c, w, 3, 1)]
            c = w
        layers.append(nn.Conv2d(c, out_channels, 3, padding=1, bias=False))
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)


def cosine_similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity of node features: ``(B, N, E)`` -> ``(B, N, N)``."""
    x = F.normalize(x, dim=-1, eps=1e-8)
    return x @ x.transpose(1, 2)


def knn_edges(similarity: torch.Tensor, k: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Edges from each node's ``k`` most similar other nodes, as PyG's ``edge_index`` over the batch's graphs.

    Node ``i`` of graph ``b`` is global node ``b * N + i``; an edge ``(j, i)`` (row 0 = source, row 1 = target)
    carries the message from neighbour ``j`` to ``i``. Self-pairs and invalid nodes are never neighbours, and an
    invalid node receives no edge; a graph with fewer than ``k + 1`` valid nodes links each to all the others.

    Args:
        similarity: ``(B, N, N)`` (e.g. :func:`cosine_similarity_matrix`).
        k: neighbours per node, >= 1.
        valid: ``(B, N)`` bool, or None for all valid.

    Returns:
        ``(2, E)`` int64.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    b, n, _ = similarity.shape
    if valid is None:
        valid = torch.ones(b, n, dtype=torch.bool, device=similarity.device)
    allowed = valid[:, None, :] & valid[:, :, None] & ~torch.eye(n, dtype=torch.bool, device=similarity.device)
    sim = similarity.masked_fill(~allowed, float("-inf"))
    kk = min(k, n - 1)
    if kk < 1:
        return torch.zeros(2, 0, dtype=torch.long, device=similarity.device)
    top, idx = sim.topk(kk, dim=-1)  # (B, N, kk): neighbours j of each target i
    keep = torch.isfinite(top)
    offset = (torch.arange(b, device=similarity.device) * n)[:, None, None]
    source = (idx + offset)[keep]
    target = (torch.arange(n, device=similarity.device)[None, :, None] + offset).expand_as(idx)[keep]
    return torch.stack([source, target])


class GAT(nn.Module):
    """Two GATConv layers: ``heads`` concatenated heads, LeakyReLU, then one head (seed 004), all bias-free.

    Shapes: nodes ``(V, in_dim)`` and ``edge_index`` ``(2, E)`` -> ``(V, out_dim)``.
    """

    def __init__(self, *, in_dim: int, hidden: int, heads: int, out_dim: int) -> None:
        super().__init__()
        try:
            from torch_geometric.nn import GATConv
        except ImportError:  # a declared dependency; say what to install if an environment lacks it
            raise ImportError("graph_oneclass needs PyTorch Geometric: pip install torch_geometric") from None
        self.conv1 = GATConv(in_dim, hidden, heads=heads, concat=True, bias=False)
        self.conv2 = GATConv(hidden * heads, out_dim, heads=1, concat=False, bias=False)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.leaky_relu(self.conv1(x, edge_index), 0.1), edge_index)


@register_model("graph_oneclass")
class GraphOneClass(AnomalyModel):
    """CNN frame features, kNN cosine graph, 2-layer GAT and Deep SVDD one-class loss (seed 004; Ruff et al. 2018).

    Args:
        in_channels: image channels (1 grey, 3 colour).
        clip_length: frames per window (the graph's frames).
        image_size: ``(H, W)``, each divisible by ``2 ** len(widths)``.
        nodes: ``"frames"`` (one node per frame, the seed's graph) or ``"cells"`` (one per feature-map cell).
        motion: ``"none"`` (frames only) or ``"flow"`` (the CNN also sees the optical flow).
        widths: CNN stage widths; ``convs_per_stage``: convolutions per stage (same length).
        embed_dim: CNN output dimension (node features).
        k: neighbours per node in the kNN graph.
        heads, hidden: first GAT layer (``heads`` heads of ``hidden`` features, concatenated).
        out_dim: second GAT layer (one head): the Deep SVDD representation.
        objective: ``"one-class"`` or ``"soft-boundary"``; ``nu``: the soft-boundary's outlier fraction.
        eps: centre coordinates with ``|c_i| < eps`` are set to ``+-eps``.
        pretrain_epochs: autoencoder epochs before the centre is fixed (0 = centre of the initial network).
        flow_scale: optical flow (pixels per frame) is divided by this before entering the CNN.
        flow_preset: DIS preset of the flow (``ultrafast``, ``fast``, ``medium``).
        ae_weight: weight of the autoencoder loss kept during the Deep SVDD phase (0 = the paper's objective).
    """

    map_power = 2  # maps are squared distances ||phi(x) - c||^2

    def __init__(
        self,
        *,
        in_channels: int = 1,
        clip_length: int = 8,
        image_size: Sequence[int] = (96, 144),
        nodes: str = "cells",
        motion: str = "flow",
        widths: Sequence[int] = (16, 32, 64, 64),
        convs_per_stage: Sequence[int] = (1, 1, 2, 2),
        embed_dim: int = 64,
        k: int = 8,
        heads: int = 4,
        hidden: int = 32,
        out_dim: int = 32,
        objective: str = "one-class",
        nu: float = 0.1,
        eps: float = 0.1,
        pretrain_epochs: int = 3,
        flow_scale: float = 4.0,
        flow_preset: str = "ultrafast",
        ae_weight: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value, allowed in (("nodes", nodes, NODES), ("motion", motion, MOTIONS), ("objective", objective, OBJECTIVES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if len(widths) != len(convs_per_stage) or not widths:
            raise ValueError(f"widths {tuple(widths)} and convs_per_stage {tuple(convs_per_stage)} need the same non-zero length")
        stride = 2 ** len(widths)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if self.image_size[0] % stride or self.image_size[1] % stride:
            raise ValueError(f"image_size {self.image_size} must be divisible by {stride} (2 ** len(widths))")
        if not 0 < nu <= 1 or eps < 0 or k < 1 or pretrain_epochs < 0 or flow_scale <= 0:
            raise ValueError("need 0 < nu <= 1, eps >= 0, k >= 1, pretrain_epochs >= 0 and flow_scale > 0")
        self.in_channels, self.clip_length = in_channels, clip_length
        self.nodes, self.motion, self.objective = nodes, motion, objective
        self.k, self.nu, self.eps, self.flow_scale, self.flow_preset = k, nu, eps, flow_scale, flow_preset
        self.stride = stride
        self.ae_weight = ae_weight
        self.grid = (self.image_size[0] // stride, self.image_size[1] // stride)
        c_in = in_channels + (2 if motion == "flow" else 0)
        self.encoder = FrameEncoder(in_channels=c_in, widths=widths, embed_dim=embed_dim, convs_per_stage=convs_per_stage)
        self.decoder = FrameDecoder(out_channels=c_in, widths=widths, embed_dim=embed_dim)
        cells = self.grid[0] * self.grid[1]
        if nodes == "frames":
            # The frame embedding (Ruff et al.'s bias-free fc) and its mirror in the autoencoder.
            self.to_frame = nn.Linear(embed_dim * cells, embed_dim, bias=False)
            self.from_frame = nn.Linear(embed_dim, embed_dim * cells, bias=False)
        self.gat = GAT(in_dim=embed_dim, hidden=hidden, heads=heads, out_dim=out_dim)
        self.register_fitted("centre", torch.zeros(0))
        self.register_buffer("radius", torch.zeros(()))
        self.fit_before_epoch = pretrain_epochs

    # --- inputs and the network phi ---------------------------------------------------------------------------

    def derived_inputs(self) -> dict[str, dict]:
        return {"flow": {"method": "dis", "preset": self.flow_preset}} if self.motion == "flow" else {}

    @property
    def fitted(self) -> bool:
        """Whether the centre c is fixed (the autoencoder pretraining is over)."""
        return self.centre.numel() > 0

    def _inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """CNN inputs ``(B*T, C', H, W)`` (invalid pixels black, zero flow) and the valid mask ``(B, T, H, W)``."""
        frames, valid = batch.frames, batch.valid
        b, c, t, h, w = frames.shape
        if c != self.in_channels or (h, w) != self.image_size:
            raise ValueError(f"{self.model_name} expects frames (B, {self.in_channels}, T, {self.image_size[0]}, "
                             f"{self.image_size[1]}), got {tuple(frames.shape)}")
        x = torch.where(valid, frames, torch.full_like(frames, -1.0))
        if self.motion == "flow":
            if "flow" not in batch.extras:
                raise ValueError("graph_oneclass with motion='flow' needs batch.extras['flow'] (B, 2, T, H, W)")
            flow = batch.extras["flow"].to(x.dtype) / self.flow_scale
            x = torch.cat([x, flow * valid], dim=1)
        return rearrange(x, "b c t h w -> (b t) c h w"), valid[:, 0]

    def _nodes(self, z: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Node features ``(B, N, E)`` and node validity ``(B, N)`` from cells ``(B*T, E, h, w)``."""
        b, t = valid.shape[:2]
        if self.nodes == "frames":
            v = self.to_frame(rearrange(z, "(b t) e h w -> b t (e h w)", b=b))
            return v, valid.flatten(2).any(-1)
        cell_valid = F.adaptive_max_pool2d(valid.float(), self.grid) > 0  # (B, T, h, w): a cell with a valid pixel
        return rearrange(z, "(b t) e h w -> b (t h w) e", b=b), cell_valid.flatten(1)

    def embed(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """phi of every node: ``(B, N, out_dim)`` and node validity ``(B, N)`` (N = T or T * h * w)."""
        x, valid = self._inputs(batch)
        nodes, node_valid = self._nodes(self.encoder(x), valid)
        with torch.no_grad():  # the graph is built on the features, not learnt through
            edges = knn_edges(cosine_similarity_matrix(nodes.float()), self.k, node_valid)
        b, n, e = nodes.shape
        out = self.gat(nodes.reshape(b * n, e), edges)
        return out.reshape(b, n, -1), node_valid

    def distances(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared distances to the centre ``(B, N)`` and node validity ``(B, N)``."""
        if not self.fitted:
            raise RuntimeError("graph_oneclass: the centre is not fitted yet (train past pretrain_epochs)")
        phi, node_valid = self.embed(batch)
        return ((phi - self.centre) ** 2).sum(-1), node_valid

    # --- the contract -----------------------------------------------------------------------------------------

    def _reconstruction_error(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared autoencoder error ``(B*T, C', H, W)`` and valid ``(B, T, H, W)``."""
        x, valid = self._inputs(batch)
        z = self.encoder(x)
        if self.nodes == "frames":
            z = F.leaky_relu(self.from_frame(self.to_frame(z.flatten(1))), 0.1).reshape(z.shape)
        return (self.decoder(z) - x) ** 2, valid

    def training_loss(self, batch: Batch) -> torch.Tensor:
        """Autoencoder MSE before the centre is fitted; then the Deep SVDD objective over valid nodes (scalar)."""
        if not self.fitted:
            err, valid = self._reconstruction_error(batch)
            return masked_mean(err, rearrange(valid, "b t h w -> (b t) 1 h w"))
        dist, node_valid = self.distances(batch)
        d = dist[node_valid]
        extra = 0.0
        if self.ae_weight:  # optional: keep the autoencoder loss (not in the paper)
            err, valid = self._reconstruction_error(batch)
            extra = self.ae_weight * masked_mean(err, rearrange(valid, "b t h w -> (b t) 1 h w"))
        if self.objective == "one-class":
            return d.mean() + extra  # Eq. 4
        r2 = self.radius**2
        loss = r2 + (1.0 / self.nu) * F.relu(d - r2).mean()  # Eq. 3
        if self.training:  # R = (1 - nu)-quantile of the distances, as the reference code's get_radius
            self.radius = torch.quantile(d.detach().float().sqrt(), 1 - self.nu).to(self.radius)
        return loss + extra

    def anomaly_map(self, batch: Batch) -> torch.Tensor:
        """Squared distance of each node to ``c`` painted on its cell or frame, ``(B, T, H, W)``; 0 where invalid."""
        if not self.fitted:
            err, valid = self._reconstruction_error(batch)
            amap = rearrange(err.mean(1), "(b t) h w -> b t h w", b=valid.shape[0])
            return amap * valid.to(amap.dtype)
        dist, _ = self.distances(batch)
        valid = batch.valid[:, 0]
        b, t, h, w = valid.shape
        if self.nodes == "frames":
            amap = dist[:, :, None, None].expand(b, t, h, w)
        else:
            cells = rearrange(dist, "b (t h w) -> (b t) 1 h w", t=t, h=self.grid[0])
            amap = F.interpolate(cells, size=(h, w), mode="bilinear", align_corners=False).clamp_min(0)
            amap = rearrange(amap, "(b t) 1 h w -> b t h w", b=b)
        return amap * valid.to(amap.dtype)

    def fit(self, batches: Iterable[Batch]) -> None:
        """Fix the centre c: the mean phi over valid nodes of the normal training clips, ``|c_i| < eps`` -> ``+-eps``."""
        total, count = None, 0
        for batch in batches:
            phi, node_valid = self.embed(batch)
            chosen = phi[node_valid].double()
            total = chosen.sum(0) if total is None else total + chosen.sum(0)
            count += chosen.shape[0]
        if not count:
            raise ValueError("graph_oneclass: no valid node in the training clips to fit the centre on")
        c = (total / count).float()
        # Ruff et al.'s init_center_c: a zero coordinate can be matched trivially by zero weights.
        small = c.abs() < self.eps
        c = torch.where(small & (c < 0), torch.full_like(c, -self.eps), c)
        c = torch.where(small & (c >= 0), torch.full_like(c, self.eps), c)
        self.centre = c
