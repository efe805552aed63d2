# gpunn on a CUDA GPU: CuPy (CUDA 12 wheels), Fashion-MNIST inside, trains model4 by default.
#   docker build -t gpunn .
#   docker run --rm --gpus all -v "$PWD/runs:/app/runs" gpunn
#   docker run --rm --gpus all gpunn gpunn train --model cnn-bn --epochs 10
FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH MPLBACKEND=Agg
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
 && (apt-get install -y --no-install-recommends dataset-fashion-mnist \
     || echo "dataset-fashion-mnist not packaged here: downloading it below") \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gpunn ./gpunn
COPY kernels ./kernels
COPY examples ./examples
RUN pip install ".[cuda12]" \
 && (gpunn datasets --check fashion-mnist || gpunn datasets --download fashion-mnist)

# The kernels compile on first use (NVRTC, cached under ~/.cupy); gpunn info shows the device.
CMD ["sh", "-c", "gpunn info && gpunn train --model model4 --dataset fashion-mnist --epochs 5 --device cuda --out runs/docker-model4-$(date +%Y%m%d-%H%M%S)"]
