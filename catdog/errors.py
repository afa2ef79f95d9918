"""The one exception type that reaches users as a one-line message instead of a traceback."""


class CatdogError(Exception):
    """A problem with the user's input (data, flags, files) that they can fix.

    Entry points catch it and print its message alone, so the message must name the thing at
    fault and say what would be valid.
    """


def first_line(error: BaseException) -> str:
    """An exception's first line of message (its type's name when it has none): what a one-line
    error or a record shows of a failure from code that is not catdog's."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
