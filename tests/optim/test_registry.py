"""The new methods through the registry: exported YAML configs round-trip, the
refresh interval is searchable, bad settings name the field."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

from hpo2.optim import (
    KFAC,
    REGISTRY,
    SOAP,
    BatchClosure,
    HessianFree,
    MuonWithAdamW,
    SaddleFreeNewton,
    SettingsError,
    Shampoo,
    from_config,
)
from tests.problems import classification_mlp

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
    with pytest.raises(
        SettingsError, match=r"optimizer.settings.inverse_update_every = 0: Input should be greater than or equal to 1"
    ):
        from_config({"name": "kfac", "settings": {"inverse_update_every": 0}}, params)
    with pytest.raises(SettingsError, match=r"optimizer.settings.fisher = 'exact'"):
        from_config({"name": "kfac", "settings": {"fisher": "exact"}}, params)
    with pytest.raises(
        SettingsError,
        match=r"unknown setting\(s\) precondition_freq \(did you mean 'precondition_frequency'\?\); allowed: lr",
    ):
        from_config({"name": "soap", "settings": {"precondition_freq": 5}}, params)

def test_kfac_sampled_fisher_refuses_a_loss_without_a_likelihood():
    model = nn.Linear(3, 2).double()
    closure_loss = nn.L1Loss()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="fisher='sampled' needs the loss to be one of CrossEntropyLoss"):
        KFAC(model.parameters()).step(BatchClosure(model, closure_loss, x, y))
    KFAC(model.parameters(), fisher="empirical").step(BatchClosure(model, closure_loss, x, y))


def test_from_config_builds_from_dict_yaml_json_and_name(tmp_path):
    model = classification_mlp()
    opt = from_config({"optimizer": {"name": "hessian_free", "settings": {"damping": 0.3}}}, model.parameters())
    assert isinstance(opt, HessianFree) and opt.settings.damping == 0.3
    (tmp_path / "best.yaml").write_text(
        yaml.safe_dump({"task": {"name": "x"}, "optimizer": {"name": "sophia", "settings": {"rho": 0.1}}})
    )
    assert from_config(tmp_path / "best.yaml", model.parameters()).settings.rho == 0.1
    (tmp_path / "o.json").write_text(json.dumps({"name": "lbfgs", "settings": {"history_size": 7}}))
    assert from_config(str(tmp_path / "o.json"), model.parameters()).settings.history_size == 7
    adam = from_config("adam", model.parameters())
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["lr"] == 1e-3


def test_from_config_errors_name_the_field_and_what_is_allowed(tmp_path):
    params = list(classification_mlp().parameters())
    with pytest.raises(
        SettingsError,
        match=r"optimizer.name: 'newton' is not a known optimizer \(did you mean 'newton_cg'\?\); "
        r"allowed: newton_cg, hessian_free",
    ):
        from_config({"name": "newton"}, params)
    with pytest.raises(
        SettingsError,
        match=r"unknown setting\(s\) dampening \(did you mean 'damping'\?\); allowed: batch_size, lr, damping",
    ):
        from_config({"name": "newton_cg", "settings": {"dampening": 1}}, params)
    with pytest.raises(
        SettingsError, match=r"optimizer.settings.cg_max_iter = 0: Input should be greater than or equal to 1"
    ):
        from_config({"name": "newton_cg", "settings": {"cg_max_iter": 0}}, params)
    (tmp_path / "bad.yaml").write_text("optimizer: [unclosed")
    with pytest.raises(SettingsError, match="not valid YAML: .*bad.yaml, line 1, column 21"):
        from_config(tmp_path / "bad.yaml", params)


def test_every_registered_optimizer_declares_a_search_space_containing_its_defaults():
    for name, spec in REGISTRY.items():
        space, defaults = spec.search_space(), spec.paper_defaults()
        assert space, name
        for setting, dim in space.items():
            value = defaults[setting]
            if hasattr(dim, "choices"):
                assert value in dim.choices or dim.when is not None, (name, setting)
            else:
                assert dim.low <= value <= dim.high, (name, setting, value)


RENAMED = [(name, old, new) for name, spec in REGISTRY.items() for old, new in spec.settings.renamed.items()]


def test_the_settings_renamed_for_one_spelling_are_listed() -> None:
    """eps everywhere, adam_ for every method's Adam part (K-FAC's fallback, Shampoo's graft, Muon's AdamW)."""
    assert {(name, old) for name, old, _ in RENAMED} == {
        ("shampoo", "epsilon"), ("shampoo", "graft_beta2"), ("shampoo", "graft_eps"),
        ("kfac", "fallback_lr"), ("kfac", "fallback_beta1"), ("kfac", "fallback_beta2"), ("kfac", "fallback_eps"),
        ("muon", "adamw_lr"), ("muon", "adamw_beta1"), ("muon", "adamw_beta2"), ("muon", "adamw_eps"),
        ("muon", "adamw_weight_decay"),
    }


@pytest.mark.parametrize(("name", "old", "new"), RENAMED)
def test_a_saved_config_with_a_renamed_setting_gets_one_line_naming_the_new_one(name: str, old: str, new: str) -> None:
    settings = REGISTRY[name].settings
    assert new in settings.model_fields and old not in settings.model_fields
    value = settings.model_fields[new].default
    with pytest.raises(SettingsError) as caught:
        from_config({"name": name, "settings": {old: value}}, classification_mlp())
    owner = settings.__name__.removesuffix("Settings")
    assert str(caught.value) == (
        f"optimizer.settings.{old} = {value!r}: {owner}'s {old} was renamed {new}; write {new}: {value!r}"
    )
