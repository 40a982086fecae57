"""An OpenAI-compatible chat-completions client: vLLM, llama.cpp's server, Ollama, the embedded server.

Every call has timeouts; only *connecting* is retried (with backoff), because a request that reached
the server may already be generating and must not be sent twice. An unreachable server becomes
:class:`LLMUnavailable` (the API answers 503), an error answer :class:`LLMError` (502).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from httpx_sse import EventSource
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

LLMKind = Literal["llamacpp", "vllm", "none"]
"""Where the grammar goes in the request: llama.cpp's ``grammar``, vLLM's
``structured_outputs.grammar``, or nowhere (any other OpenAI-compatible server)."""

ChatMessage = Mapping[str, str]
log = logging.getLogger(__name__)
_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class LLMUnavailable(Exception):
    """The LLM server could not be reached (or went silent past the read timeout)."""

    http_status = 503  # read by the API's problem handler


class LLMError(Exception):
    """The LLM server answered with an error."""

    http_status = 502

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class PromptPastContext(LLMError):
    """The LLM server refused the prompt as longer than its context window: the caller's to shorten
    (a 400, like the planner's own estimate, ``prompting.PromptTooLong``)."""

    http_status = 400


_CONTEXT_REFUSAL = re.compile(r"maximum context length|exceed_context_size|exceeds the available context", re.I)
"""How vLLM ("This model's maximum context length is N tokens...") and llama.cpp's server
(``exceed_context_size_error``) word a prompt that does not fit."""


@dataclass(frozen=True)
class ServedModel:
    id: str
    max_model_len: int | None = None
    """The server's context window for it (vLLM lists it); None: not said."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    frequency_penalty: float = 0.0
    banned_words: tuple[str, ...] = ()
    """Spellings the model may not write (``"cat"``, ``"Cats"``): a removed subject, a negated one."""


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    seconds: float = 0.0
    first_token_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        generating = self.seconds - (self.first_token_seconds or 0.0)
        return self.completion_tokens / generating if generating > 0 and self.completion_tokens else 0.0


def grammar_fields(kind: LLMKind, grammar: str | None) -> dict[str, Any]:
    """The request-body fields that carry a GBNF grammar to a server of ``kind``."""
    if grammar is None or kind == "none":
        return {}
    if kind == "llamacpp":
        return {"grammar": grammar}
    if kind == "vllm":
        # vLLM >= 0.12; the older top-level ``guided_grammar`` was removed.
        return {"structured_outputs": {"grammar": grammar}}
    raise ValueError(f"unknown LLM kind {kind!r}")


_TOKEN_CACHE_SIZE = 4096


class OpenAIClient:
    """``base_url`` is the OpenAI base, e.g. ``http://host:8000/v1``."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        kind: LLMKind = "none",
        connect_timeout: float = 3.0,
        read_timeout: float = 300.0,
        connect_retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.kind = kind
        self.connect_retries = connect_retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=30.0, pool=connect_timeout)
        self._http = httpx.AsyncClient(headers=headers, timeout=timeout, transport=transport)
        self._tokens: dict[str, list[int]] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    def body(
        self, messages: Sequence[ChatMessage], params: SamplingParams, grammar: str | None, *, stream: bool
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model or "default",
            "messages": [dict(m) for m in messages],
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "seed": params.seed,
            "stream": stream,
            **grammar_fields(self.kind, grammar),
        }
        if params.frequency_penalty:
            body["frequency_penalty"] = params.frequency_penalty
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def ban_fields(self, words: Sequence[str]) -> dict[str, Any]:
        """The request-body fields that keep ``words`` out of the answer, for a server of this kind.

        vLLM takes the words (``bad_words``: it bans a word's last token once the rest is written).
        llama.cpp takes token ids (``logit_bias``); a word is banned where it is one token, with or
        without its leading space (" cat", "Cat"), since banning each piece of a word that takes
        several tokens would ban those pieces everywhere. Other servers: nothing (OpenAI's
        ``logit_bias`` needs the model's token ids, which only the server knows).
        """
        if not words or self.kind == "none":
            return {}
        if self.kind == "vllm":
            return {"bad_words": list(words)}
        ids: dict[int, None] = {}
        try:
            for word in words:
                for text in (word, " " + word):
                    tokens = await self._tokenize(text)
                    if len(tokens) == 1:
                        ids.setdefault(tokens[0], None)
        except LLMError as exc:  # a llama.cpp-like server without /tokenize: plan without the ban
            log.warning("no banned words for this plan: %s", exc)
            return {}
        return {"logit_bias": [[token, False] for token in ids]} if ids else {}

    async def _tokenize(self, text: str) -> list[int]:
        """llama.cpp's ``POST /tokenize`` (at the server's root, beside ``/v1``), remembered."""
        if text not in self._tokens:
            root = self.base_url.removesuffix("/v1")
            request = self._http.build_request("POST", f"{root}/tokenize", json={"content": text})
            response = await self._send(request, stream=False)
            try:
                tokens = [int(t) for t in response.json()["tokens"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise LLMError(f"POST {root}/tokenize did not answer tokens: {response.text[:200]}") from exc
            if len(self._tokens) >= _TOKEN_CACHE_SIZE:
                self._tokens.clear()  # words come from users' prompts: bound what is remembered
            self._tokens[text] = tokens
        return self._tokens[text]

    async def _body(
        self, messages: Sequence[ChatMessage], params: SamplingParams, grammar: str | None, *, stream: bool
    ) -> dict[str, Any]:
        return self.body(messages, params, grammar, stream=stream) | await self.ban_fields(params.banned_words)

    async def _send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_CONNECT_ERRORS),
            stop=stop_after_attempt(self.connect_retries),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    response = await self._http.send(request, stream=stream)
        except _CONNECT_ERRORS as exc:
            raise LLMUnavailable(
                f"the LLM server at {self.base_url} is unreachable after {self.connect_retries} attempts "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        except httpx.TimeoutException as exc:
            raise LLMUnavailable(f"the LLM server at {self.base_url} timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise LLMUnavailable(f"the LLM server at {self.base_url} failed: {type(exc).__name__}: {exc}") from exc
        if response.is_error:
            detail = (await response.aread()).decode(errors="replace")[:2000]
            await response.aclose()
            if response.status_code == 400 and _CONTEXT_REFUSAL.search(detail):
                raise PromptPastContext(
                    f"the prompt does not fit the LLM's context window; shorten it, or lower max_new_tokens "
                    f"(the LLM server said: {detail})",
                    response.status_code,
                )
            raise LLMError(f"the LLM server answered {response.status_code}: {detail}", response.status_code)
        return response

    async def complete(
        self, messages: Sequence[ChatMessage], params: SamplingParams, grammar: str | None
    ) -> Completion:
        started = time.perf_counter()
        request = self._http.build_request(
            "POST", f"{self.base_url}/chat/completions", json=await self._body(messages, params, grammar, stream=False)
        )
        response = await self._send(request, stream=False)
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LLMError(f"the LLM server's answer is not a chat completion: {response.text[:500]}") from exc
        usage = data.get("usage") or {}
        return Completion(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=choice.get("finish_reason"),
            seconds=time.perf_counter() - started,
            extra={"timings": data.get("timings")} if data.get("timings") else {},
        )

    async def stream(self, messages: Sequence[ChatMessage], params: SamplingParams, grammar: str | None) -> ChatStream:
        """Open a streaming completion. Connection and HTTP errors surface here, before any text."""
        started = time.perf_counter()
        request = self._http.build_request(
            "POST", f"{self.base_url}/chat/completions", json=await self._body(messages, params, grammar, stream=True)
        )
        return ChatStream(await self._send(request, stream=True), started)

    async def models(self) -> list[ServedModel]:
        """The served models (``GET /models``); also the readiness probe."""
        request = self._http.build_request("GET", f"{self.base_url}/models", timeout=httpx.Timeout(5.0))
        response = await self._send(request, stream=False)
        try:
            listed = response.json().get("data", [])
            return [ServedModel(str(m["id"]), _positive_int(m.get("max_model_len"))) for m in listed]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LLMError(f"GET {self.base_url}/models did not list models") from exc


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class ChatStream:
    """Text deltas of one streaming completion; :attr:`completion` is complete once iteration ends."""

    def __init__(self, response: httpx.Response, started: float) -> None:
        self._response = response
        self._started = started
        self.completion = Completion(text="")

    async def aclose(self) -> None:
        await self._response.aclose()

    async def deltas(self, deadline: float | None = None) -> AsyncIterator[str]:
        """``deadline`` (``time.monotonic()``): past it, the stream stops as if cut off by max_tokens
        (``finish_reason`` ``"length"``) and the response is closed, which the server reads as an abort."""
        parts: list[str] = []
        chunks = 0
        completion = self.completion
        try:
            async for sse in EventSource(self._response).aiter_sse():
                if sse.data.strip() == "[DONE]":
                    break
                try:
                    data = json.loads(sse.data)
                except ValueError:
                    continue
                if "error" in data:
                    raise LLMError(f"the LLM server failed mid-stream: {data['error']}")
                usage = data.get("usage") or {}
                if usage:
                    completion.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    completion.completion_tokens = int(usage.get("completion_tokens") or 0)
                for choice in data.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    completion.finish_reason = choice.get("finish_reason") or completion.finish_reason
                    if text:
                        if completion.first_token_seconds is None:
                            completion.first_token_seconds = time.perf_counter() - self._started
                        chunks += 1
                        parts.append(text)
                        yield text
                if deadline is not None and time.monotonic() >= deadline and completion.finish_reason is None:
                    completion.finish_reason = "length"
                    completion.extra["deadline"] = True
                    break
        except httpx.TimeoutException as exc:
            raise LLMUnavailable(f"the LLM server went silent mid-stream ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise LLMUnavailable(f"the LLM stream broke: {type(exc).__name__}: {exc}") from exc
        finally:
            await self._response.aclose()
            completion.text = "".join(parts)
            completion.seconds = time.perf_counter() - self._started
            # Servers that ignore stream_options send no usage: one delta is about one token.
            completion.completion_tokens = completion.completion_tokens or chunks
