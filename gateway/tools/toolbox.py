"""The tools one session's replies may call, and where each call runs.

A round of calls runs concurrently, each bounded by its tool's timeout; whatever happens to a
call (a failure, a timeout, arguments that are not JSON, a tool nobody offers) becomes a
result the model is told, so the reply always goes on to an answer. Server tools are shown to
the client as `tool_call`/`tool_result`; client tools are sent as `tool_call` with `runs_on:
client` and wait for the client's `tool_result`. Cancelling `run` (barge-in) cancels every
call in flight; a client's late answer to a cancelled call is refused (`bad_message`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog

from adapters.base import ChatMessage, ToolCall, ToolSpec
from gateway import protocol, telemetry, tracing
from gateway.config import Tool
from gateway.outbound import Outbound
from gateway.pipeline import Pipeline
from gateway.protocol import ToolRunsOn
from gateway.tools.outcome import ToolFailed

log = structlog.get_logger()

_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


class Toolbox:
    def __init__(self, pipeline: Pipeline, outbound: Outbound) -> None:
        self._pipeline = pipeline
        self._outbound = outbound
        self._named = {t.name: t for t in pipeline.tools if t.name is not None}
        self._servers = [t for t in pipeline.tools if t.mcp is not None]
        self._mcp_names: dict[str, Tool] = {}
        self._waiting: dict[str, asyncio.Future[protocol.ToolOutput]] = {}

    def __bool__(self) -> bool:
        return bool(self._pipeline.tools)

    async def specs(self) -> list[ToolSpec]:
        """What the model is offered this reply: the file's tools, and each MCP server's
        (listed once per process and refreshed; a server that cannot be listed is left out
        of this reply, with a warning, rather than fail it)."""
        offered = [
            ToolSpec(t.name, t.description, t.parameters or _EMPTY_SCHEMA)
            for t in self._named.values()
            if t.name is not None
        ]
        if self._servers:
            from gateway.tools import mcp

            listings = await asyncio.gather(
                *(mcp.list_tools(t.mcp) for t in self._servers if t.mcp is not None),
                return_exceptions=True,
            )
            for server, listing in zip(self._servers, listings, strict=True):
                if isinstance(listing, BaseException):
                    if not isinstance(listing, ToolFailed):
                        raise listing
                    url = server.mcp.url if server.mcp is not None else ""
                    log.warning("tool_server_unavailable", url=url, error=str(listing))
                    continue
                for spec in listing:
                    if spec.name not in self._named:
                        self._mcp_names[spec.name] = server
                        offered.append(spec)
        return offered

    async def run(
        self, turn_id: int, calls: Sequence[ToolCall], made: list[tracing.ToolCall] | None = None
    ) -> list[ChatMessage]:
        """Run one round of calls; their results, in the order called, for the model. Each
        call's record (times, outcome) goes into `made` as it ends, for the turn's trace; a
        call cut by barge-in as `cancelled`."""
        made = [] if made is None else made
        results: list[ChatMessage] = []
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._call(turn_id, call, made)) for call in calls]
        for call, task in zip(calls, tasks, strict=True):
            results.append(ChatMessage("tool", task.result(), tool_call_id=call.id))
        return results

    def answered(self, message: protocol.ToolOutput) -> bool:
        """The client's `tool_result`; False when no call of this session waits for it."""
        waiting = self._waiting.pop(message.call_id, None)
        if waiting is None or waiting.done():
            return False
        waiting.set_result(message)
        return True

    async def _call(self, turn_id: int, call: ToolCall, made: list[tracing.ToolCall]) -> str:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            return await self._attempt(turn_id, call, started, made)
        except asyncio.CancelledError:  # cut (barge-in): `_finish` did not record it
            tool = self._named.get(call.name) or self._mcp_names.get(call.name)
            runs_on = _runs_on(tool) if tool is not None else ToolRunsOn.SERVER
            made.append(_record(call, started, loop.time(), runs_on, "cancelled", None, None))
            raise

    async def _attempt(
        self, turn_id: int, call: ToolCall, started: float, made: list[tracing.ToolCall]
    ) -> str:
        tool = self._named.get(call.name) or self._mcp_names.get(call.name)
        try:
            arguments = _arguments(call)
            if tool is None:
                raise ToolFailed("unknown_tool", f"there is no tool named `{call.name}`")
        except ToolFailed as failure:  # shown as a server call that failed: no client runs it
            await self._show(turn_id, call, {}, ToolRunsOn.SERVER)
            return await self._finish(
                turn_id, call, ToolRunsOn.SERVER, started, failure.kind, str(failure), made
            )
        runs_on = _runs_on(tool)
        await self._show(turn_id, call, arguments, runs_on)
        timeout_s = _timeout_s(tool)
        try:
            async with asyncio.timeout(timeout_s):
                output = await self._execute(tool, call, arguments)
        except ToolFailed as failure:
            return await self._finish(
                turn_id, call, runs_on, started, failure.kind, str(failure), made
            )
        except TimeoutError:
            message = f"`{call.name}` did not answer within {timeout_s:g} s"
            return await self._finish(turn_id, call, runs_on, started, "timeout", message, made)
        return await self._finish(turn_id, call, runs_on, started, None, output, made)

    async def _show(
        self, turn_id: int, call: ToolCall, arguments: dict[str, Any], runs_on: ToolRunsOn
    ) -> None:
        """Log the call and tell the client (which runs it when it is a client tool)."""
        shown = {"arguments": arguments} if self._pipeline.log_transcripts else {}
        log.info(
            "tool_call",
            turn_id=turn_id,
            call_id=call.id,
            name=call.name,
            runs_on=str(runs_on),
            **shown,
        )
        await self._outbound.put(
            protocol.ToolCall(
                turn_id=turn_id,
                call_id=call.id,
                name=call.name,
                arguments=arguments,
                runs_on=runs_on,
            )
        )

    async def _execute(self, tool: Tool, call: ToolCall, arguments: dict[str, Any]) -> str:
        if tool.http is not None:
            from gateway.tools import http

            return await http.call_http(tool.http, arguments)
        if tool.mcp is not None:
            from gateway.tools import mcp

            return await mcp.call_mcp(tool.mcp, call.name, arguments)
        return await self._on_client(call)

    async def _on_client(self, call: ToolCall) -> str:
        waiting: asyncio.Future[protocol.ToolOutput] = asyncio.get_running_loop().create_future()
        self._waiting[call.id] = waiting
        try:
            answer = await waiting
        finally:
            self._waiting.pop(call.id, None)
        if answer.error is not None:
            raise ToolFailed("client_error", answer.error)
        return msgspec.json.encode(answer.output).decode()

    async def _finish(
        self,
        turn_id: int,
        call: ToolCall,
        runs_on: ToolRunsOn,
        started: float,
        kind: str | None,
        text: str,
        made: list[tracing.ToolCall],
    ) -> str:
        """Count, log, show and record the result; what the model is told."""
        ended = asyncio.get_running_loop().time()
        seconds = ended - started
        outcome = kind or "ok"
        telemetry.TOOL_SECONDS.labels(self._pipeline.name, call.name, outcome).observe(seconds)
        log.info(
            "tool_result",
            turn_id=turn_id,
            call_id=call.id,
            name=call.name,
            ok=kind is None,
            outcome=outcome,
            ms=round(seconds * 1000, 1),
            **({"error": text} if kind is not None else {}),
        )
        if runs_on is not ToolRunsOn.CLIENT:
            await self._outbound.put(
                protocol.ToolResult(turn_id=turn_id, call_id=call.id, ok=kind is None)
            )
        told = text if kind is None else json.dumps({"error": text})
        # Recorded last, with no await after it: a call cut before this is `cancelled`.
        error = text if kind is not None else None
        made.append(_record(call, started, ended, runs_on, kind, error, told))
        return told


def _arguments(call: ToolCall) -> dict[str, Any]:
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError as error:
        raise ToolFailed("bad_arguments", f"the arguments were not valid JSON ({error})") from None
    if not isinstance(arguments, dict):
        raise ToolFailed("bad_arguments", "the arguments must be a JSON object")
    return arguments


def _runs_on(tool: Tool) -> ToolRunsOn:
    return ToolRunsOn.CLIENT if tool.http is None and tool.mcp is None else ToolRunsOn.SERVER


def _record(
    call: ToolCall,
    started: float,
    ended: float,
    runs_on: ToolRunsOn,
    kind: str | None,
    error: str | None,
    told: str | None,
) -> tracing.ToolCall:
    """The call as the turn's trace shows it (loop-clock times)."""
    return tracing.ToolCall(
        name=call.name,
        call_id=call.id,
        started=started,
        ended=ended,
        runs_on=str(runs_on),
        error=kind,
        detail=error,
        arguments=call.arguments,
        result=told,
    )


def _timeout_s(tool: Tool) -> float:
    target = tool.http or tool.mcp
    return (target.timeout_ms if target is not None else tool.timeout_ms) / 1000
