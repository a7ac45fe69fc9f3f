"""Studies: an Optuna study over optimizers and their settings, run, tracked and resumed.

The names a user's code needs, imported on first use (PEP 562), so that ``import hpo2.study.config``
-- the study-file schema -- stays free of Optuna and MLflow:

* :class:`StudyConfig`, :func:`load_study_config` -- the study file (:mod:`hpo2.study.config`);
* :class:`StudyRunner` -- creates or resumes a study and runs its trials (:mod:`hpo2.study.runner`);
* :class:`StudyObserver` -- what a runner tells about its progress (:mod:`hpo2.study.observer`);
* :class:`SearchSpace` -- the optimizers and their settings as Optuna params (:mod:`hpo2.study.space`);
* :data:`SAMPLERS`, :class:`SamplerSpec` -- the samplers a study may name (:mod:`hpo2.study.sampler_registry`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpo2.study.config import StudyConfig, load_study_config
    from hpo2.study.observer import StudyObserver
    from hpo2.study.runner import StudyRunner
    from hpo2.study.sampler_registry import SAMPLERS, SamplerSpec
    from hpo2.study.space import SearchSpace

#: each public name and the module that defines it
_HOMES = {
    "StudyConfig": "config",
    "load_study_config": "config",
    "StudyRunner": "runner",
    "StudyObserver": "observer",
    "SearchSpace": "space",
    "SAMPLERS": "sampler_registry",
    "SamplerSpec": "sampler_registry",
}

__all__ = ["SAMPLERS", "SamplerSpec", "SearchSpace", "StudyConfig", "StudyObserver", "StudyRunner",
           "load_study_config"]


def __getattr__(name: str) -> Any:
    """The public names above, imported when first asked for (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'hpo2.study' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hpo2.study.{_HOMES[name]}"), name)
