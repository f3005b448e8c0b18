"""Fraud scoring: a 16-32-16-1 MLP in numpy, weights from a fixed seed.

Importable outside Triton (tests compute the reference answer with ``forward``).
"""
import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported by tests for the reference computation
    pb_utils = None

SEED = 20261125
N_FEATURES = 16


def weights(seed=SEED):
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((N_FEATURES, 32)).astype(np.float32) / 4
    b1 = rng.standard_normal(32).astype(np.float32) / 10
    w2 = rng.standard_normal((32, 16)).astype(np.float32) / 6
    b2 = rng.standard_normal(16).astype(np.float32) / 10
    w3 = rng.standard_normal((16, 1)).astype(np.float32) / 4
    b3 = np.zeros(1, dtype=np.float32)
    return w1, b1, w2, b2, w3, b3


def forward(x, params):
    w1, b1, w2, b2, w3, b3 = params
    h = np.maximum(x @ w1 + b1, 0.0)
    h = np.maximum(h @ w2 + b2, 0.0)
    z = h @ w3 + b3
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


class TritonPythonModel:
    def initialize(self, args):
        self.params = weights()

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "features").as_numpy()
            score = forward(x.astype(np.float32), self.params)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("score", score)]))
        return responses
