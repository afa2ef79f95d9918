"""TF Serving's status codes: ServingError (a gRPC code and TF Serving's message) and the
gRPC ⇄ HTTP mapping of model_servers/http_server.cc."""

from __future__ import annotations

import grpc

# model_servers/http_server.cc, ToHTTPStatusCode.
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_CODE_OF_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """An error as TF Serving reports it: a gRPC status code and the server's message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_tf_error(cls, error: Exception) -> ServingError:
        """TensorFlow's error codes are gRPC's, so a session error keeps its code."""
        code = _CODE_OF_NUMBER.get(getattr(error, "error_code", 2), grpc.StatusCode.UNKNOWN)
        return cls(code, str(getattr(error, "message", error)).split("\n\t")[0].strip())


def invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def http_status(code: grpc.StatusCode) -> int:
    return _HTTP_STATUS.get(code, 500)


def code_of_http_status(status: int) -> grpc.StatusCode:
    """The gRPC code a REST client reports for an HTTP status (the first TF Serving maps there:
    400 reads as INVALID_ARGUMENT, 500 as UNKNOWN)."""
    for code, http in _HTTP_STATUS.items():
        if http == status:
            return code
    return grpc.StatusCode.UNKNOWN

