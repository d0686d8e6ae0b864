# The meshctl sidecar: meshctl's proxy engine (the sidecar package), built offline from a host-built wheelhouse.
ARG BASE=meshctl/base:bookworm
FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/opt/meshctl PATH=/opt/meshctl/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN command -v python3 >/dev/null && command -v iptables >/dev/null \
    || { echo "the base image needs python3 (3.11) and iptables" >&2; exit 1; }
COPY wheelhouse /tmp/wheelhouse
RUN python3 -m venv /opt/meshctl/venv \
    && /opt/meshctl/venv/bin/pip install --quiet --no-index --no-cache-dir --disable-pip-version-check \
         --find-links /tmp/wheelhouse -r /tmp/wheelhouse/requirements.txt \
    && rm -rf /tmp/wheelhouse \
    && groupadd --gid 1337 meshproxy && useradd --uid 1337 --gid 1337 --no-create-home \
         --home-dir /nonexistent --shell /usr/sbin/nologin meshproxy
COPY sidecar /opt/meshctl/sidecar
# The proxy runs with -O (sidecar.supervisor): assertions are skipped. Its bytecode is compiled here, since the
# proxy uid cannot write any at run time.
RUN /opt/meshctl/venv/bin/python -O -m compileall -q /opt/meshctl/venv/lib /opt/meshctl/sidecar \
    && /opt/meshctl/venv/bin/python -m compileall -q /opt/meshctl/sidecar
EXPOSE 15001 15006 15021 15090
STOPSIGNAL SIGTERM
ENTRYPOINT ["python3", "-m", "sidecar.supervisor"]
