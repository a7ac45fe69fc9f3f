"""Input checks shared by the curvature products: clear ``ValueError``s, never a
bare autograd traceback for a user mistake."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


def as_param_list(params: Iterable[Tensor]) -> list[Tensor]:
    """Return ``params`` as a list, checking every entry is a tensor that requires grad."""
    if isinstance(params, Tensor):
        params = [params]
    plist = list(params)
    if not plist:
        raise ValueError("params is empty: pass the list of parameter tensors to differentiate")
    for i, p in enumerate(plist):
        if not isinstance(p, Tensor):
            raise ValueError(f"params[{i}] is a {type(p).__name__}, expected a torch.Tensor")
        if not p.requires_grad:
            raise ValueError(
                f"params[{i}] (shape {tuple(p.shape)}) does not require grad: "
                "curvature is taken only with respect to tensors with requires_grad=True"
            )
    return plist


def check_scalar_loss(loss: Tensor) -> None:
    """Raise unless ``loss`` is a scalar tensor attached to an autograd graph."""
    if not isinstance(loss, Tensor):
        raise ValueError(f"loss must be a torch.Tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(
            f"loss must be a scalar tensor, got shape {tuple(loss.shape)}: reduce it (e.g. .mean()) first"
        )
    if loss.grad_fn is None:
        raise ValueError(
            "loss has no autograd graph (grad_fn is None): compute it from parameters that "
            "require grad, outside torch.no_grad(), and do not .detach() it"
        )


def check_vectors(vectors: Sequence[Tensor], like: Sequence[Tensor], name: str = "vectors") -> list[Tensor]:
    """Check ``vectors`` has one tensor per entry of ``like`` with the same shape."""
    if isinstance(vectors, Tensor):
        vectors = [vectors]
    vlist = list(vectors)
    if len(vlist) != len(like):
        raise ValueError(f"{name} has {len(vlist)} tensors but there are {len(like)} parameters")
    for i, (v, p) in enumerate(zip(vlist, like)):
        if not isinstance(v, Tensor):
            raise ValueError(f"{name}[{i}] is a {type(v).__name__}, expected a torch.Tensor")
        if v.shape != p.shape:
            raise ValueError(
                f"{name}[{i}] has shape {tuple(v.shape)} but parameter {i} has shape {tuple(p.shape)}"
            )
    return vlist


def check_flat(v: Tensor, dim: int) -> None:
    """Raise unless ``v`` is a 1-D tensor of length ``dim``."""
    if not isinstance(v, Tensor) or v.dim() != 1 or v.numel() != dim:
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"expected a flat vector of length {dim}, got {shape}")


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one flat vector (the parameter-space vector)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat vector into tensors shaped like ``like``."""
    out, offset = [], 0
    for p in like:
        n = p.numel()
        out.append(flat[offset : offset + n].view_as(p))
        offset += n
    return out
