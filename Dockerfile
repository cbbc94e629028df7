# depth2img-bot: a small image, run as a non-root user, installed from the lock file.
# bot.py is PID 1 (exec form), so `docker stop` sends it SIGTERM and it drains: jobs in flight get
# SHUTDOWN_GRACE_S seconds, the rest resume at the next start. Not built on the project's machines
# (no container engine there): see README, "Running it for real".
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.lock ./
RUN pip install -r requirements.lock

COPY bot.py ./
COPY cogs ./cogs

RUN useradd --create-home --uid 10001 bot && mkdir -p /data && chown bot:bot /data
USER bot

# BOT_DATA_DIR is a volume (compose.yaml); /healthz answers on HEALTH_PORT.
ENV BOT_DATA_DIR=/data \
    HEALTH_PORT=8081
VOLUME ["/data"]
EXPOSE 8081
STOPSIGNAL SIGTERM
CMD ["python", "bot.py"]
