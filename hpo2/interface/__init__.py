"""What a person sees and uses: the CLI (:mod:`~hpo2.interface.cli`), its tables and
live progress, the study and suite reports, the MLflow dashboard launcher, and the
Python entry point :func:`hpo2.run_study` (:mod:`~hpo2.interface.api`)."""
