"""Second-order optimizers on the HVP core, each a ``torch.optim.Optimizer``."""

from hpo2.errors import SettingsError
from hpo2.optim.adahessian import AdaHessian, AdaHessianSettings
from hpo2.optim.base import CurvatureOptimizer, LoopOptimizer
from hpo2.optim.closure import BatchClosure, BatchEvaluation, BatchStream, StreamingClosure
from hpo2.optim.costs import CostMeter
from hpo2.optim.hessian_free import HessianFree, HessianFreeSettings
from hpo2.optim.kfac import KFAC, KFACSettings
from hpo2.optim.lbfgs import LBFGS, LBFGSSettings
from hpo2.optim.muon import MuonSettings, MuonWithAdamW
from hpo2.optim.newton_cg import NewtonCG, NewtonCGSettings
from hpo2.optim.registry import (
    REGISTRY,
    OptimizerSpec,
    from_config,
    get_spec,
    parse_optimizer_config,
    reuse_notes,
    schedule_from_config,
)
from hpo2.optim.saddle_free import SaddleFreeNewton, SaddleFreeNewtonSettings
from hpo2.optim.sam import SAM, SAMSettings
from hpo2.optim.schedules import ScheduleSettings, WarmupDecay, build_schedule
from hpo2.optim.settings import Choice, FloatRange, IntRange, OptimizerSettings
from hpo2.optim.shampoo import Shampoo, ShampooSettings
from hpo2.optim.soap import SOAP, SOAPSettings
from hpo2.optim.sophia import Sophia, SophiaSettings
from hpo2.optim.stepping import take_snapshot, take_step
from hpo2.optim.svrg import SVRG, SVRGSettings

__all__ = [
    "CostMeter",
    "REGISTRY",
    "SAM",
    "SAMSettings",
    "ScheduleSettings",
    "WarmupDecay",
    "build_schedule",
    "reuse_notes",
    "schedule_from_config",
    "SVRG",
    "SVRGSettings",
    "LBFGS",
    "AdaHessian",
    "AdaHessianSettings",
    "BatchClosure",
    "BatchEvaluation",
    "BatchStream",
    "Choice",
    "CurvatureOptimizer",
    "FloatRange",
    "HessianFree",
    "HessianFreeSettings",
    "IntRange",
    "KFAC",
    "KFACSettings",
    "LBFGSSettings",
    "LoopOptimizer",
    "MuonSettings",
    "MuonWithAdamW",
    "NewtonCG",
    "NewtonCGSettings",
    "OptimizerSettings",
    "OptimizerSpec",
    "SOAP",
    "SOAPSettings",
    "SaddleFreeNewton",
    "SaddleFreeNewtonSettings",
    "SettingsError",
    "Shampoo",
    "ShampooSettings",
    "Sophia",
    "StreamingClosure",
    "SophiaSettings",
    "from_config",
    "get_spec",
    "parse_optimizer_config",
    "take_snapshot",
    "take_step",
]
