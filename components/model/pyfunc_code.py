"""The model file of a registered version (MLflow "models from code"): MLflow keeps this file with
the version and runs it at load time to build the model, instead of unpickling an instance.

Why from code: the pickled instance held nothing but its class (`KoreanWritingModel` has no
state until `load_context`), while a pickle ties the version to the Python and cloudpickle that
wrote it; a file of two statements loads under any Python that has the shipped code
(`registry/logged_model.SHIPPED_MODULES`, put on sys.path by MLflow before this file runs).
"""

import mlflow

from selfguided.components.model.pyfunc import KoreanWritingModel

mlflow.models.set_model(KoreanWritingModel())
