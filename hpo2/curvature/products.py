r"""Exact curvature-vector products: Hessian (H v) and generalized Gauss-Newton (G v).

Hessian-vector products (Pearlmutter 1994, "Fast exact multiplication by the
Hessian") use the R-operator identity

.. math::  H v = \nabla_\theta \big( \nabla_\theta L(\theta)^\top v \big),

computed two ways:

* **double backward** (:class:`HessianOperator`, :func:`hvp`): the gradient graph
  :math:`g(\theta) = \nabla L` is built once per step with ``create_graph=True``;
  every product is then one extra backward pass through that graph with
  ``grad_outputs=v``.  CG solvers take tens of products on the same batch, so the
  forward pass and first backward are amortised over all of them.
* **forward-over-reverse** (:func:`functional_hvp`): ``torch.func.jvp`` of
  ``torch.func.grad`` for users who write their loss as a pure function of the
  parameters.

Generalized Gauss-Newton products (Schraudolph 2002, "Fast curvature matrix-vector
products for second-order gradient descent") drop the second-order term of the
network and keep the loss curvature on the outputs :math:`z = f(x; \theta)`:

.. math::  G v = J^\top H_L J v, \qquad J = \partial z / \partial \theta,
           \quad H_L = \partial^2 L / \partial z^2 .

:class:`GGNOperator` forms ``J v`` by the double-backward trick (the vector-Jacobian
product graph :math:`u \mapsto J^\top u` is built once; ``J v`` is its derivative
with respect to ``u``), applies :math:`H_L` in closed form (see
:mod:`hpo2.curvature.output_hessians`), then ``J^T`` by one backward pass.  G is
positive semi-definite whenever the loss is convex in the outputs, which is what
Hessian-free optimisation (Martens 2010) needs for CG.

Operators never touch ``param.grad`` and never ask the user for
``loss.backward(create_graph=True)`` (which leaks through reference cycles); each
step's graph is released when the operator is dropped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from hpo2.curvature._validate import (
    as_param_list,
    check_flat,
    check_scalar_loss,
    check_vectors,
    flatten,
    unflatten,
)
from hpo2.curvature.output_hessians import OutputHessian


class CurvatureOperator(ABC):
    r"""A symmetric curvature matrix :math:`C` over a list of parameter tensors.

    Subclasses implement :meth:`matvec` on lists of tensors shaped like the
    parameters; :meth:`mv` is the same product on flat vectors (what the solvers
    and spectrum tools use).  ``n_products`` counts products for budgets counted in
    gradient-equivalents.
    """

    def __init__(self, params: Sequence[Tensor]) -> None:
        self.params = list(params)
        self.dim = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.n_products = 0
        #: work done building the operator, in gradients of its batch (for budgets):
        #: the backward pass whose graph the products walk
        self.setup_cost = 0.0

    def matvec(self, vectors: Sequence[Tensor]) -> list[Tensor]:
        """Return :math:`C v` for ``v`` given as one tensor per parameter."""
        vlist = check_vectors(vectors, self.params)
        self.n_products += 1
        return self._matvec(vlist)

    @abstractmethod
    def _matvec(self, vectors: list[Tensor]) -> list[Tensor]:
        """The product on validated per-parameter tensors (not counted)."""

    def mv(self, v: Tensor) -> Tensor:
        """Return :math:`C v` for a flat vector of length ``dim``."""
        check_flat(v, self.dim)
        self.n_products += 1
        return flatten(self._matvec(unflatten(v, self.params)))

    __call__ = mv


def grads_or_zeros(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> list[Tensor]:
    """The gradients with zeros for parameters the loss does not use (``allow_unused`` gives ``None``)."""
    return [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, params)]


class HessianOperator(CurvatureOperator):
    r"""Exact Hessian :math:`H = \nabla^2_\theta L` of a scalar loss, by double backward.

    The gradient graph is built once at construction; each product costs one
    backward pass through it (``retain_graph=True``), so ``k`` products on one
    batch cost one forward, one backward and ``k`` double-backward passes.

    Args:
        loss: scalar loss attached to the autograd graph of ``params``.
        params: tensors (requires_grad) the Hessian is taken with respect to.

    Example:
        On :math:`L(x) = \tfrac12 x^\top A x` the Hessian is :math:`A` and the
        gradient :math:`A x` comes with the operator:

        >>> import torch
        >>> from hpo2.curvature import HessianOperator
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> x = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
        >>> op = HessianOperator(0.5 * x @ A @ x, [x])
        >>> op.matvec([torch.tensor([1.0, 2.0], dtype=torch.float64)])[0].tolist()
        [4.0, 7.0]
        >>> op.gradient[0].tolist()
        [1.0, -2.0]
    """

    def __init__(self, loss: Tensor, params: Iterable[Tensor]) -> None:
        check_scalar_loss(loss)
        plist = as_param_list(params)
        super().__init__(plist)
        grads = torch.autograd.grad(loss, plist, create_graph=True, allow_unused=True)
        self._used = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self._graph_grads = [grads[i] for i in self._used]
        self.gradient: list[Tensor] = grads_or_zeros(grads, plist)
        self.loss = loss.detach()
        self.setup_cost = 1.0  # the backward pass above, with its graph kept (it also gives the gradient)

    def _matvec(self, vectors: list[Tensor]) -> list[Tensor]:
        if not self._used:  # loss is linear in the params: H = 0
            return [torch.zeros_like(p) for p in self.params]
        used_params = [self.params[i] for i in self._used]
        hv = torch.autograd.grad(
            self._graph_grads,
            used_params,
            grad_outputs=[vectors[i] for i in self._used],
            retain_graph=True,
            allow_unused=True,
        )
        out = [torch.zeros_like(p) for p in self.params]
        for i, h in zip(self._used, hv):
            if h is not None:
                out[i] = h
        return out


def hvp(loss: Tensor, params: Iterable[Tensor], vectors: Sequence[Tensor]) -> list[Tensor]:
    r"""One Hessian-vector product :math:`H v` of a scalar ``loss`` (double backward).

    For several products on the same loss build a :class:`HessianOperator` once
    and call :meth:`~CurvatureOperator.matvec` repeatedly.

    Args:
        loss: scalar loss attached to the autograd graph of ``params``.
        params: tensors the Hessian is taken with respect to.
        vectors: one tensor per parameter, shaped like it.

    Example:
        For :math:`L = x_0^2 x_1`, :math:`H = \begin{pmatrix} 2x_1 & 2x_0 \\ 2x_0 & 0 \end{pmatrix}`;
        at :math:`x = (1, 2)`, :math:`H e_0 = (4, 2)`:

        >>> import torch
        >>> from hpo2.curvature import hvp
        >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
        >>> loss = x[0] ** 2 * x[1]
        >>> [t.tolist() for t in hvp(loss, [x], [torch.tensor([1.0, 0.0], dtype=torch.float64)])]
        [[4.0, 2.0]]
    """
    return HessianOperator(loss, params).matvec(vectors)


ParamTree = Mapping[str, Tensor] | tuple[Tensor, ...]


def functional_hvp(
    loss_fn: Callable[[ParamTree], Tensor], params: ParamTree, vectors: ParamTree
) -> ParamTree:
    r"""Forward-over-reverse Hessian-vector product with ``torch.func``.

    Computes :math:`H v = \frac{d}{d\epsilon} \nabla L(\theta + \epsilon v)|_{0}`
    as ``jvp(grad(loss_fn), (params,), (vectors,))``.  ``params`` and ``vectors``
    are the same pytree (a dict of name -> tensor, or a tuple of tensors), as
    ``torch.func.functional_call`` takes them; see :func:`module_loss_fn`.

    Args:
        loss_fn: pure function of the parameter pytree returning the scalar loss.
        params: the point :math:`\theta` (a pytree of tensors).
        vectors: :math:`v`, the same pytree as ``params``.

    Example:
        On :math:`L(x) = \tfrac12 x^\top A x`, :math:`Hv = Av`:

        >>> import torch
        >>> from hpo2.curvature import functional_hvp
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> loss_fn = lambda p: 0.5 * p["x"] @ A @ p["x"]
        >>> x = {"x": torch.zeros(2, dtype=torch.float64)}
        >>> functional_hvp(loss_fn, x, {"x": torch.tensor([1.0, 2.0], dtype=torch.float64)})["x"].tolist()
        [4.0, 7.0]
    """
    if isinstance(params, Mapping):
        if not isinstance(vectors, Mapping) or set(params) != set(vectors):
            raise ValueError(
                f"vectors has keys {sorted(vectors)} but params has keys {sorted(params)}"
            )
        check_vectors([vectors[k] for k in params], list(params.values()))
    elif isinstance(vectors, Mapping):
        raise ValueError("vectors is a mapping but params is a tuple; pass both in the same form")
    else:
        check_vectors(list(vectors), list(params))
    hv = torch.func.jvp(torch.func.grad(loss_fn), (params,), (vectors,))[1]
    return hv


def module_loss_fn(
    model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor, targets: Tensor
) -> Callable[[Mapping[str, Tensor]], Tensor]:
    """A pure function ``params -> loss`` for ``model`` on one batch (for ``torch.func``).

    Buffers are held fixed at their current values.
    """
    buffers = dict(model.named_buffers())

    def loss_of(params: Mapping[str, Tensor]) -> Tensor:
        outputs = torch.func.functional_call(model, {**buffers, **params}, (inputs,))
        return loss_fn(outputs, targets)

    return loss_of


class GGNOperator(CurvatureOperator):
    r"""Generalized Gauss-Newton matrix :math:`G = J^\top H_L J` (Schraudolph 2002).

    Args:
        outputs: model outputs :math:`z` still attached to the graph of ``params``.
        params: tensors the Jacobian is taken with respect to.
        output_hessian: :math:`u \mapsto H_L u` on tensors shaped like ``outputs``
            (from :func:`hpo2.curvature.output_hessians.output_hessian_for`).

    Each product costs two backward passes through the network's graph (one for
    :math:`Jv` through the retained vector-Jacobian graph, one for :math:`J^\top`).

    Example:
        For a linear model and the mean squared error, :math:`G = \tfrac2N X^\top X`:

        >>> import torch
        >>> from hpo2.curvature import GGNOperator, mse_output_hessian
        >>> _ = torch.manual_seed(0)
        >>> X = torch.randn(5, 3, dtype=torch.float64)
        >>> w = torch.randn(3, dtype=torch.float64, requires_grad=True)
        >>> outputs = X @ w
        >>> G = GGNOperator(outputs, [w], mse_output_hessian(outputs))
        >>> v = torch.randn(3, dtype=torch.float64)
        >>> torch.allclose(G.matvec([v])[0], 2 / 5 * X.T @ X @ v)
        True
    """

    def __init__(self, outputs: Tensor, params: Iterable[Tensor], output_hessian: OutputHessian) -> None:
        if not isinstance(outputs, Tensor) or outputs.grad_fn is None:
            raise ValueError("outputs must be a tensor attached to the autograd graph of params")
        plist = as_param_list(params)
        super().__init__(plist)
        self.outputs = outputs
        self.output_hessian = output_hessian
        # u -> J^T u, kept with its graph so that d(J^T u)/du applied to v gives J v.
        self._dummy = torch.zeros_like(outputs, requires_grad=True)
        jt_dummy = torch.autograd.grad(outputs, plist, grad_outputs=self._dummy, create_graph=True, allow_unused=True)
        self._used = [i for i, g in enumerate(jt_dummy) if g is not None]
        self._jt_dummy = [jt_dummy[i] for i in self._used]
        self.setup_cost = 1.0  # the backward pass above, with its graph kept

    def jvp(self, vectors: Sequence[Tensor]) -> Tensor:
        """Return :math:`J v`, shaped like the outputs."""
        if not self._used:
            return torch.zeros_like(self.outputs)
        (jv,) = torch.autograd.grad(
            self._jt_dummy, self._dummy, grad_outputs=[vectors[i] for i in self._used], retain_graph=True
        )
        return jv

    def vjp(self, u: Tensor) -> list[Tensor]:
        """Return :math:`J^\\top u`, one tensor per parameter."""
        used_params = [self.params[i] for i in self._used]
        jtu = torch.autograd.grad(self.outputs, used_params, grad_outputs=u, retain_graph=True, allow_unused=True)
        out = [torch.zeros_like(p) for p in self.params]
        for i, g in zip(self._used, jtu):
            if g is not None:
                out[i] = g
        return out

    def _matvec(self, vectors: list[Tensor]) -> list[Tensor]:
        return self.vjp(self.output_hessian(self.jvp(vectors)))


def ggn_vector_product(
    outputs: Tensor,
    params: Iterable[Tensor],
    output_hessian: OutputHessian,
    vectors: Sequence[Tensor],
) -> list[Tensor]:
    """One product :math:`G v`; build a :class:`GGNOperator` for repeated products."""
    return GGNOperator(outputs, params, output_hessian).matvec(vectors)


class DampedOperator(CurvatureOperator):
    r"""Tikhonov-damped curvature :math:`(C + \lambda I)`, as CG solves it in
    Newton-CG and Hessian-free (Martens 2010, sec. 4.1).

    Args:
        base: the curvature operator :math:`C` (its product count includes these products).
        damping: :math:`\lambda \ge 0`.

    Example:
        For :math:`L = \|x\|^2` (:math:`H = 2I`) and :math:`\lambda = 0.5`,
        :math:`(H + \lambda I) v = 2.5 v`:

        >>> import torch
        >>> from hpo2.curvature import DampedOperator, HessianOperator
        >>> x = torch.ones(2, dtype=torch.float64, requires_grad=True)
        >>> damped = DampedOperator(HessianOperator((x**2).sum(), [x]), damping=0.5)
        >>> damped.mv(torch.tensor([1.0, -1.0], dtype=torch.float64)).tolist()
        [2.5, -2.5]
    """

    def __init__(self, base: CurvatureOperator, damping: float) -> None:
        super().__init__(base.params)
        self.base = base
        self.damping = float(damping)

    def _matvec(self, vectors: list[Tensor]) -> list[Tensor]:
        self.base.n_products += 1
        return [cv + self.damping * v for cv, v in zip(self.base._matvec(vectors), vectors)]
