"""After-training half of sparsepipe: sparse formats, ONNX export, validation, gate, pipeline and CLI.

Everything here works on any frozen PyTorch model; only the pipeline runner uses `compress`.
"""
