"""Errors users see: each carries its exit code and a hint saying what to do next.

Library code raises these; the CLI prints `error: <message> (<hint>)` as one line and exits with `code`.
"""

from __future__ import annotations

from meshctl.status import ExitCode


class MeshError(Exception):
    code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, hint: str | None = None, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details or []  # every problem, when there were several; shown with --debug

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message}; {self.hint}"
        return " ".join(text.split())


class UsageError(MeshError):
    code = ExitCode.USAGE


class InvalidInput(MeshError):
    code = ExitCode.INVALID_INPUT


class EngineError(MeshError):
    code = ExitCode.ENGINE


class PermissionProblem(MeshError):
    code = ExitCode.PERMISSION


class NotInstalled(MeshError):
    code = ExitCode.NOT_INSTALLED

    def __init__(self, message: str = "meshctl is not installed in this mesh home",
                 hint: str | None = "run `meshctl install` first") -> None:
        super().__init__(message, hint)


class Conflict(MeshError):
    code = ExitCode.CONFLICT


class Timeout(MeshError):
    code = ExitCode.TIMEOUT
