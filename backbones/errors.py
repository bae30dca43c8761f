"""Errors that the command-line tools report as one line and a non-zero exit."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it."""


class ConfigError(UserError, ValueError):
    """An invalid backbone argument or config value."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


class DataError(UserError, FileNotFoundError):
    """A dataset that is missing, empty or unreadable."""


class TrainingDivergedError(UserError, RuntimeError):
    """Training produced a non-finite loss."""


class DiskFullError(UserError, OSError):
    """A write failed because the disk (or the user's quota) is full."""


class TrainingStopped(SystemExit):
    """Training stopped between iterations because the process got SIGTERM or SIGINT.

    Not bad input and not a failure: a ``SystemExit`` with the shell's status for the signal
    (128 + its number), raised after the one line saying where the checkpoint is was printed. A
    process that does not catch it (mmdet's or mmseg's own ``tools/train.py``) ends with that
    line and that status, without a traceback.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(128 + signum)
        self.message = message
        self.signum = signum

    def __str__(self) -> str:
        return self.message


_RUN: dict[str, object] = {}


def note_run(work_dir: str, config: object | None = None) -> None:
    """Remember the work dir (and the mmengine ``Config``) of this process's run: the tools write
    a crash report there, holding the config."""
    _RUN.update(work_dir=work_dir, config=config)


def noted_run() -> dict[str, object]:
    """What ``note_run`` remembered (empty before a tool knows its work dir)."""
    return dict(_RUN)


def forget_run() -> None:
    """Forget the noted run: a tool starts without one (tests run several in one process)."""
    _RUN.clear()
