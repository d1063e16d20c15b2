# MAIE, CPU image. `docker run -p 8000:8000 IMAGE` is the whole service: API, embedded Redis and one
# worker, with the small models that ship inside PyPI packages and speaker diarization. The data (audio,
# results, Redis AOF, the generated key) lives in the /data volume.
#   Scaled out (docker-compose.yml): the same image runs `maie serve --workers 0` or `maie worker`.
#   A smaller image: pass --build-arg PIP_EXTRA_INDEX_URL=<PyTorch's CPU wheel index> so torch comes
#   without CUDA libraries.
FROM python:3.11-slim AS build
ARG PIP_EXTRA_INDEX_URL=
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# llama-cpp-python compiles here (several minutes); the wheels are then reused by the runtime stage.
RUN pip wheel --wheel-dir /wheels '.[diarization]'

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 maie && mkdir -p /data && chown maie:maie /data && chmod 0700 /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER maie
WORKDIR /home/maie
# Inside a container the API must listen on all interfaces for -p to reach it. With no key configured,
# maie serve generates a strong admin key into /data/api_key and prints it once (`docker logs`): that is
# what MAIE_GENERATED_KEY_ON_PUBLIC_BIND allows. Set MAIE_API_KEYS / MAIE_ADMIN_KEYS to use your own.
ENV MAIE_DATA_DIR=/data \
    MAIE_HOST=0.0.0.0 \
    MAIE_PORT=8000 \
    MAIE_GENERATED_KEY_ON_PUBLIC_BIND=true
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/health')" || exit 1
CMD ["maie", "serve", "--workers", "1"]
