"""A fake OpenTelemetry collector on 127.0.0.1: OTLP/HTTP's trace endpoint, decoding each
request's protobuf as a collector does, so tests assert on what really left the process.

    with OTLPReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        ...
        assert receiver.spans[0].name == "voxgate.session"

A stdlib server on a thread of its own rather than on the test's event loop: the SDK exports
with blocking HTTP from its batch thread, and a flush blocks its caller until that thread is
done, so a receiver on the caller's loop could not answer until the flush gave up.

`python -m tests.fakes.otlp` serves in a process of its own (for bench/tracing.py, whose CPU
measurement must not include the receiver's decoding): it prints its endpoint, serves until
its standard input closes, then prints the number of spans it received.
"""

from __future__ import annotations

import gzip
import http
import sys
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

PROTOBUF = "application/x-protobuf"


class ReceivedSpan(msgspec.Struct, frozen=True):
    """One span as the collector decoded it; ids as hex, "" for a root's parent."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    """`Span.SpanKind`: 1 internal, 2 server, 3 client."""
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    """`Status.StatusCode`: 0 unset, 1 ok, 2 error."""
    status_message: str
    scope: str
    resource: dict[str, Any]


class Export(msgspec.Struct, frozen=True):
    """One export request: what its headers said, and how many spans it carried."""

    path: str
    content_type: str
    content_encoding: str
    spans: int


class OTLPReceiver:
    def __init__(self) -> None:
        self.exports: list[Export] = []
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def endpoint(self) -> str:
        """The base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it (the SDK adds /v1/traces)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def named(self, name: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.name == name]

    def __enter__(self) -> OTLPReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _received(self, export: Export, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self.exports.append(export)
            self.spans.extend(spans)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's session expects

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                content_type = self.headers.get("content-type", "")
                encoding = self.headers.get("content-encoding", "")
                if self.path != "/v1/traces":
                    self._answer(http.HTTPStatus.NOT_FOUND, b"", "text/plain")
                    return
                if content_type != PROTOBUF:
                    self._answer(http.HTTPStatus.UNSUPPORTED_MEDIA_TYPE, b"", "text/plain")
                    return
                if encoding == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                spans = _spans(request)
                receiver._received(Export(self.path, content_type, encoding, len(spans)), spans)
                self._answer(
                    http.HTTPStatus.OK, ExportTraceServiceResponse().SerializeToString(), PROTOBUF
                )

            def _answer(self, status: http.HTTPStatus, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: pytest shows what a failing test needs."""

        return Handler


def _spans(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=span.kind,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes=_attributes(span.attributes),
                        status_code=span.status.code,
                        status_message=span.status.message,
                        scope=scope_spans.scope.name,
                        resource=resource,
                    )
                )
    return spans


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind is not None else None


if __name__ == "__main__":
    with OTLPReceiver() as served:
        print(served.endpoint, flush=True)
        sys.stdin.read()
    print(len(served.spans), flush=True)
