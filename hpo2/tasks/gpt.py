r"""A small GPT (Radford et al. 2019, "Language models are unsupervised multitask
learners"; the pre-norm block of Xiong et al. 2020) over bytes.

For a window of token ids :math:`x_1..x_T`, with :math:`h_0 = E[x_t] + P_t` (token
embedding plus a learned position embedding), each of the ``depth`` blocks computes

.. math::
   h \leftarrow h + W_o\,\mathrm{Attn}(\mathrm{LN}(h)),\qquad
   h \leftarrow h + W_2\,\mathrm{GELU}(W_1\,\mathrm{LN}(h)),

with multi-head causal self-attention
:math:`\mathrm{Attn} = \mathrm{softmax}(Q K^\top / \sqrt{d_h} + M)\,V` (``M`` is
:math:`-\infty` above the diagonal, so position t sees positions 1..t), and the
logits are :math:`W_\text{head}\,\mathrm{LN}(h_L)` (``W_head`` is the token
embedding when ``tie_embeddings``).  Initialisation follows GPT-2: weights
:math:`N(0, 0.02^2)`, the residual projections :math:`W_o, W_2` scaled by
:math:`1/\sqrt{2\,\text{depth}}`, biases zero.

Attention is the explicit masked softmax by default (``attention="math"``): hpo2's
curvature products (Hessian-vector products, the curvature diagnostics of every
study) differentiate the gradient again, and the fused kernels that
``torch.nn.functional.scaled_dot_product_attention`` picks (flash attention, also on
a CPU, and the memory-efficient kernel) have no double backward and no forward-mode
derivative.  ``attention="fused"`` uses that function: faster on a GPU, for
optimizers that need first derivatives only (AdamW, Muon, K-FAC, Shampoo, SOAP) with
``curvature_diagnostics: false``.

The output is shaped ``(batch, vocab, context)``: the class dimension second, as
``torch.nn.CrossEntropyLoss`` takes it for ``(batch, context)`` targets, so the loss,
its Gauss-Newton products (:mod:`hpo2.curvature.output_hessians`) and K-FAC's
sampled Fisher read every position as one prediction with no wrapper.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Attention = Literal["math", "fused"]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused ``q, k, v`` projection."""

    future: Tensor  # (context, context) booleans: True above the diagonal

    def __init__(self, width: int, heads: int, context: int, attention: Attention) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads, self.attention = heads, attention
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.register_buffer("future", torch.ones(context, context, dtype=torch.bool).triu(1), persistent=False)

    def forward(self, h: Tensor) -> Tensor:
        batch, length, width = h.shape
        q, k, v = (
            t.reshape(batch, length, self.heads, width // self.heads).transpose(1, 2)
            for t in self.qkv(h).split(width, dim=-1)
        )
        if self.attention == "fused":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            scores = scores.masked_fill(self.future[:length, :length], float("-inf"))
            out = torch.softmax(scores, dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """Pre-norm transformer block: attention, then a 4x-wide GELU MLP, each residual."""

    def __init__(self, width: int, heads: int, context: int, attention: Attention) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, context, attention)
        self.ln_mlp = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.out = nn.Linear(4 * width, width)

    def forward(self, h: Tensor) -> Tensor:
        h = h + self.attn(self.ln_attn(h))
        return h + self.out(F.gelu(self.fc(self.ln_mlp(h))))


class GPT(nn.Module):
    """Token ids ``(batch, T)`` with ``T <= context`` -> logits ``(batch, vocab, T)``.

    Example:
        >>> import torch
        >>> model = GPT(vocab=256, context=16, width=32, depth=2, heads=4)
        >>> model(torch.randint(0, 256, (3, 10))).shape
        torch.Size([3, 256, 10])
    """

    def __init__(
        self,
        vocab: int,
        context: int,
        width: int,
        depth: int,
        heads: int,
        tie_embeddings: bool = False,
        attention: Attention = "math",
    ) -> None:
        super().__init__()
        self.context = context
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads, context, attention) for _ in range(depth))
        self.ln_final = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self._init_weights(depth)
        if tie_embeddings:
            self.head.weight = self.embed.weight

    def _init_weights(self, depth: int) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            assert isinstance(block, Block), "blocks holds Blocks"
            for residual in (block.attn.proj, block.out):
                nn.init.normal_(residual.weight, std=0.02 / math.sqrt(2 * depth))

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        if length > self.context:
            raise ValueError(f"a window of {length} tokens is longer than the model's context {self.context}")
        h = self.embed(tokens) + self.position.weight[:length]
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_final(h)).transpose(1, 2)
