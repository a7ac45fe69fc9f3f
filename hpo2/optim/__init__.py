"""Second-order optimizers on the HVP core, each a ``torch.optim.Optimizer``."""

from hpo2.optim.adahessian import AdaHessian, AdaHessianSettings
from hpo2.optim.base import CurvatureOptimizer
from hpo2.optim.closure import BatchClosure, BatchEvaluation
from hpo2.optim.hessian_free import HessianFree, HessianFreeSettings
from hpo2.optim.lbfgs import LBFGS, LBFGSSettings
from hpo2.optim.newton_cg import NewtonCG, NewtonCGSettings
from hpo2.optim.sam import SAM, SAMSettings
from hpo2.optim.registry import REGISTRY, OptimizerSpec, from_config, get_spec, parse_optimizer_config
from hpo2.optim.settings import Choice, FloatRange, IntRange, OptimizerSettings, SettingsError
from hpo2.optim.sophia import Sophia, SophiaSettings
from hpo2.optim.svrg import SVRG, SVRGSettings

__all__ = [
    "REGISTRY",
    "SAM",
    "SAMSettings",
    "SVRG",
    "SVRGSettings",
    "LBFGS",
    "AdaHessian",
    "AdaHessianSettings",
    "BatchClosure",
    "BatchEvaluation",
    "Choice",
    "CurvatureOptimizer",
    "FloatRange",
    "HessianFree",
    "HessianFreeSettings",
    "IntRange",
    "LBFGSSettings",
    "NewtonCG",
    "NewtonCGSettings",
    "OptimizerSettings",
    "OptimizerSpec",
    "SettingsError",
    "Sophia",
    "SophiaSettings",
    "from_config",
    "get_spec",
    "parse_optimizer_config",
]
