"""The project's exception types. Imports nothing of the project."""


class ExtenderError(Exception):
    """Base class for errors this project raises on purpose."""


class PortSpecError(ExtenderError, ValueError):
    """A `PORT[-END][/PROTO][@IP]` entry that cannot be parsed; the message quotes the entry."""


class WireError(ExtenderError):
    """A request that breaks the extender protocol; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class SnapshotError(ExtenderError):
    """A snapshot file that cannot be read or does not hold Kubernetes Nodes and Pods."""


class BindError(ExtenderError):
    """A binding that did not happen; the message is what the scheduler will show."""


def json_type_name(value: object) -> str:
    """How an error message names the JSON type of `value` ("an object", "a list", "null"...)."""
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), "a value")
