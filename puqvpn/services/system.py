"""Running system commands: argv lists only, with a timeout, stderr kept.

Every module that touches the live system goes through a ``Runner`` so tests
can swap in ``FakeRunner`` and script failures.
"""

import subprocess
from dataclasses import dataclass, field


class CommandError(Exception):
    """A system command failed, was missing or timed out. The message names what and why."""

    def __init__(self, argv, returncode=None, stderr="", reason=""):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = (stderr or "").strip()
        self.reason = reason
        super().__init__(self.describe())

    def describe(self):
        command = " ".join(self.argv[:4]) + (" …" if len(self.argv) > 4 else "")
        if self.reason:
            return f"`{command}` {self.reason}"
        detail = self.stderr.splitlines()[-1] if self.stderr else "no error output"
        return f"`{command}` failed (exit {self.returncode}): {detail}"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Runner:
    """Runs argv lists, optionally inside a network namespace."""

    def __init__(self, netns="", timeout=15):
        self.netns = netns
        self.timeout = timeout

    def wrap(self, argv):
        if self.netns:
            return ["ip", "netns", "exec", self.netns, *argv]
        return list(argv)

    def run(self, argv, input=None, check=True, timeout=None):
        argv = [str(a) for a in argv]
        try:
            completed = subprocess.run(
                self.wrap(argv), input=input, capture_output=True, text=True,
                timeout=timeout or self.timeout,
            )
        except FileNotFoundError:
            raise CommandError(argv, reason=f"could not run: {argv[0]} is not installed") from None
        except subprocess.TimeoutExpired:
            raise CommandError(argv, reason=f"timed out after {timeout or self.timeout} s") from None
        result = Result(completed.returncode, completed.stdout, completed.stderr)
        if check and result.returncode != 0:
            raise CommandError(argv, result.returncode, result.stderr)
        return result


@dataclass
class FakeRunner:
    """Records commands instead of running them.

    ``responses`` maps an argv prefix (tuple) to a Result or an exception; the
    longest matching prefix wins.  Unmatched commands succeed with no output.
    """

    responses: dict = field(default_factory=dict)
    calls: list = field(default_factory=list)
    netns: str = ""
    timeout: int = 15

    def run(self, argv, input=None, check=True, timeout=None):
        argv = [str(a) for a in argv]
        self.calls.append((argv, input))
        match = None
        for prefix, response in self.responses.items():
            if tuple(argv[:len(prefix)]) == tuple(prefix):
                if match is None or len(prefix) > len(match[0]):
                    match = (prefix, response)
        response = match[1] if match else Result(0, "", "")
        if callable(response) and not isinstance(response, Result):
            response = response(argv, input)
        if isinstance(response, BaseException):
            raise response
        if check and response.returncode != 0:
            raise CommandError(argv, response.returncode, response.stderr)
        return response

    def commands(self):
        return [argv for argv, _input in self.calls]


@dataclass
class Context:
    """What a service function needs to act on the live system."""

    db: object                      # sqlite_utils.Database
    settings: dict                  # puqvpn.settings.Settings
    runner: object = None           # Runner or FakeRunner

    def __post_init__(self):
        if self.runner is None:
            self.runner = runner_from_settings(self.settings)

    @property
    def live(self):
        return self.settings.bool("SYSTEM_APPLY")


def runner_from_settings(settings):
    return Runner(netns=settings.get("NETNS", ""), timeout=int(settings.get("COMMAND_TIMEOUT", 15)))
