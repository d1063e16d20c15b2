"""Grammar-constrained sampling that checks one token per step instead of the whole vocabulary.

llama-cpp-python (0.3.x) puts the grammar sampler at the head of its chain, so every generated token
first runs the grammar over all ~49k vocabulary entries: on SmolLM2-135M that doubles the time per
token. llama.cpp's own ``common_sampler`` does it the other way round, and so do we: sample from the
unconstrained chain, check only that token against the grammar, and only when the grammar rejects it
apply the grammar to the full candidate list and sample again. With greedy decoding the result is the
same token sequence (the argmax of the constrained logits is the unconstrained argmax whenever that
is allowed); with temperature it is llama.cpp's distribution, not llama-cpp-python's.

Only the chain MAIE uses is taken over (no penalties, mirostat or logits processors, whose samplers
keep state that a rejected token would corrupt); any other request gets the stock sampler.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

_TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)


class LazyGrammarSampler:
    """A drop-in for llama-cpp-python's ``LlamaSampler`` in ``Llama.generate`` (it only calls ``sample``)."""

    def __init__(self, llama: Any, chain: Any, grammar: Any) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._chain = chain  # kept alive: it owns the unconstrained llama_sampler
        self._grammar = llama_cpp.llama_sampler_init_grammar(
            llama._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not self._grammar:
            raise ValueError("llama.cpp could not parse the grammar")
        self._n_vocab = int(llama.n_vocab())
        self._ids = np.arange(self._n_vocab, dtype=np.intc)
        self._candidates = np.zeros(self._n_vocab, dtype=_TOKEN_DATA)
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_array = llama_cpp.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
        self.sampled = 0
        self.resampled = 0

    def sample(self, ctx: Any, idx: int = -1) -> int:
        lib = self._lib
        token = int(lib.llama_sampler_sample(self._chain.sampler, ctx.ctx, idx))
        self.sampled += 1
        if not self._allows(token):
            self.resampled += 1
            token = self._constrained(ctx, idx)
        # Only a grammar-allowed token may be accepted: llama.cpp aborts on any other.
        lib.llama_sampler_accept(self._grammar, token)
        return token

    def _allows(self, token: int) -> bool:
        self._one[0] = self._lib.llama_token_data(token, 1.0, 0.0)
        self._one_array.size = 1
        self._one_array.selected = -1
        self._one_array.sorted = False
        self._lib.llama_sampler_apply(self._grammar, ctypes.byref(self._one_array))
        return bool(np.isfinite(self._one[0].logit))

    def _constrained(self, ctx: Any, idx: int) -> int:
        """The stock path: the grammar over every candidate, then the unconstrained chain."""
        lib = self._lib
        logits = lib.llama_get_logits_ith(ctx.ctx, idx)
        cands = self._candidates
        cands["id"] = self._ids
        cands["logit"] = np.ctypeslib.as_array(logits, shape=(self._n_vocab,))
        cands["p"] = 0.0
        array = lib.llama_token_data_array(
            data=cands.ctypes.data_as(lib.llama_token_data_p),
            size=self._n_vocab,
            selected=-1,
            sorted=False,
        )
        lib.llama_sampler_apply(self._grammar, ctypes.byref(array))
        lib.llama_sampler_apply(self._chain.sampler, ctypes.byref(array))
        if not 0 <= array.selected < array.size:
            raise RuntimeError("the grammar allows no token here")
        return int(cands["id"][array.selected])

    def close(self) -> None:
        if self._grammar:
            self._lib.llama_sampler_free(self._grammar)
            self._grammar = None
        self._chain.close()

    def __del__(self) -> None:
        self.close()


def install(llama: Any) -> bool:
    """Make ``llama`` sample grammars lazily; requests outside the taken-over chain keep the stock one.

    False (and nothing changed) when this llama-cpp-python lacks the hooks it relies on."""
    import llama_cpp

    needed = ("llama_sampler_init_grammar", "llama_sampler_apply", "llama_sampler_accept", "llama_get_logits_ith")
    stock = getattr(llama, "_init_sampler", None)
    if stock is None or not all(hasattr(llama_cpp, name) for name in needed):
        return False

    def init_sampler(**kwargs: Any) -> Any:
        grammar = kwargs.get("grammar")
        neutral = (
            kwargs.get("repeat_penalty", 1.0) == 1.0
            and kwargs.get("frequency_penalty", 0.0) == 0.0
            and kwargs.get("presence_penalty", 0.0) == 0.0
            and kwargs.get("mirostat_mode", 0) == 0
            and kwargs.get("logits_processor") is None
        )
        if grammar is None or not neutral:
            return stock(**kwargs)
        chain = stock(**{**kwargs, "grammar": None})
        return LazyGrammarSampler(llama, chain, grammar)

    llama._init_sampler = init_sampler
    return True
