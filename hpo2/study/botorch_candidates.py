r"""hpo2's candidates function for optuna-integration's BoTorchSampler (one objective).

Optuna-integration's default (``logei_candidates_func``) stalls on Hartmann-6:
regret 0.020 after 50 evaluations and still 0.020 after 100, where Optuna's
GPSampler reaches 6.6e-5.  Two causes, each measured (BENCHMARKS.md):

1. **Inferred noise.**  BoTorch's ``SingleTaskGP`` infers a homoskedastic noise
   variance (prior LogNormal(-4, 1) on standardized outcomes).  On a deterministic
   objective it settled at ~4e-3 of the outcome variance (noise standard deviation
   ~6% of the spread), so the model explains every improvement smaller than that
   as noise, and analytic LogEI with ``best_f`` = the best *observed* value (an
   upward-noisy maximum under that model) finds no point worth trying near the
   incumbent.  With ``seeds: fixed`` hpo2's trials are deterministic, so the GP there
   has a known tiny noise, :math:`\sigma_n^2 = 2\cdot 10^{-6}\,\mathrm{Var}(y)` (the
   ``deterministic_objective`` view that Optuna's GP also offers), which keeps the
   kernel matrix well conditioned without hiding improvements.
2. **No restart near the incumbent.**  ``optimize_acqf`` starts its L-BFGS-B
   restarts from the best of ``raw_samples`` uniform points (Boltzmann sampling on
   the acquisition).  Once the model is sharp around the optimum, the region worth
   refining is a tiny neighbourhood of the incumbent that 512 uniform points in
   6-d rarely hit.  Here ``num_local`` extra restarts start at Gaussian
   perturbations of the best observed point (standard deviation ``local_scale`` of
   the unit cube), as Optuna's GPSampler seeds its local search with the best
   trial.

**Noisy objectives** (``noisy=True``, a study with ``seeds: per_trial``: each trial
trains with its own seed, so a value is the seed-mean plus seed noise).  Then the
noise is real and is modelled: the GP infers its variance (BoTorch's default
likelihood, as in 1. above), and the acquisition is
:math:`\mathrm{qLogNEI}` (``qLogNoisyExpectedImprovement``: the improvement over the
best *latent* value at the observed points, integrated jointly over the posterior
instead of measured from the best noisy observation; Letham et al., "Constrained
Bayesian optimization with noisy experiments", Bayesian Analysis 2019; Ament et
al. 2023 for the log form).  The local restarts start near the point of best
posterior mean, not the best observation (an upward-noisy one).

**Pending points** (``pending_x``: the settings of running trials, passed by the
sampler).  They enter the acquisition as ``X_pending``: it is the joint
improvement of the candidate *and* the pending points, estimated by quasi-Monte
Carlo over their joint posterior, so a candidate next to a pending point gains
nothing from it and parallel workers spread out (with ``seeds: fixed``,
:math:`\mathrm{qLogEI}` with the best observed value; with ``per_trial``,
:math:`\mathrm{qLogNEI}` takes them as baseline points and measures the
improvement over them).

The model: a GP with BoTorch's defaults (``SingleTaskGP``), inputs scaled to the
unit cube (log-scale settings are already in log space: Optuna's transform does
that), outcomes standardized; the acquisition: analytic
:math:`\log \mathrm{EI}(x) = \log \mathbb{E}[\max(f(x) - y^*, 0)]` (Ament et al.,
"Unexpected improvements to expected improvement for Bayesian optimization",
NeurIPS 2023).

No warm start of the hyperparameters: starting each marginal-likelihood fit from
the previous one's optimum was tried and left a Hartmann-6 run stuck at regret
0.14 where fresh fits reached 0.005 (one seed each, so weak evidence): the fit can
keep the lengthscales of an early, misleading model.
"""

from __future__ import annotations

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.analytic import LogExpectedImprovement
from botorch.acquisition.logei import qLogExpectedImprovement, qLogNoisyExpectedImprovement
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from botorch.optim import optimize_acqf
from botorch.optim.initializers import gen_batch_initial_conditions
from botorch.sampling import SobolQMCNormalSampler
from botorch.utils.transforms import normalize, unnormalize
from gpytorch.mlls import ExactMarginalLogLikelihood

#: the GP's noise variance as a share of the outcome variance (a deterministic objective)
NOISE_SHARE = 2e-6
#: quasi-Monte Carlo samples of the joint posterior for the q-acquisitions (Optuna's qLogEI also takes 128)
MC_SAMPLES = 128


class LogEICandidates:
    """Callable with optuna-integration's ``candidates_func`` signature (see the module docstring);
    ``noisy``: the objective is noisy (infer the noise, acquire by qLogNEI)."""

    def __init__(self, num_restarts: int = 10, raw_samples: int = 512, num_local: int = 5,
                 local_scale: float = 0.02, noisy: bool = False) -> None:
        self.noisy = noisy
        self.num_restarts = num_restarts
        self.raw_samples = raw_samples
        self.num_local = num_local
        self.local_scale = local_scale

    def fit(self, train_x: torch.Tensor, train_y: torch.Tensor) -> SingleTaskGP:
        """The GP on unit-cube inputs ``train_x`` and raw outcomes ``train_y`` (larger is better), fitted by
        marginal likelihood: with the known noise variance ``NOISE_SHARE * Var(y)``, or, when ``noisy``, with
        the noise variance inferred too."""
        if self.noisy:
            model = SingleTaskGP(train_x, train_y, outcome_transform=Standardize(m=1))
        else:
            variance = train_y.var() if train_y.numel() > 1 else torch.ones((), dtype=train_y.dtype)
            noise = torch.full_like(train_y, NOISE_SHARE) * variance.clamp_min(1e-12)
            model = SingleTaskGP(train_x, train_y, train_Yvar=noise, outcome_transform=Standardize(m=1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        return model

    def acquisition(self, model: SingleTaskGP, x: torch.Tensor, y: torch.Tensor,
                    pending: torch.Tensor | None) -> AcquisitionFunction:
        """What the candidate maximises (module docstring): analytic LogEI (deterministic, nothing
        pending), qLogEI (deterministic, with ``pending`` unit-cube points) or qLogNEI (noisy)."""
        sampler = SobolQMCNormalSampler(sample_shape=torch.Size([MC_SAMPLES]))
        if self.noisy:
            return qLogNoisyExpectedImprovement(model, X_baseline=x, sampler=sampler, X_pending=pending)
        if pending is None:
            return LogExpectedImprovement(model=model, best_f=y.max())
        return qLogExpectedImprovement(model, best_f=y.max(), sampler=sampler, X_pending=pending)

    def __call__(
        self,
        train_x: torch.Tensor,
        train_obj: torch.Tensor,
        train_con: torch.Tensor | None,
        bounds: torch.Tensor,
        pending_x: torch.Tensor | None,
    ) -> torch.Tensor:
        if train_obj.size(-1) != 1 or train_con is not None:
            raise ValueError("hpo2's BoTorch candidates function takes one objective and no constraints")
        x = normalize(train_x, bounds=bounds)
        model = self.fit(x, train_obj)
        pending = None if pending_x is None or not len(pending_x) else normalize(pending_x, bounds=bounds)
        acquisition = self.acquisition(model, x, train_obj, pending)
        unit = torch.zeros_like(bounds)
        unit[1] = 1
        starts = gen_batch_initial_conditions(acquisition, unit, q=1, num_restarts=self.num_restarts,
                                              raw_samples=self.raw_samples)
        with torch.no_grad():  # the best point by the model: the best observation is upward-noisy when noisy
            incumbent = x[model.posterior(x).mean.squeeze(-1).argmax()]
        local = (incumbent + self.local_scale * torch.randn(self.num_local, 1, x.size(-1), dtype=x.dtype)).clamp(0, 1)
        candidates, _ = optimize_acqf(acquisition, bounds=unit, q=1, num_restarts=self.num_restarts + self.num_local,
                                      batch_initial_conditions=torch.cat([starts, local]),
                                      options={"batch_limit": 5, "maxiter": 200})
        return unnormalize(candidates.detach(), bounds=bounds)
