"""Errors a user can act on. Their message is the whole story: no traceback is shown."""


class D2MError(Exception):
    """A problem with the user's input, params or data, explained in the message."""


class ParamsError(D2MError):
    """params.yaml (or an override) does not fit the typed params model."""


class DataError(D2MError):
    """An input table cannot be read or does not fit what the pipeline needs."""


class ValidationFailed(D2MError):
    """The data contract blocked the batch: the message lists each failed expectation."""


class CanaryFailed(D2MError):
    """A candidate failed the canary before a promotion; the message says how. Nothing moved."""
