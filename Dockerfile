# syntax=docker/dockerfile:1
# sslbench on a GPU box: pretraining, probes, fine-tuning and Detectron2 detection transfer.
#
#   docker build -t sslbench .
#   docker run --gpus all --ipc=host -v /path/ckpts:/ckpts -v /path/datasets:/datasets \
#       -v /path/results:/results sslbench suite /ckpts/model.pth \
#       --suite paper --out /results
#
# Versions: torch/torchvision must equal the pins in pyproject.toml (tests/test_dockerfile.py checks it,
# and installing the package below would fail on a mismatch). The CUDA toolkit matches the CUDA build
# of that torch release on PyPI (2.14.1: CUDA 13.0), so Detectron2's extensions compile against it.

ARG CUDA_VERSION=13.0.1
ARG UBUNTU_VERSION=24.04

# ---- build: compile Detectron2 into a wheel -----------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu${UBUNTU_VERSION} AS build

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG DETECTRON2_COMMIT=02b5c4e295e990042a714712c21dc79b731e8833
# Ampere (A100: 8.0, A10/3090: 8.6) and Hopper (H100/H200: 9.0)
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;9.0"

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev git ninja-build build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" wheel setuptools
ENV TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} FORCE_CUDA=1 MAX_JOBS=8
RUN git clone --filter=blob:none https://github.com/facebookresearch/detectron2.git /src/detectron2 \
    && git -C /src/detectron2 checkout ${DETECTRON2_COMMIT} \
    && pip wheel --no-deps --no-build-isolation -w /wheels /src/detectron2

# ---- runtime --------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU_VERSION} AS runtime

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv git \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
COPY --from=build /wheels /wheels
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sslbench ./sslbench
RUN pip install /wheels/detectron2-*.whl && pip install ".[gpu,detection,cluster,vit]" && rm -rf /wheels

RUN useradd --create-home --uid 1000 sslbench && mkdir -p /results /ckpts /datasets \
    && chown sslbench /results /app
USER sslbench
ENV DETECTRON2_DATASETS=/datasets
ENTRYPOINT ["sslbench"]
CMD ["--help"]
