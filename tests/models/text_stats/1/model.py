import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            text = pb_utils.get_input_tensor_by_name(r, "text").as_numpy()
            length = np.vectorize(len, otypes=[np.int32])(text) if text.size else np.zeros(text.shape, np.int32)
            upper = np.vectorize(lambda b: b.upper(), otypes=[object])(text) if text.size else text
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("length", length.astype(np.int32)),
                pb_utils.Tensor("upper", upper.astype(np.object_)),
            ]))
        return out
