"""The DQE runtime: NIfTI decoding, validated cases, the ONNX Runtime engine, gRPC server and client, CLI.

Nothing in this package imports torch.
"""

__version__ = "0.1.0"
