"""Score transactions through the mesh with the unmodified Triton client.

    python examples/fraud/client.py [--url 127.0.0.1:8001] [--http]
"""
import argparse

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", default=None, help="gateway address (default 127.0.0.1:8001 gRPC / :8000 HTTP)")
    p.add_argument("--http", action="store_true", help="use the HTTP/REST protocol")
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args()
    if args.http:
        import tritonclient.http as tc
        url = args.url or "127.0.0.1:8000"
    else:
        import tritonclient.grpc as tc
        url = args.url or "127.0.0.1:8001"
    client = tc.InferenceServerClient(url)
    x = np.random.default_rng(7).standard_normal((args.batch, 16)).astype(np.float32)
    inp = tc.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("fraud", [inp], outputs=[tc.InferRequestedOutput("score")])
    for i, s in enumerate(result.as_numpy("score").ravel()):
        print(f"transaction {i}: fraud score {s:.4f}")


if __name__ == "__main__":
    main()
