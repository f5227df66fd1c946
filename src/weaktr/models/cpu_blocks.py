"""CPU inference forward for plain timm ViT blocks: oneDNN linear epilogues and batched fused attention.

Why: an eager timm ``Block`` on the CPU copies the bias into every GEMM's output first, and runs
GELU and each residual add as separate passes over memory. oneDNN's linear with a fused epilogue
(bias, bias + exact GELU, bias + residual add) removes those passes; attention runs torch's fused
kernel over all windows of a batch at once (in torch 2.14 it beats the hand-written per-window bf16
attention this module used to have). The timings, and the CPUs they were taken on:
docs/benchmarks.md ("Figures behind the code's comments", "Issue 32") and
docs/benchmarks-inference.md. The arithmetic is the block's own (same operations, same order of
the residual stream, exact GELU); only summation order and, in bf16, the rounding of the attention
probabilities differ.

Inference only: :class:`FusedBlock` falls back to the block's own forward when gradients are on,
under autocast or in training mode, and :func:`is_plain_block` admits only the blocks whose structure
it covers (no q/k norm, layer scale, gate or attention-output norm: EVA and friends keep their own
forward).

The oneDNN ops are private to torch: their signatures may change between releases, and a CPU may
lack what a dtype needs (bf16 weight packing wants AVX-512 or AVX-NE-CONVERT). So
:func:`prepare_blocks` puts fused blocks in only for a dtype whose fused forward has matched the plain
forward on a small block in this process (:func:`fused_problem`, checked once per dtype); anything
else runs the plain forward, with one warning naming the reason.

The fast path is a module, not a flag: :func:`prepare_blocks`, called once by a model's
``prepare_inference`` under its :class:`~weaktr.models.execution.ExecutionPolicy`, puts a
:class:`FusedBlock` (or, for the segmenter's bf16 CPU encoder, a :class:`Bf16Block`) in a block's slot.
Both stand in for the block with its own parameters under its own names, so state dicts, optimisers
and training are untouched: outside CPU inference they run the block itself. Each owns its cache (the
packed weights, the bf16 copy), made again when a parameter changed in place (an optimiser step).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Attention, Block
from torch import nn

log = logging.getLogger("weaktr")
# (atol, rtol) of the fused forward against the plain one: summation order in fp32; in bf16 the
# rounding of the attention probabilities as well
TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (0.05, 0.02)}
_verdicts: dict[torch.dtype, str | None] = {}  # per dtype: None once the self-check passed, else why not


def _has_onednn_linear() -> bool:
    """oneDNN's fused linear and weight packing exist in torch builds with MKLDNN (all x86 wheels)."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_linear_pointwise")
        and hasattr(ops, "_reorder_linear_weight")
    )


def is_plain_block(block: nn.Module) -> bool:
    """True for a timm ViT ``Block`` (or a subclass that keeps its forward) made only of what
    :class:`FusedBlock` computes."""
    if not isinstance(block, Block) or type(block).forward is not Block.forward:
        return False
    attn, mlp = block.attn, block.mlp
    identities = (
        block.ls1,
        block.ls2,
        getattr(attn, "q_norm", nn.Identity()),
        getattr(attn, "k_norm", nn.Identity()),
        getattr(attn, "norm", nn.Identity()),
        getattr(mlp, "norm", nn.Identity()),
    )
    return (
        type(attn) is Attention
        and getattr(attn, "gate", None) is None
        and type(mlp) is Mlp
        and isinstance(mlp.act, nn.GELU)
        and mlp.act.approximate == "none"
        and all(isinstance(m, nn.Identity) for m in identities)
        and isinstance(block.norm1, nn.LayerNorm)
        and isinstance(block.norm2, nn.LayerNorm)
        and all(lin.bias is not None for lin in (attn.qkv, attn.proj, mlp.fc1, mlp.fc2))
    )


Packed = tuple[torch.Tensor, torch.Tensor]  # (oneDNN-packed weight, bias)


def _linear(x: torch.Tensor, wb: Packed, post: str = "none") -> torch.Tensor:
    """``post(x @ Wᵀ + b)`` in one oneDNN call; post is "none" or "gelu" (exact, erf-based)."""
    algorithm = "none" if post == "gelu" else ""
    return torch.ops.mkldnn._linear_pointwise(x, wb[0], wb[1], post, [], algorithm)


def _linear_add(x: torch.Tensor, wb: Packed, residual: torch.Tensor) -> torch.Tensor:
    """``residual + (x @ Wᵀ + b)`` in one oneDNN call (the residual add as the GEMM's epilogue)."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual.contiguous(), wb[0], wb[1], "add")


def _attention(qkv: torch.Tensor) -> torch.Tensor:
    """(B, N, 3, heads, d), q already scaled -> (B, N, heads·d): softmax(q·kᵀ)·v for all windows at once.

    torch's fused CPU kernel on the strided q, k and v views, the whole batch in one call: in bf16
    it beats two GEMMs around an in-place softmax one window at a time by about a third (9.4 against
    13.7 ms for 4 windows of 901 tokens on the AMX Xeon, 2026-12-08), and in float32 it gives the
    same bits as per-window calls at the same speed (docs/benchmarks.md, "Issue 32").
    """
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    B, H, N, D = q.shape
    return F.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(1, 2).reshape(B, N, H * D)


class StandIn(nn.Module):
    """Takes a block's slot for inference: its parameters and children under their own names (state
    keys unchanged), the block itself in ``plain`` (not a submodule), which runs outside inference."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.__dict__["plain"] = block
        for name, p in block.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, child in block.named_children():
            self.add_module(name, child)
        self.train(block.training)

    def train(self, mode: bool = True) -> StandIn:
        super().train(mode)
        self.plain.training = mode
        return self

    def _inference(self) -> bool:
        """Inference proper: eval mode, no autograd, no autocast (which picks its own dtypes)."""
        return not self.training and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")

    def _weights_key(self) -> tuple[tuple[int, int], ...]:
        """Changes whenever a parameter is replaced or changed in place."""
        return tuple((p.data_ptr(), p._version) for p in self.parameters())


class FusedBlock(StandIn):
    """A plain block (see :func:`is_plain_block`) with its four weights packed for oneDNN.

    Packing (oneDNN's blocked layout, chosen for ``rows_hint`` rows: 8 windows of 901 tokens) makes
    every GEMM faster than on plain weights and gives identical results. The pack is made at the
    first inference call and again after the weights changed. Calls with gradients on, under
    autocast, in training mode or on other devices or dtypes run the block's own forward.
    """

    def __init__(self, block: Block, rows_hint: int = 8 * 901) -> None:
        super().__init__(block)
        self.rows_hint = rows_hint
        self.dtype = block.attn.qkv.weight.dtype
        self._packed: tuple[tuple[tuple[int, int], ...], tuple[Packed, ...]] | None = None

    def _fast(self, x: torch.Tensor) -> bool:
        return self._inference() and x.device.type == "cpu" and x.dtype == self.dtype

    def _weights(self) -> tuple[Packed, ...]:
        """(qkv, proj, fc1, fc2), packed again when a parameter changed since the last pack."""
        key = self._weights_key()
        if self._packed is None or self._packed[0] != key:
            attn, mlp = self.attn, self.mlp
            # the attention scale folded into q's rows: exact for a power of two (head size 64), and
            # it saves a pass over q per window
            w = attn.qkv.weight
            fold = torch.ones(attn.qkv.out_features, dtype=w.dtype, device=w.device)
            fold[: attn.num_heads * attn.head_dim] = attn.scale
            weights = (w.detach() * fold[:, None], attn.proj.weight, mlp.fc1.weight, mlp.fc2.weight)
            biases = (attn.qkv.bias.detach() * fold, attn.proj.bias, mlp.fc1.bias, mlp.fc2.bias)
            packed = tuple(
                (torch.ops.mkldnn._reorder_linear_weight(w.detach(), self.rows_hint), b.detach())
                for w, b in zip(weights, biases, strict=True)
            )
            self._packed = (key, packed)
        return self._packed[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fast(x):
            return self.plain(x)
        qkv_w, proj_w, fc1_w, fc2_w = self._weights()
        attn = self.attn
        B, N, _ = x.shape
        qkv = _linear(self.norm1(x), qkv_w).view(B, N, 3, attn.num_heads, attn.head_dim)
        x = _linear_add(_attention(qkv), proj_w, x)
        return _linear_add(_linear(self.norm2(x), fc1_w, "gelu"), fc2_w, x)

    def forward_with_maps(
        self, x: torch.Tensor, scores_out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block's forward with what the CAM network keeps (as
        :meth:`~weaktr.models.encoder.MapsBlock.forward_with_maps`).

        Returns (new tokens, attention (B, heads, N, N), projection output, per-head A·V); the
        attention is written into ``scores_out`` when given.
        """
        if not self._fast(x):
            return self.plain.forward_with_maps(x, scores_out)
        qkv_w, proj_w, fc1_w, fc2_w = self._weights()
        attn = self.attn
        B, N, _ = x.shape
        qkv = _linear(self.norm1(x), qkv_w).view(B, N, 3, attn.num_heads, attn.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        scores = torch.matmul(q, k.transpose(-2, -1), out=scores_out)
        probs = torch.softmax(scores, -1, out=scores)
        head_out = probs @ v
        out = _linear(head_out.transpose(1, 2).reshape(B, N, -1), proj_w)
        x = x + out
        return _linear_add(_linear(self.norm2(x), fc1_w, "gelu"), fc2_w, x), probs, out, head_out


class Bf16Block(StandIn):
    """Runs a block's inference in a bf16 copy (fused when ``fused``), taking float32 or bf16 and
    returning float32 (bf16 into another such block).

    Whole blocks in bf16 beat bf16 Linear layers alone (no casts around every matmul, bf16 GELU and
    LayerNorm) while what surrounds them stays float32 (docs/benchmarks.md, "Notes on the 6-scale
    inference"). The copy is made in eval mode at the first inference call and again after the
    float32 weights changed; training runs the block itself.
    """

    def __init__(self, block: nn.Module, fused: bool) -> None:
        super().__init__(block)
        self.fused = fused
        # set by prepare_blocks where the next slot is a Bf16Block too: the output stays bf16, as the
        # next block would round it to bf16 anyway (bf16 -> float32 -> bf16 is exact), and two casts
        # of the residual stream per block are saved
        self.feeds_bf16 = False
        self.__dict__["_copy"] = None  # (weights key, bf16 module); not a submodule, so not state

    def _low(self) -> nn.Module:
        key = self._weights_key()
        if self._copy is None or self._copy[0] != key:
            low = copy.deepcopy(self.plain).to(torch.bfloat16).eval()
            self.__dict__["_copy"] = (key, FusedBlock(low) if self.fused else low)
        return self._copy[1]

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            return self.plain(*args, **kwargs)

        def cast(v: Any) -> Any:
            return v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v

        out = self._low()(*(cast(a) for a in args), **{k: cast(v) for k, v in kwargs.items()})
        return out if self.feeds_bf16 else out.float()


def _self_check(dtype: torch.dtype) -> str | None:
    """Run a small random block (head size 64, as DeiT's) fused and plain; None when they agree."""
    if dtype not in TOLERANCE:
        return f"no fused forward for {dtype}"
    if not _has_onednn_linear():
        return "this torch build has no oneDNN fused linear"
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        torch.manual_seed(0)
        block = Block(128, 2, qkv_bias=True).eval()
        with torch.no_grad():  # non-zero biases and norm affines, so every fused epilogue is used
            for q in block.parameters():
                q.add_(0.1 * torch.randn_like(q))
        x = torch.randn(2, 37, 128)
    block, x = block.to(dtype), x.to(dtype)
    try:
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            got = FusedBlock(block)(x)
            want = Block.forward(block, x)
    except Exception as exc:  # a changed signature, a missing CPU feature: anything means "do not use"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no message'}"
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or got.dtype != want.dtype:
        what = f"{tuple(got.shape)} {got.dtype}" if isinstance(got, torch.Tensor) else type(got).__name__
        return f"the fused forward gave {what} where {tuple(want.shape)} {want.dtype} was due"
    atol, rtol = TOLERANCE[dtype]
    if not torch.allclose(got.float(), want.float(), atol=atol, rtol=rtol):
        err = (got.float() - want.float()).abs().max().item()
        return f"the fused forward differs from the plain one by up to {err:.3g} (atol {atol}, rtol {rtol})"
    return None


def fused_problem(dtype: torch.dtype) -> str | None:
    """Why fused blocks of ``dtype`` are not used (None: they are); the self-check runs once per dtype.

    A failed check is logged once, as a warning.
    """
    if dtype not in _verdicts:
        _verdicts[dtype] = _self_check(dtype)
        if _verdicts[dtype] is not None:
            log.warning(
                "fused CPU ViT blocks are off for %s (%s): the plain forward runs instead",
                str(dtype).removeprefix("torch."),
                _verdicts[dtype],
            )
    return _verdicts[dtype]


def prepare_blocks(blocks: nn.ModuleList, fused: bool, bf16: bool = False) -> None:
    """Put in each slot of ``blocks`` what runs it for inference: a :class:`Bf16Block` with ``bf16``
    (fused inside when allowed and self-checked), else a :class:`FusedBlock` where ``fused`` and the
    block's dtype passed its self-check, else the block itself. A slot that already holds what is
    wanted keeps it, and its cache."""
    for i, current in enumerate(blocks):
        plain = current.plain if isinstance(current, StandIn) else current
        fusable = fused and is_plain_block(plain)
        if bf16:
            fuse_low = fusable and fused_problem(torch.bfloat16) is None
            keep = isinstance(current, Bf16Block) and current.fused == fuse_low
            wanted = current if keep else Bf16Block(plain, fuse_low)
        elif fusable and fused_problem(plain.attn.qkv.weight.dtype) is None:
            wanted = current if isinstance(current, FusedBlock) else FusedBlock(plain)
        else:
            wanted = plain
        if wanted is not current:
            blocks[i] = wanted
    for block, after in zip(blocks, [*list(blocks)[1:], None], strict=True):
        if isinstance(block, Bf16Block):
            block.feeds_bf16 = isinstance(after, Bf16Block)
