"""An official a2a-sdk (1.x) agent used as the proxy's upstream in end-to-end tests.

One echo agent behind both bindings: JSON-RPC at `/` and HTTP+JSON (REST) under
`/rest` (`/rest/message:send`, `/rest/tasks/{id}`, ...), with the agent card at
`/.well-known/agent-card.json`. A message `stream N` makes the agent emit N artifact
chunks between the working and completed status updates; anything else is echoed
back as one artifact of a completed task. Every request's headers are recorded.

    python -m tests.upstreams.a2a_server --port 8002 [--public-url http://host:port]
"""

from __future__ import annotations

import argparse

import uvicorn
from a2a.helpers.proto_helpers import new_task_from_user_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill
from a2a.utils.constants import PROTOCOL_VERSION_CURRENT, TransportProtocol
from starlette.applications import Starlette

from tests.upstreams.serve import LOOPBACK, HeaderRecorder

JSONRPC_PATH = "/"
REST_PREFIX = "/rest"
STREAM_COMMAND = "stream"


def echo_text(text: str) -> str:
    return f"echo: {text}"


def chunk_text(i: int, n: int) -> str:
    return f"chunk {i}/{n}"


def stream_count(text: str) -> int | None:
    """N for a message `stream N`, else None."""
    words = text.split()
    if len(words) == 2 and words[0] == STREAM_COMMAND and words[1].isdigit():
        return int(words[1])
    return None


class EchoExecutor(AgentExecutor):
    """Completes every task at once; `stream N` first sends N artifact chunks."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        message = context.message
        if message is None:
            raise ValueError("a message is required")
        task = context.current_task
        if task is None:
            task = new_task_from_user_message(message)
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        text = context.get_user_input()
        n = stream_count(text)
        if n is None:
            await updater.add_artifact([new_text_part(echo_text(text))], name="echo")
        else:
            await updater.start_work()
            for i in range(1, n + 1):
                await updater.add_artifact(
                    [new_text_part(chunk_text(i, n))],
                    artifact_id="chunks",
                    name="chunks",
                    append=i > 1,
                    last_chunk=i == n,
                )
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        if context.task_id and context.context_id:
            await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


def build_agent_card(public_url: str) -> AgentCard:
    """The card, naming both bindings at `public_url` (the address clients should use)."""
    base = public_url.rstrip("/")
    return AgentCard(
        name="warden-test-echo",
        description="Echoes messages back; 'stream N' streams N chunks.",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(
                url=base + JSONRPC_PATH,
                protocol_binding=TransportProtocol.JSONRPC,
                protocol_version=PROTOCOL_VERSION_CURRENT,
            ),
            AgentInterface(
                url=base + REST_PREFIX,
                protocol_binding=TransportProtocol.HTTP_JSON,
                protocol_version=PROTOCOL_VERSION_CURRENT,
            ),
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(
                id="echo",
                name="echo",
                description="Echo the message text.",
                tags=["test"],
                examples=["hello", "stream 3"],
            )
        ],
    )


def build_app(public_url: str) -> HeaderRecorder:
    """Starlette app with the card, JSON-RPC and REST routes, wrapped in a header recorder."""
    card = build_agent_card(public_url)
    handler = DefaultRequestHandler(
        agent_executor=EchoExecutor(), task_store=InMemoryTaskStore(), agent_card=card
    )
    routes = [
        *create_agent_card_routes(card),
        *create_jsonrpc_routes(handler, rpc_url=JSONRPC_PATH),
        *create_rest_routes(handler, path_prefix=REST_PREFIX),
    ]
    return HeaderRecorder(Starlette(routes=routes))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--public-url", help="base URL the card advertises (default: own)")
    args = parser.parse_args(argv)
    public_url = args.public_url or f"http://{args.host}:{args.port}"
    uvicorn.run(build_app(public_url), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
