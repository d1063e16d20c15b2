# MAIE, CPU image: API, worker or both (the command decides). Models ship inside the PyPI packages.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# llama-cpp-python compiles here (several minutes); the wheel is then reused by the runtime stage.
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 maie
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER maie
WORKDIR /home/maie
ENV MAIE_DATA_DIR=/data \
    MAIE_HOST=0.0.0.0 \
    MAIE_PORT=8000
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/health')" || exit 1
# No key is baked in: a non-loopback bind refuses to start without MAIE_API_KEYS.
CMD ["maie", "serve", "--workers", "0"]
