"""The one LLM backend: an OpenAI-compatible HTTP client, plus the embedded llama.cpp server it can talk to."""

from planner_service.llm.client import (
    ChatMessage,
    Completion,
    LLMError,
    LLMUnavailable,
    OpenAIClient,
    PromptPastContext,
    SamplingParams,
    ServedModel,
    grammar_fields,
)

__all__ = [
    "ChatMessage",
    "Completion",
    "LLMError",
    "LLMUnavailable",
    "OpenAIClient",
    "PromptPastContext",
    "SamplingParams",
    "ServedModel",
    "grammar_fields",
]
