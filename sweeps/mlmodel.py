"""The pyfunc model class under the name it had before issue 15 (it lives in sweeps/tracking/pyfunc.py now).

A registered version stores its python_model pickled by reference: versions promoted before the move name
`sweeps.mlmodel.AdapterModel`, and this module keeps them loadable with `mlflow.pyfunc.load_model`.
"""

from sweeps.tracking.pyfunc import AdapterModel

__all__ = ["AdapterModel"]
