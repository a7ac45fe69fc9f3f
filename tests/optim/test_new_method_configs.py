"""The new methods through the registry: exported YAML configs round-trip, the
refresh interval is searchable, bad settings name the field."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from hpo2.errors import SettingsError
from hpo2.optim import KFAC, REGISTRY, SOAP, BatchClosure, MuonWithAdamW, SaddleFreeNewton, Shampoo, from_config

NEW = {
    "kfac": (KFAC, "inverse_update_every"),
    "shampoo": (Shampoo, "precondition_frequency"),
    "soap": (SOAP, "precondition_frequency"),
    "saddle_free_newton": (SaddleFreeNewton, "refresh_every"),
    "muon": (MuonWithAdamW, None),
}

@pytest.mark.parametrize("name", list(NEW))
def test_exported_defaults_round_trip_through_yaml_and_the_refresh_knob_is_searched(name, tmp_path):
    cls, knob = NEW[name]
    spec = REGISTRY[name]
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump({"optimizer": {"name": name, "settings": spec.paper_defaults()}}))
    opt = from_config(path, nn.Linear(3, 2).parameters())
    assert isinstance(opt, cls)
    assert opt.settings.model_dump() == spec.paper_defaults()
    if knob is not None:
        assert knob in spec.search_space()

def test_bad_settings_name_the_field_and_the_rule():
    params = list(nn.Linear(3, 2).parameters())
    with pytest.raises(SettingsError, match=r"optimizer.settings.inverse_update_every = 0: Input should be greater than or equal to 1"):
        from_config({"name": "kfac", "settings": {"inverse_update_every": 0}}, params)
    with pytest.raises(SettingsError, match=r"optimizer.settings.fisher = 'exact'"):
        from_config({"name": "kfac", "settings": {"fisher": "exact"}}, params)
    with pytest.raises(SettingsError, match=r"unknown setting\(s\) precondition_freq \(did you mean 'precondition_frequency'\?\); allowed: lr"):
        from_config({"name": "soap", "settings": {"precondition_freq": 5}}, params)

def test_kfac_sampled_fisher_refuses_a_loss_without_a_likelihood():
    model = nn.Linear(3, 2).double()
    closure_loss = nn.L1Loss()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="fisher='sampled' needs the loss to be one of CrossEntropyLoss"):
        KFAC(model.parameters()).step(BatchClosure(model, closure_loss, x, y))
    KFAC(model.parameters(), fisher="empirical").step(BatchClosure(model, closure_loss, x, y))
