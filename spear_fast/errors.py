"""The one user-facing error type.

`UserError` is raised for bad input the user can fix: a file (manifest, audio, token store,
quantiser, checkpoint, probe task), a command-line flag, a config value or a spec string. Its
message names what was wrong (file, shape or value). It is a ValueError, so callers that catch
ValueError keep working.

Only the command-line entry points (spear_fast.cli: `spear ...` and `python train.py`) catch it:
they print one line and exit with status 2. Anything else raised is a bug, or a failure of the
machinery (a teacher, the disk, memory), and keeps its traceback. A wrong shape passed between the
project's own functions is a bug, so those checks raise plain ValueError.
"""
from __future__ import annotations

EXIT_USER_ERROR = 2  # the exit status of a command stopped by a UserError (argparse's, for bad flags)


class UserError(ValueError):
    """Bad input (a file, flag, config value or spec); the message names it."""
