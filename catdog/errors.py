"""The one exception type that reaches users as a one-line message instead of a traceback."""


class CatdogError(Exception):
    """A problem with the user's input (data, flags, files) that they can fix.

    Entry points catch it and print its message alone, so the message must name the thing at
    fault and say what would be valid.
    """
