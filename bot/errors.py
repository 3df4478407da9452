"""The three kinds of failure kbot tells apart, and the exit codes they become.

A user/config error is the caller's to fix (bad flag, bad TOML, malformed mail given on the
command line). An infrastructure error means kbot could not test (apply conflict, build break
unrelated to the test, a VM that hangs, a server that is down): in a bisection it is a SKIP and
in a report "could not test". A test failure is a *result* (BAD), never an exception: it is
carried in result values, not raised.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE_FOUND = 1  # the command ran and found a regression / failing test
EXIT_USER_ERROR = 2
EXIT_INFRA_ERROR = 3
EXIT_INTERRUPTED = 130


class KbotError(Exception):
    """Base of every error kbot raises on purpose."""

    exit_code = EXIT_INFRA_ERROR


class UserError(KbotError):
    """Bad input from the person or config: fix it and retry."""

    exit_code = EXIT_USER_ERROR


class ConfigError(UserError):
    """A config file is invalid. The message names the file, the key and the problem."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        super().__init__(f"{path}: {key}: {problem}")


class InputError(UserError):
    """Untrusted input (mail, mbox, patch) is malformed or over a limit."""


class InfraError(KbotError):
    """kbot could not do the work (tool missing, server down, VM hung): not the patch's fault."""

    exit_code = EXIT_INFRA_ERROR


class ProcTimeout(InfraError):
    """A subprocess ran past its time limit and was killed with its process group."""
