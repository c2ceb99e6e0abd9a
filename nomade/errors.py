"""Errors that the command line shows to the user as one line, without a traceback.

Standard library only, imports nothing of nomade: any module may raise these.
"""


class NomadeError(Exception):
    """An expected error to show the user in one line (exit status 2, no traceback).

    Raise it for bad input, missing files, or a refused action: anything the user can
    fix from the message alone. A bug is not a NomadeError.
    """
