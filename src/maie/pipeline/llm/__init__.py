"""LLM stages: clean transcript (``enhance``) and structured summary (``summarize``).

One client interface (``LlmClient.chat``) with two backends: any OpenAI-compatible server when
``MAIE_LLM__BASE_URL`` is set, else llama-cpp-python embedded in the worker.
"""

from maie.pipeline.llm.client import LlmClient, LlmReply, Message
from maie.pipeline.llm.embedded import EmbeddedClient, bundled_gguf_path
from maie.pipeline.llm.enhance import edit_rate, enhance
from maie.pipeline.llm.factory import Purpose, get_llm, stage_params
from maie.pipeline.llm.grammar import schema_to_gbnf
from maie.pipeline.llm.openai_compat import OpenAICompatClient
from maie.pipeline.llm.summarize import summarize

__all__ = [
    "EmbeddedClient",
    "LlmClient",
    "LlmReply",
    "Message",
    "OpenAICompatClient",
    "Purpose",
    "bundled_gguf_path",
    "edit_rate",
    "enhance",
    "get_llm",
    "schema_to_gbnf",
    "stage_params",
    "summarize",
]
