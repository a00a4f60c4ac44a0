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

# The extension-manager drives the real helm: the release binary, checked against its published digest.
FROM python:3.11-slim AS helm
ARG HELM_VERSION=v4.3.1
ARG TARGETARCH=amd64
ADD https://get.helm.sh/helm-${HELM_VERSION}-linux-${TARGETARCH}.tar.gz /tmp/helm.tgz
ADD https://get.helm.sh/helm-${HELM_VERSION}-linux-${TARGETARCH}.tar.gz.sha256sum /tmp/helm.tgz.sha256sum
RUN cd /tmp && echo "$(cut -d' ' -f1 helm.tgz.sha256sum)  helm.tgz" | sha256sum -c - \
    && tar -xzf helm.tgz && install -m 0755 linux-${TARGETARCH}/helm /usr/local/bin/helm

FROM python:3.11-slim
COPY --from=helm /usr/local/bin/helm /usr/local/bin/helm
RUN groupadd --system --gid 10001 kubearc \
    && useradd --system --uid 10001 --gid kubearc --home-dir /nonexistent --shell /usr/sbin/nologin kubearc
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# The agents' own chart: the controller-manager upgrades their release with it.
COPY charts /usr/share/kubearc/charts
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
ENTRYPOINT ["kubearc"]
CMD ["--help"]
