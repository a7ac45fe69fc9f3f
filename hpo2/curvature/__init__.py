"""The Hessian-vector-product core everything second-order in hpo2 builds on."""

from hpo2.curvature.diagonal import gauss_newton_bartlett_diagonal, hutchinson_diagonal, rademacher_like
from hpo2.curvature.layers import LayerRecord, LayerStatistics, per_sample_grad_squares, per_sample_scale
from hpo2.curvature.output_hessians import (
    bce_with_logits_output_hessian,
    cross_entropy_output_hessian,
    generic_output_hessian,
    mse_output_hessian,
    output_hessian_for,
)
from hpo2.curvature.products import (
    CurvatureOperator,
    DampedOperator,
    GGNOperator,
    HessianOperator,
    functional_hvp,
    ggn_vector_product,
    grads_or_zeros,
    hvp,
    module_loss_fn,
)
from hpo2.curvature.spectrum import (
    MatrixOperator,
    hutchinson_trace,
    lanczos,
    spectral_density,
    top_eigenvalues,
)

__all__ = [
    "grads_or_zeros",
    "CurvatureOperator",
    "DampedOperator",
    "GGNOperator",
    "HessianOperator",
    "LayerRecord",
    "LayerStatistics",
    "MatrixOperator",
    "bce_with_logits_output_hessian",
    "cross_entropy_output_hessian",
    "functional_hvp",
    "gauss_newton_bartlett_diagonal",
    "generic_output_hessian",
    "ggn_vector_product",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hvp",
    "lanczos",
    "module_loss_fn",
    "mse_output_hessian",
    "output_hessian_for",
    "per_sample_grad_squares",
    "per_sample_scale",
    "rademacher_like",
    "spectral_density",
    "top_eigenvalues",
]
