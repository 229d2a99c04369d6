"""The project's error for invalid user input (arguments, request fields, files).

Command lines turn it into one ``error: ...`` line and exit code 2; services into a
4xx response. It subclasses ``ValueError`` so callers catching that keep working.
"""


class UsageError(ValueError):
    """Invalid input; the message names the argument, field or file at fault and what to do."""
