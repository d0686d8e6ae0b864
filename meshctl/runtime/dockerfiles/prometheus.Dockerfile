# The prometheus addon: Debian's own prometheus and promtool, and the web UI with the JavaScript and fonts
# it takes from Debian's libjs-* packages (unpacked from the .debs on the host, since containers cannot reach
# the package mirror), on meshctl's base image. meshctl writes the config and mounts it.
ARG BASE=meshctl/base:bookworm
FROM ${BASE}
COPY usr/ /usr/
RUN prometheus --version && promtool --version && test -e /usr/share/prometheus/web/static/jquery/jquery.min.js \
    && mkdir -p /prometheus /etc/prometheus
WORKDIR /prometheus
EXPOSE 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
