"""``python -m hpo2``: the ``hpo2`` command (workers are started this way, with the interpreter that runs the study)."""

from hpo2.interface.cli import app

if __name__ == "__main__":
    app()
