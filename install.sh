#!/usr/bin/env bash
# meshctl installer. Idempotent: run it again at any time.
#
#   ./install.sh           set up: venv, Docker engine, `meshctl install`, meshctl on PATH
#   ./install.sh --demo    set up, then run `meshctl demo` (bookinfo, meshed)
#   ./install.sh --test    set up, then check the wheel (installed in a fresh venv, run from outside this
#                          checkout), run the checks and the whole test suite (what CI runs)
#
# As root on Debian/Ubuntu it installs what is missing (docker.io, docker-compose, debootstrap) and
# starts dockerd in the background. As a user in the docker group it uses the engine that is there.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
VENV=$ROOT/.venv
DOCKERD_LOG=/var/log/meshctl-dockerd.log

say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31minstall.sh: error:\033[0m %s\n' "$*" >&2; exit 1; }

mode=setup
for arg in "$@"; do
  case $arg in
    --demo) mode=demo ;;
    --test) mode=test ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$arg' (use --demo, --test or --help)" ;;
  esac
done

is_root() { [ "$(id -u)" = 0 ]; }
have() { command -v "$1" >/dev/null 2>&1; }
apt_ready=
apt_install() {
  is_root && have apt-get || return 1
  if [ -z "$apt_ready" ]; then
    say "apt-get update"
    apt-get update -qq >/dev/null
    apt_ready=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- Python: a venv with meshctl and its test extras ---------------------------------------------------
py=$(command -v python3 || true)
[ -n "$py" ] || { apt_install python3 python3-venv && py=$(command -v python3); } || die "python3 (3.11) is needed"
"$py" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' || die "python3 is $("$py" -V); meshctl needs 3.11"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$py" -m venv "$VENV" 2>/dev/null || { apt_install python3-venv && rm -rf "$VENV" && "$py" -m venv "$VENV"; } \
    || die "cannot create a venv: install python3-venv"
fi
stamp=$VENV/.meshctl-installed
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing meshctl and its test extras into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -e '.[test]' 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$want" > "$stamp"
fi

# --- Docker engine ----------------------------------------------------------------------------------------
engine_up() { "$VENV/bin/python" -c 'import docker; docker.from_env(timeout=5).ping()' >/dev/null 2>&1; }
if ! engine_up; then
  if ! have dockerd; then
    apt_install docker.io || die "no Docker engine answers and I cannot install one (need root and apt-get); install Docker, then rerun"
  fi
  is_root || die "no Docker engine answers at ${DOCKER_HOST:-/var/run/docker.sock}; start it (sudo systemctl start docker) and rerun"
  if [ -d /run/systemd/system ] && have systemctl; then
    say "starting docker with systemctl"
    systemctl start docker || true
  fi
  if ! engine_up; then
    say "starting dockerd in the background (log: $DOCKERD_LOG)"
    # In a subshell, so dockerd is adopted by init: the `exec pytest` below would otherwise become its parent,
    # never reap it, and leave a zombie when a test stops the engine.
    ( setsid dockerd >"$DOCKERD_LOG" 2>&1 < /dev/null & )
  fi
  for _ in $(seq 1 60); do engine_up && break; sleep 1; done
  engine_up || die "dockerd did not answer within 60 s; see $DOCKERD_LOG"
fi
say "Docker engine answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
# Compose v2 (`docker compose`), which nearly every Docker user runs. Debian bookworm ships only v1, so as root we take
# the plugin binary from Debian trixie's signed `docker-compose` package (2.26, checked against Debian's archive key)
# through a separate apt config: nothing from trixie is installed into the host's package set.
TRIXIE_APT=/var/lib/meshctl/apt-trixie
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
install_compose_v2() {
  is_root && have apt-get && have dpkg-deb || return 1
  mkdir -p "$TRIXIE_APT/etc" "$TRIXIE_APT/lists/partial" "$TRIXIE_APT/cache/archives/partial" "$PLUGIN_DIR"
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    > "$TRIXIE_APT/etc/trixie.sources"
  local opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$TRIXIE_APT/etc" -o "Dir::State::Lists=$TRIXIE_APT/lists"
              -o "Dir::Cache=$TRIXIE_APT/cache" -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=/dev/null")
  say "installing compose v2 from Debian trixie's docker-compose package into $PLUGIN_DIR"
  apt-get "${opts[@]}" update -qq >/dev/null || return 1
  local tmp; tmp=$(mktemp -d)
  (cd "$tmp" && apt-get "${opts[@]}" download -qq docker-compose >/dev/null) || { rm -rf "$tmp"; return 1; }
  dpkg-deb -x "$tmp"/docker-compose_*.deb "$tmp/x" &&
    install -m 0755 "$tmp/x/usr/libexec/docker/cli-plugins/docker-compose" "$PLUGIN_DIR/docker-compose"
  local rc=$?; rm -rf "$tmp"; return $rc
}
if ! docker compose version >/dev/null 2>&1; then
  install_compose_v2 || say "compose v2 is not available: meshctl falls back to docker-compose v1"
fi
# v1 stays too: meshctl keeps working with it, and the test suite smoke-tests it.
if ! have docker-compose; then
  apt_install docker-compose || docker compose version >/dev/null 2>&1 \
    || die "neither 'docker compose' nor 'docker-compose' exists; install one and rerun"
fi
say "compose: $(docker compose version --short 2>/dev/null || echo 'v2 missing'), docker-compose $(docker-compose version --short 2>/dev/null || echo 'missing')"
# debootstrap builds the base image when no registry can give us one; needed once (the result is cached).
have debootstrap || apt_install debootstrap || say "debootstrap is missing: meshctl install needs --base-image"

# --- the mesh ---------------------------------------------------------------------------------------------
"$VENV/bin/meshctl" install

if is_root && [ -d /usr/local/bin ] && [ -w /usr/local/bin ]; then
  ln -sf "$VENV/bin/meshctl" /usr/local/bin/meshctl
  say "meshctl is on PATH (/usr/local/bin/meshctl)"
else
  say "add meshctl to your PATH with:  export PATH=\"$VENV/bin:\$PATH\""
fi

# --- the package: what `pip install meshctl-*.whl` users get -------------------------------------------
WHEEL_BUILD=/tmp/meshctl-wheel-build
WHEEL_VENV=/tmp/meshctl-wheel-venv
# Build the wheel, install it into a fresh venv and run it from / (nothing of this checkout on its path): its
# `meshctl version` must find the sidecar image the install above built, and its `meshctl check` must pass.
check_wheel() {
  local want got
  rm -rf "$WHEEL_BUILD" "$WHEEL_VENV"
  mkdir -p "$WHEEL_BUILD/src" "$WHEEL_BUILD/dist"
  # from a clean copy: setuptools' build/ directory keeps modules deleted since, and they would ship
  cp -r pyproject.toml README.md meshctl sidecar "$WHEEL_BUILD/src/"
  find "$WHEEL_BUILD/src" -name __pycache__ -prune -exec rm -rf {} +
  say "building the meshctl wheel"
  "$VENV/bin/pip" wheel --quiet --disable-pip-version-check --no-deps -w "$WHEEL_BUILD/dist" "$WHEEL_BUILD/src" \
    2> >(grep -v "is ignored: it is neither" >&2) || die "building the wheel failed (see pip's lines above)"
  say "installing $(cd "$WHEEL_BUILD/dist" && echo meshctl-*.whl) into a fresh venv, $WHEEL_VENV"
  "$py" -m venv "$WHEEL_VENV" || die "cannot create $WHEEL_VENV"
  "$WHEEL_VENV/bin/pip" install --quiet --disable-pip-version-check "$WHEEL_BUILD"/dist/meshctl-*.whl \
    2> >(grep -v "is ignored: it is neither" >&2) || die "installing the wheel into $WHEEL_VENV failed"
  want=$("$VENV/bin/python" -c 'import meshctl; print(meshctl.__version__)')
  say "meshctl version (the wheel's, from /)"
  got=$(cd / && env -u PYTHONPATH "$WHEEL_VENV/bin/meshctl" version -o json) \
    || die "\`meshctl version\` from the wheel install failed (run $WHEEL_VENV/bin/meshctl version --debug)"
  printf '%s' "$got" | (cd / && env -u PYTHONPATH "$WHEEL_VENV/bin/python" -c '
import json, sys, meshctl
want, got, where = sys.argv[1], json.load(sys.stdin), meshctl.__file__
if not where.startswith(sys.prefix):
    sys.exit(f"the wheel venv imports meshctl from {where}, not from its own site-packages")
if got != {"client": want, "sidecar": want}:
    sys.exit(f"meshctl version from the wheel says {got}; want client and sidecar {want}")
print(f"client and sidecar {want}, meshctl from {where}")' "$want") || die "the wheel install is not what was built"
  say "meshctl check (the wheel's, from /)"
  (cd / && env -u PYTHONPATH "$WHEEL_VENV/bin/meshctl" check) \
    || die "\`meshctl check\` from the wheel install failed (the × lines above say what); $WHEEL_VENV is kept"
  rm -rf "$WHEEL_BUILD"
}

case $mode in
  demo) exec "$VENV/bin/meshctl" demo ;;
  test)
    check_wheel
    say "ruff"; "$VENV/bin/ruff" check meshctl sidecar tests
    say "mypy"; "$VENV/bin/mypy"
    say "import layers"; "$VENV/bin/lint-imports" --no-logo  # pyproject's [tool.importlinter]: no upward import, no cycle
    # the dashboard's e2e test drives a real headless chromium
    have chromium || apt_install --no-install-recommends chromium fonts-liberation || say "chromium is missing: the dashboard test needs it"
    # unit tests need no engine and share nothing: one worker per core; e2e tests share one engine, in order.
    # The slowest tests are listed at the end: where a run that nears its budget can be trimmed.
    say "pytest: unit"; "$VENV/bin/python" -m pytest -n auto --durations=10 tests/unit
    say "pytest: e2e"; exec "$VENV/bin/python" -m pytest --durations=25 tests/e2e ;;
esac
