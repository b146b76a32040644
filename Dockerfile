# One image for the operator (`python -m kubemap_operator`, the default command) and for
# function-mode worker pods (`python -m kubemap.worker`, set by the operator).
#   docker build -t kubemap:dev .      (the classic builder or BuildKit; no Docker Hub at build
#                                       time beyond the base image below)
#   scripts/image                      (docker where a daemon runs, else buildah + podman, with
#                                       the base image made locally: scripts/base-image)

# --- builder: the same wheel the tests install (`pip wheel --no-deps .`) ----------------
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The globs let README.md and constraints.txt (optional pins) be absent.
COPY pyproject.toml README.m[d] constraints.tx[t] ./
COPY sdk ./sdk
COPY operator ./operator
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && if [ -f constraints.txt ]; then cp constraints.txt /wheels/; fi

# --- runtime ---------------------------------------------------------------------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=builder /wheels /wheels
# DL3013 (pin versions): the one package is the local wheel built above; its dependencies
# follow pyproject.toml's ranges, or constraints.txt when the project pins them.
# COPY, not BuildKit's RUN --mount, so the classic builder builds it too; the wheel (a few
# hundred KiB) stays in that one layer.
# hadolint ignore=DL3013
RUN if [ -f /wheels/constraints.txt ]; then set -- --constraint /wheels/constraints.txt; fi; \
    pip install "$@" /wheels/kubemap-*.whl \
 && rm -rf /wheels \
 && groupadd --gid 10001 kubemap \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin kubemap
# Numeric, so that runAsNonRoot can verify it without reading /etc/passwd.
USER 10001
WORKDIR /tmp
CMD ["python", "-m", "kubemap_operator"]
