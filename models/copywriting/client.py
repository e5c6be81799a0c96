"""One chat completion against any OpenAI-compatible endpoint, with typed failures.

Uses the ``openai`` package's ``AsyncOpenAI`` with its own retries turned off: the
copy pool owns the retry, deadline and circuit-breaker policy. Every failure comes
out as ``LLMError`` with a short ``reason`` (a metric label), whether it is worth
retrying, and the server's ``Retry-After`` when it sent one. The API key is never
logged; error messages carry no request content.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Any

import openai

from models.copywriting.prompt import MAX_TOKENS, RESPONSE_FORMAT


class LLMError(Exception):
    """A completion that could not be used."""

    def __init__(self, reason: str, *, retryable: bool = False, retry_after_s: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(reason if status is None else f"{reason} (HTTP {status})")
        self.reason = reason
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.status = status


@dataclass(slots=True, frozen=True)
class Answer:
    text: str
    model: str


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms``.

    >>> parse_retry_after({"retry-after": "2"})
    2.0
    >>> parse_retry_after({"retry-after-ms": "250"})
    0.25
    >>> parse_retry_after({"retry-after": "Thu, 01 Jan 2026 00:00:10 GMT"}, now=1767225600.0)
    10.0
    >>> parse_retry_after({}) is None
    True
    """
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class LLMClient:
    """Chat completions for copy; ``complete`` makes exactly one HTTP attempt."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *,
                 structured: bool = True, max_tokens: int = MAX_TOKENS, temperature: float = 0.7) -> None:
        self.model = model
        self.structured = structured
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "unused", max_retries=0,
            timeout=openai.Timeout(30.0, connect=5.0))  # the HTTP library's own type, whichever openai uses

    @classmethod
    def from_settings(cls, settings: Any) -> "LLMClient":
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key is not None else None
        return cls(settings.llm_base_url, settings.llm_model, key)

    async def complete(self, messages: list[dict[str, str]], timeout_s: float) -> Answer:
        """One completion within ``timeout_s`` seconds, or ``LLMError``."""
        kwargs: dict[str, Any] = {}
        if self.structured:
            kwargs["response_format"] = RESPONSE_FORMAT
        try:
            resp = await self._client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=self.max_tokens,
                temperature=self.temperature, timeout=max(0.01, timeout_s), **kwargs)
        except openai.APITimeoutError as e:
            raise LLMError("timeout", retryable=False) from e
        except openai.RateLimitError as e:
            raise LLMError("rate_limited", retryable=True, status=429,
                           retry_after_s=parse_retry_after(e.response.headers)) from e
        except openai.APIStatusError as e:
            status = e.status_code
            retryable = status >= 500 or status in (408, 409)
            raise LLMError("server_error" if status >= 500 else "rejected", retryable=retryable, status=status,
                           retry_after_s=parse_retry_after(e.response.headers)) from e
        except openai.APIConnectionError as e:
            raise LLMError("connection", retryable=True) from e
        except (openai.APIResponseValidationError, ValueError) as e:
            raise LLMError("bad_response", retryable=False) from e
        try:
            choice = resp.choices[0]
            text = choice.message.content
        except (AttributeError, IndexError, TypeError) as e:
            raise LLMError("bad_response") from e
        if not isinstance(text, str) or not text.strip():
            raise LLMError("empty")
        return Answer(text, str(getattr(resp, "model", None) or self.model))

    async def close(self) -> None:
        await self._client.close()
