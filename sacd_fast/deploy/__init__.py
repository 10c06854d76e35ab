"""Deployment: the fast model, ONNX/OpenVINO export and one inferencer for every format."""
