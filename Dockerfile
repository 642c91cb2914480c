# dlcore on a cloud GPU: `docker build -t dlcore . && docker run --gpus all dlcore`
# runs the benchmark suites (CMD bench); `docker run --gpus all dlcore info | check | train cnn`.
#
# Base: NVIDIA's CUDA 12 runtime image, which carries the libraries CuPy loads at run time
# (cudart, cuBLAS, cuRAND, NVRTC, with which our kernels/*.cu are compiled on first use);
# the driver comes from the host through the NVIDIA container toolkit.
FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/dlcore \
    PATH=/opt/dlcore/bin:$PATH \
    MPLBACKEND=Agg

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/*

# A venv owned by the unprivileged user: Ubuntu 24.04's system Python refuses pip installs.
# NOTE: no fixed --uid: the 24.04 image already has a user 'ubuntu' with uid 1000.
RUN useradd --create-home dlcore \
    && python3 -m venv /opt/dlcore \
    && chown -R dlcore:dlcore /opt/dlcore

WORKDIR /home/dlcore/src
COPY --chown=dlcore:dlcore . .

USER dlcore
# cuda12: CuPy for CUDA 12; nvml: clocks, power and utilisation in `dlcore info` and bench
# JSON; cli: progress bars, plots and the digits data for `dlcore train`. A regular (not
# editable) install: the wheel carries dlcore, the CUDA sources and the bench suites.
RUN pip install ".[cuda12,nvml,cli]" \
    && dlcore info

WORKDIR /home/dlcore
ENTRYPOINT ["dlcore"]
CMD ["bench"]
