# Minimal image (the deployment issue adds multi-stage build, non-root user and healthcheck).
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir .
EXPOSE 8765
CMD ["smolit", "up"]
