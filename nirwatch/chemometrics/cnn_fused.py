"""A trained :class:`~nirwatch.chemometrics.cnn.SpectralCNN` ensemble folded into one module.

Run one by one, the members of the shipped ensemble (one convolution of 8 filters × 32 taps,
average pooling by 16, a small dense head) spend their time in five oneDNN convolutions with one
input channel, five activation and five pooling passes over conv outputs far larger than the
cache, and five heads of tiny matrix products. :class:`FusedEnsemble` computes the same
ensemble mean (to float32 rounding) with a handful of large operations:

* **The convolution as one batched matrix product over pooling blocks.** The conv outputs
  that one pooling window averages (``pool`` positions × ``filters``) depend on ``pool +
  kernel - 1`` input points. Cutting the spectrum into those overlapping windows (a view, then
  one small copy) turns every member's convolution into a product of a (n, pool+kernel)
  window matrix with a block-Toeplitz matrix; each member's per-wavelength standardisation
  ``(x - mean) / scale`` is folded into that matrix per block (and into a bias row fed by a
  column of ones), so all members share one copy of the input and one product per block:
  ``bmm`` over the blocks of (n, pool+kernel) × (pool+kernel, members·filters·pool).
* **Leaky ReLU and pooling without a pass of their own.** ``leaky(h) = (1-a)·relu(h) + a·h``
  and pooling is a sum; the pooled linear part ``Σ h`` is a few extra columns of the same
  product, so the conv outputs only see an in-place ReLU and one sum over the pooling positions
  (laid out as the middle axis, which vectorises). Other activations are applied as they are.
* **All heads as batched products** (``baddbmm`` with the members as the batch), the linear
  skip riding as one more column of the first dense layer, and the target scaling and the
  ensemble mean folded into one weighted sum.

The members stay the reference: :class:`~nirwatch.chemometrics.cnn.CNNPredictor` builds this
module from them at load time (bundles are unchanged) and tests pin that both predict the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from nirwatch.chemometrics.cnn import SpectralCNN

#: Conv output computed at a time (bytes): a few pooling blocks of a chunk, which the ReLU and the
#: pooling sum then find in cache. At chunk 256 that is 2 of the 38 blocks of the default network:
#: 1.15-1.34x faster than the whole chunk's product at once (issue 16, 2-core machine).
GROUP_BYTES = 3 << 19  # 1.5 MiB

#: Negative-side slope of the activations whose pooled sum is split into a ReLU and a linear part.
_PIECEWISE_LINEAR = {"relu": 0.0, "leaky_relu": 0.1}


def fusable(members: Sequence[SpectralCNN]) -> bool:
    """Whether :class:`FusedEnsemble` covers this architecture (one stride-1 conv, pooling)."""
    c = members[0].config
    return len(c.conv_filters) == 1 and c.strides == (1,) and c.pool_size >= 2


class FusedEnsemble(nn.Module):
    """The ensemble mean of ``members`` (target units) as one module; see the module docstring.

    Parameters
    ----------
    members : sequence of SpectralCNN
        Trained networks sharing one config that :func:`fusable` accepts. Their weights are
        copied (in float64 while folding, stored float32); later changes to them are not seen.
    """

    conv: torch.Tensor
    w0: torch.Tensor
    b0: torch.Tensor
    y_weight: torch.Tensor
    y_offset: torch.Tensor

    def __init__(self, members: Sequence[SpectralCNN]) -> None:
        super().__init__()
        if not members or not fusable(members):
            raise ValueError("FusedEnsemble: needs one stride-1 convolution followed by pooling")
        c = members[0].config
        self.n_members, self.filters = len(members), c.conv_filters[0]
        self.kernel, self.pool, self.blocks = c.kernel_sizes[0], c.pool_size, c.conv_output_length()
        self.window = self.pool + self.kernel - 1
        self.slope = _PIECEWISE_LINEAR.get(c.activation)
        self.act: Callable[[torch.Tensor], torch.Tensor] = members[0].features[1]
        with torch.no_grad():
            self.register_buffer("conv", self._conv_matrix(members))
            self._fold_head(members)

    def _conv_matrix(self, members: Sequence[SpectralCNN]) -> torch.Tensor:
        """(blocks, window + 1, columns): per block, standardisation and conv bias folded in.

        Columns: (pool position, member, filter), then, for piecewise-linear activations,
        (member, filter) holding the pooled sum of the conv output itself.
        """
        m, f, k, b, w = self.n_members, self.filters, self.kernel, self.pool, self.window
        dt = torch.float64
        convs = [cast(nn.Conv1d, net.features[0]) for net in members]
        weight = torch.stack([c.weight[:, 0, :] for c in convs]).to(dt)  # (m, f, k)
        bias = torch.stack([cast(torch.Tensor, c.bias) for c in convs]).to(dt)  # (m, f)
        inv = torch.stack([1.0 / net.x_scale for net in members]).to(dt)  # (m, L)
        shift = torch.stack([net.x_mean / net.x_scale for net in members]).to(dt)
        toeplitz = torch.zeros(w, b, m, f, dtype=dt)  # input point, pool position, member, filter
        for p in range(b):
            toeplitz[p : p + k, p] = weight.permute(2, 0, 1)
        out = []
        for blk in range(self.blocks):
            lo = blk * b
            scaled = toeplitz * inv[:, lo : lo + w].T[:, None, :, None]
            row = bias[None] - torch.einsum("ipmf,mi->pmf", toeplitz, shift[:, lo : lo + w])
            mat = torch.cat([scaled, row[None]]).reshape(w + 1, b * m * f)
            if self.slope is not None:
                mat = torch.cat([mat, mat.view(w + 1, b, m * f).sum(1)], dim=1)
            out.append(mat)
        return torch.stack(out).float().contiguous()

    def _fold_head(self, members: Sequence[SpectralCNN]) -> None:
        m, f, P = self.n_members, self.filters, self.blocks
        linears = [[x for x in net.head if isinstance(x, nn.Linear)] for net in members]
        # Pooled features here are sums ordered (block, filter); torch flattens (filter, block)
        # of means. With the activation split, the features are Σrelu + a/(1-a)·Σh, so the
        # first layer takes (1-a)/pool.
        gain = (1.0 - (self.slope or 0.0)) / self.pool

        def first(w: torch.Tensor) -> torch.Tensor:
            return (w.view(w.shape[0], f, P).transpose(1, 2).reshape(w.shape[0], P * f) * gain).T

        w0, b0 = [], []
        for net, lin in zip(members, linears, strict=True):
            skip = [net.skip] if net.skip is not None else []
            w0.append(first(torch.cat([x.weight for x in [lin[0], *skip]])))
            b0.append(torch.cat([x.bias for x in [lin[0], *skip]]))
        self.has_skip = members[0].skip is not None
        self.register_buffer("w0", torch.stack(w0).contiguous())  # (m, P*f, units0 [+1])
        self.register_buffer("b0", torch.stack(b0)[:, None, :].contiguous())
        self.n_dense = len(linears[0])
        for i in range(1, self.n_dense):
            w = torch.stack([lin[i].weight.T for lin in linears]).contiguous()
            self.register_buffer(f"w{i}", w)
            self.register_buffer(f"b{i}", torch.stack([lin[i].bias for lin in linears])[:, None])
        # Target units and the ensemble mean: Σ_m out_m · y_scale_m / m + mean_m(y_mean).
        self.register_buffer("y_weight", torch.stack([n.y_scale for n in members]) / m)  # (m, 1)
        self.register_buffer("y_offset", torch.stack([n.y_mean for n in members]).mean())

    def _buffer(self, name: str) -> torch.Tensor:
        return cast(torch.Tensor, getattr(self, name))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled conv features of every member, (members, n, blocks · filters).

        The product is taken a few pooling blocks at a time (about :data:`GROUP_BYTES` of conv
        output), so the ReLU and the pooling sum read it from cache rather than from memory.
        """
        n, m, f, P, w = x.shape[0], self.n_members, self.filters, self.blocks, self.window
        windows = torch.empty(P, n, w + 1, dtype=x.dtype, device=x.device)
        windows[:, :, :w] = x[:, : (P - 1) * self.pool + w].unfold(1, w, self.pool).transpose(0, 1)
        windows[:, :, w] = 1.0
        cols = self.pool * m * f
        pooled = torch.empty(P, n, m * f, dtype=x.dtype, device=x.device)
        step = max(1, GROUP_BYTES // (n * self.conv.shape[2] * x.element_size()))
        for lo in range(0, P, step):
            h = torch.bmm(windows[lo : lo + step], self.conv[lo : lo + step])
            out, k = pooled[lo : lo + step], h.shape[0]
            if self.slope is None:
                torch.sum(self.act(h).view(k, n, self.pool, m * f), 2, out=out)
                continue
            torch.sum(h[:, :, :cols].relu_().view(k, n, self.pool, m * f), 2, out=out)
            if self.slope:
                out.add_(h[:, :, cols:], alpha=self.slope / (1.0 - self.slope))
        return pooled.view(P, n, m, f).permute(2, 1, 0, 3).reshape(m, n, P * f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Ensemble-mean prediction in target units for spectra (n, L), shape (n,)."""
        a = torch.baddbmm(self.b0, self.features(x), self.w0)
        if self.n_dense == 1:
            out = a.sum(2) if self.has_skip else a[:, :, 0]
        else:
            units = a.shape[2] - int(self.has_skip)
            h = self.act(a[:, :, :units])
            for i in range(1, self.n_dense):
                h = torch.baddbmm(self._buffer(f"b{i}"), h, self._buffer(f"w{i}"))
                if i < self.n_dense - 1:
                    h = self.act(h)
            out = h[:, :, 0] + a[:, :, units] if self.has_skip else h[:, :, 0]
        return (out * self.y_weight).sum(0) + self.y_offset
