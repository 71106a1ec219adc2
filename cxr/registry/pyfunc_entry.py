"""The file MLflow runs to build the logged pyfunc when it loads the model (MLflow "models from code").

Nothing is pickled: the model is this file, the `cxr` modules it imports (shipped as `code_paths`)
and the saved network and metadata (its artifacts).
"""

from mlflow.models import set_model

from cxr.registry.pyfunc_model import PneumoniaModel

set_model(PneumoniaModel())
