# The proxy in a container. Build it from a checkout (the project is on no package index):
#   docker build -t pythonbuild-proxy .
# and run it with its state in a volume and your config mounted over the default one:
#   docker run -d --name pythonbuild -p 8080:8080 -v pythonbuild-state:/var/lib/pythonbuild \
#     -v "$PWD/docker/config.ini:/etc/pythonbuild/config.ini:ro" pythonbuild-proxy
# README.md, "Docker", says what each part is for.

# Any image with python3 (3.11 or newer, with venv) and useradd: a mirror's copy, a pinned
# digest, a Debian base: --build-arg BASE=...
ARG BASE=python:3.12-slim
FROM ${BASE}

# Passed to pip while the image is built, when the default index is not reachable or not
# wanted: --build-arg PIP_INDEX_URL=https://mirror.example.lan/simple/ (a running pythonbuild
# will do). Unset unless given.
ARG PIP_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
# A fixed user and group id, so a bind-mounted state folder can be chowned to it on the host.
ARG UID=10001

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

COPY . /opt/pythonbuild/src
RUN python3 -m venv /opt/pythonbuild/.venv \
 && /opt/pythonbuild/.venv/bin/pip install /opt/pythonbuild/src \
 && groupadd --system --gid "$UID" pythonbuild \
 && useradd --system --uid "$UID" --gid pythonbuild --home-dir /var/lib/pythonbuild \
      --no-create-home --shell /usr/sbin/nologin pythonbuild \
 && install -d -o pythonbuild -g pythonbuild -m 0750 /var/lib/pythonbuild \
 && install -D -m 0644 /opt/pythonbuild/src/docker/config.ini /etc/pythonbuild/config.ini

# The page cache, the file cache, the wheelhouse, the demand queue and the upload tokens.
VOLUME /var/lib/pythonbuild
USER pythonbuild
EXPOSE 8080
# Slim images have no curl: Python asks /health at the address and port the config gives.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
  CMD ["/opt/pythonbuild/.venv/bin/python", "-m", "proxy.healthcheck", "--config", "/etc/pythonbuild/config.ini"]
# Exec form: the proxy is PID 1 and gets docker stop's SIGTERM itself (it exits cleanly).
ENTRYPOINT ["/opt/pythonbuild/.venv/bin/pythonbuild-proxy", "--config", "/etc/pythonbuild/config.ini"]
