"""Exit codes: every command ends with one of these, so scripts can tell failures apart."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # the command ran and found something wrong (a failed check, a burning SLO)
    USAGE = 2  # a flag or argument is wrong (same code as click's usage errors)
    INVALID_INPUT = 3  # a file the user gave us is broken: compose, resource YAML
    ENGINE = 4  # the Docker engine is unreachable or refused an operation
    PERMISSION = 5  # the mesh home or a file cannot be read or written
    NOT_INSTALLED = 6  # the mesh is not installed: run `meshctl install`
    TIMEOUT = 7  # a wait (proxy-status --wait, readiness) ran out of time
    CONFLICT = 8  # the state on disk or in the engine disagrees with the request
    INTERRUPTED = 130  # Ctrl-C
