"""MLflow "models from code" entry: the registered e2essl models load through this file, no pickle.

MLflow executes this file when a registered model is loaded (``mlflow.pyfunc.load_model``); the
weights come from the model's ``weights`` artifact (safetensors). Never imported by the package.
"""

import mlflow
import numpy as np
from mlflow.models import set_model


class E2EModel(mlflow.pyfunc.PythonModel):
    """Classifier: images (N, H, W, C) -> quark probability (N,). Encoder: images -> features
    (N, 32). Generator: latent vectors (N, latent_dim) -> images (N, H, W, C)."""

    def load_context(self, context):
        from e2essl.serving import Predictor

        self.predictor = Predictor.from_file(context.artifacts["weights"])

    # np.ndarray: MLflow checks inputs against the logged tensor signature, not the type hint.
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        return self.predictor(model_input)


set_model(E2EModel())
