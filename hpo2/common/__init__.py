"""What every layer may use and that knows nothing of training: database URLs
(:mod:`~hpo2.common.databases`), secret masking (:mod:`~hpo2.common.redact`) and the
bounded YAML reader (:mod:`~hpo2.common.yaml_loader`)."""
