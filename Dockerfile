FROM python:3.11-slim
WORKDIR /srv/prefloop
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY webapp webapp
COPY worker worker
COPY training training
# torch==2.13.0 from PyPI is the CUDA build; point pip at a CPU wheel index for CPU-only images.
RUN pip install --no-cache-dir -e .
COPY . .
EXPOSE 8000
