"""TEST DOUBLE: a fault-injecting OpenAI-compatible chat endpoint (aiohttp).

Used only for what a real LLM server will not do on demand: stall past the
deadline, answer 429 with ``Retry-After``, fail with 500, drop the connection,
send malformed JSON, or write copy that names items that were not recommended,
carries links or script, or obeys instructions planted in reviews. Everything
else is tested against the real local server (``streams.embedded_llm``).

Each request body is recorded in ``requests`` (so tests can assert on what a
prompt contained). ``script(*modes)`` queues modes for the next requests; after
the script runs out, ``default`` applies.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import orjson
from aiohttp import web

MODES = ("ok", "slow", "stall", "429", "500", "503", "drop", "malformed", "not_json", "foreign", "url",
         "script", "email", "obey")


def prompt_data(body: dict) -> dict:
    """The JSON data block of the copy prompt in a recorded request body."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return orjson.loads(user.split("\n", 1)[1])


class FaultLLM:
    """TEST DOUBLE of an OpenAI-compatible server with injectable faults."""

    def __init__(self, default: str = "ok", *, stall_s: float = 10.0, slow_s: float = 0.2,
                 retry_after: str = "0.1", foreign_title: str = "Garden Hose") -> None:
        self.default = default
        self.stall_s = stall_s
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.foreign_title = foreign_title
        self.requests: list[dict] = []
        self.modes_served: list[str] = []
        self._plan: deque[str] = deque()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *modes: str) -> None:
        for m in modes:
            if m not in MODES:
                raise ValueError(f"unknown mode {m!r}")
        self._plan.extend(modes)

    def reset(self, default: str = "ok") -> None:
        self.default = default
        self._plan.clear()
        self.requests.clear()
        self.modes_served.clear()

    async def start(self) -> "FaultLLM":
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- answers ---------------------------------------------------------------------------
    def _copy(self, mode: str, body: dict) -> dict:
        data = prompt_data(body)
        title = data["items"][0]["title"] if data.get("items") else "these picks"
        headline, text = "Handpicked for you", f"The {title} is a favourite with shoppers like you."
        if mode == "foreign":
            text = f"Pair the {title} with our {self.foreign_title} for the full set."
        elif mode == "url":
            text = f"Get the {title} now at https://deals.example/buy?id=1 before it sells out."
        elif mode == "script":
            text = f"The {title}<script>alert(document.cookie)</script> is here."
        elif mode == "email":
            text = f"Questions about the {title}? Write to help@shop-support.com any time."
        elif mode == "obey":
            # A model that does whatever the customer-written text asks.
            reviews = data.get("reviews") or [{"text": "(no review)"}]
            headline, text = "As you asked", " ".join(r["text"] for r in reviews)[:200]
        return {"headline": headline, "body": text}

    @staticmethod
    def _envelope(content: str) -> dict[str, Any]:
        return {"id": "chatcmpl-fault", "object": "chat.completion", "created": int(time.time()),
                "model": "fault-llm",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append(body)
        mode = self._plan.popleft() if self._plan else self.default
        self.modes_served.append(mode)
        if mode == "stall":
            await asyncio.sleep(self.stall_s)
        elif mode == "slow":
            await asyncio.sleep(self.slow_s)
        if mode == "429":
            return web.json_response({"error": {"message": "rate limited", "type": "rate_limit"}}, status=429,
                                     headers={"Retry-After": self.retry_after})
        if mode in ("500", "503"):
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=int(mode))
        if mode == "drop":
            request.transport.close()
            raise asyncio.CancelledError()
        if mode == "malformed":
            return web.Response(body=b'{"choices": [{"message": {"content": "{\\"headl', status=200,
                                content_type="application/json")
        if mode == "not_json":
            return web.json_response(self._envelope("Sure! Here is some lovely copy for you."))
        content = orjson.dumps(self._copy(mode, body)).decode()
        return web.json_response(self._envelope(content))
