# The kubearc image: every agent of the chart (charts/kubearc-agents), the hub and the relay run from it.
# Build: docker build -t ghcr.io/kubearc/kubearc:$(python3 -c 'import foundation; print(foundation.__version__)') .

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kubearc kubearc
COPY foundation foundation
COPY hub hub
COPY proxy proxy
COPY guard guard
COPY agents agents
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN groupadd --system --gid 10001 kubearc \
    && useradd --system --uid 10001 --gid kubearc --home-dir /nonexistent --shell /usr/sbin/nologin kubearc
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
ENTRYPOINT ["kubearc"]
CMD ["--help"]
