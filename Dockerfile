# The Prefloop image: web, workers and the built-in policy server (docker-compose.yml runs it).
FROM python:3.11-slim
WORKDIR /srv/prefloop
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# torch from the index that matches the host: CPU by default, a CUDA one for GPU hosts (see .env.example).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
COPY pyproject.toml README.md ./
COPY webapp webapp
COPY worker worker
COPY training training
RUN pip install -e .
COPY manage.py ./
COPY templates templates
COPY static static
RUN useradd --create-home --uid 10001 prefloop && mkdir -p var/artifacts && chown -R prefloop var
USER prefloop
EXPOSE 8000
CMD ["python", "manage.py", "prefloop_serve"]
