"""The clipgate error tree: each error carries its default HTTP status; adapters render it.

ClipgateError
 ├─ InvalidRequest        400  wrong shape, bad base64, undecodable image
 │   ├─ ImageError        400  an image cannot be read: bad base64, not an image, URL refused
 │   ├─ TextTooLong       400  a text has more tokens than its limit, and is not to be cut
 │   └─ SchemaError       422  the body does not match the operation's schema at all
 ├─ Unauthorized          401  credential missing or wrong
 ├─ UnknownModel          404  the request names a model that is not served
 ├─ RouteNotFound         404  no route serves the path
 ├─ MethodNotAllowed      405  the route exists, the method does not; carries Allow
 ├─ RequestTimeout        408  the request body did not arrive within server.request_timeout_s
 ├─ PayloadTooLarge       413  body, image or item count over the limits
 ├─ UnsupportedMediaType  415  the body is not in a format the route reads
 ├─ HeaderTooLarge        431  a request id header over 100 characters
 ├─ Overloaded            503  queue full; carries Retry-After (Azure routes: 429)
 │   └─ DeadlineExceeded  503  not answered within server.request_timeout_s
 ├─ NotReady              503  the model is not loaded and warmed yet
 └─ InternalError         500  anything unexpected: generic message, traceback to the log
"""

from __future__ import annotations


class ClipgateError(Exception):
    status: int = 500
    message: str = "Internal error."

    def __init__(
        self, message: str | None = None, *, retry_after: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.retry_after = retry_after
        self.headers = headers or {}


class InvalidRequest(ClipgateError):
    status = 400
    message = "Invalid request."


class ImageError(InvalidRequest):
    message = "The image cannot be read."


class TextTooLong(InvalidRequest):
    """A text over its token limit that is not to be cut. `index` is its position among the
    request's texts, `tokens` its length and `limit` the limit, for vendors whose errors say so;
    `asked` is True when the request itself said not to cut (else the server's setting did)."""

    def __init__(self, index: int, tokens: int, limit: int, *, asked: bool = False) -> None:
        if asked:
            message = (
                f"Text at index {index} is {tokens} tokens long; the limit is {limit}, "
                "and the request asked not to truncate."
            )
        else:
            message = (
                f"Text at index {index} is {tokens} tokens long; the model accepts at most {limit} "
                "(the server can be configured to truncate: model.truncate_text = true)."
            )
        super().__init__(message)
        self.index = index
        self.tokens = tokens
        self.limit = limit
        self.asked = asked


class SchemaError(InvalidRequest):
    """The body is structurally wrong: a required field is missing or has the wrong type.

    `loc` is the path to the offending field (e.g. ("body", "text")), `kind` a short
    machine-readable reason ("missing", "type"), for vendors whose errors are structured.
    """

    status = 422

    def __init__(self, message: str, *, loc: tuple[str | int, ...] = ("body",), kind: str = "value_error") -> None:
        super().__init__(message)
        self.loc = loc
        self.kind = kind


class Unauthorized(ClipgateError):
    status = 401
    message = "Unauthorized."


class UnknownModel(ClipgateError):
    status = 404
    message = "The requested model is not served here."


class RouteNotFound(ClipgateError):
    status = 404
    message = "Not found."


class MethodNotAllowed(ClipgateError):
    status = 405
    message = "Method not allowed."


class RequestTimeout(ClipgateError):
    status = 408
    message = "The request body did not arrive in time."


class PayloadTooLarge(ClipgateError):
    status = 413
    message = "Payload too large."


class UnsupportedMediaType(ClipgateError):
    status = 415
    message = "Unsupported media type."


class HeaderTooLarge(ClipgateError):
    status = 431
    message = "Request header too large."


class Overloaded(ClipgateError):
    status = 503
    message = "The server is overloaded; retry later."

    def __init__(self, message: str | None = None, *, retry_after: int | None = 1) -> None:
        super().__init__(message, retry_after=retry_after)


class DeadlineExceeded(Overloaded):
    """The request was not answered within the server's deadline; its queued work is dropped."""

    message = "The request did not finish in time; retry later."


class NotReady(ClipgateError):
    status = 503
    message = "The model is not ready yet; retry later."

    def __init__(self, message: str | None = None, *, retry_after: int | None = 1) -> None:
        super().__init__(message, retry_after=retry_after)


class InternalError(ClipgateError):
    status = 500
    message = "Internal error."
