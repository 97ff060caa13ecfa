"""SMS jobs (placeholder: the sms-store branch owns this module; the merge takes theirs)."""


class GatewayError(Exception):
    """The SMS gateway refused a message or could not be reached."""
