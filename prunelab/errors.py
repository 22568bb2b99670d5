"""User-facing errors.

A :class:`PrunelabError` is raised for anything the *user* can fix (a wrong name, a bad file, a
missing data set).  Its message is one line that names the problem and the fix; the CLI prints it
without a traceback and exits with code 2.  Anything else is a bug and keeps its traceback.
"""


class PrunelabError(Exception):
    """An error the user can fix; the message says how."""

    exit_code = 2
