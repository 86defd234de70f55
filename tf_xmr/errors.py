"""User-facing errors.

Every problem a user can cause (bad config, bad data, a model that does not fit its input) is raised as an
``XmrError`` subclass whose message is ONE line naming the culprit (file, key, shape). The command-line tools catch
``XmrError``, print ``error: <message>`` to stderr and exit with status 2, without a traceback; anything else is a bug
and keeps its traceback.
"""


class XmrError(Exception):
    """Base class for errors caused by user input; the message is a single line naming the culprit."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: a multi-line message would break the CLI contract (and log parsers).
        super().__init__(" ".join(str(message).split()))


class ConfigError(XmrError):
    """A config file or override is wrong: unknown key, wrong type, value out of range, missing include."""


class DataError(XmrError):
    """A data file is missing or malformed: absent keys, wrong shapes, NaN/Inf, labels out of range, empty split."""


class ModelInputError(XmrError):
    """Input to a trained or exported model does not match it (e.g. feature dimension)."""


class TrainingError(XmrError):
    """Training could not continue (for example the loss became NaN)."""

    exit_code = 1
