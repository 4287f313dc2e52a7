"""A wasi:http component in Python: GET / answers $GREETING or "Hello from Python on wk!"."""

import os

from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)
from componentize_py_types import Ok


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        if path.split("?")[0] == "/":
            status, body = 200, os.environ.get("GREETING", "Hello from Python on wk!").encode()
        else:
            status, body = 404, b"not found\n"
        response = OutgoingResponse(
            Fields.from_list(
                [
                    ("content-type", b"text/plain; charset=utf-8"),
                    ("content-length", str(len(body)).encode()),
                ]
            )
        )
        response.set_status_code(status)
        out = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with out.write() as stream:
            stream.blocking_write_and_flush(body)
        OutgoingBody.finish(out, None)
