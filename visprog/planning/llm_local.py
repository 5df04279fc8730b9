"""A local Hugging Face causal LM that, when planning, can only write valid programs.

`constrain_to(registry, inputs)` returns a constrained view of the client (sharing the
loaded model); the client itself samples free text (e.g. for the List module's queries).
In the constrained view, sampling is constrained with llguidance: before each token, a matcher for the grammar of
the current step (`visprog.llm_grammar.StepGrammar`) masks every token that would not keep
the text a valid prefix. The program is written a step (line) at a time; after each line the
real parser reads it and the defined variables and their types are updated, so the next
line may only read what exists with a type that fits. The result parses and checks.

Termination is bounded: each line's grammar is finite (bounded names, strings, lists and
expressions) and a line stops as soon as its matcher accepts (at its newline); the program
ends at a `Result` step, which is the only step allowed once `max_steps` lines or
`max_tokens` tokens have been written.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

from visprog.planning.chat import LLMError, LLMReply
from visprog.planning.llm_grammar import StepGrammar
from visprog.values.types import parse_types

# Room kept for the program after the prompt (tokens), on top of `max_tokens`: the last
# lines may run past `max_tokens` before the closing Result is forced.
_GENERATION_MARGIN = 512
# A line longer than this is a bug in the grammar bounds, not a long line.
_MAX_LINE_TOKENS = 4096
DEFAULT_INPUTS = {"IMAGE": "Image", "LEFT": "Image", "RIGHT": "Image"}


class _Loaded:
    """The model, tokenizer and llguidance tokenizer, shared by a client and its views."""

    model: Any = None
    tokenizer: Any = None
    lltok: Any = None
    template: str | None = None  # a chat template from elsewhere (a VLM's processor)


class LocalConstrained:
    """A transformers causal LM; grammar-constrained for programs.

    Args:
        model_path: a local directory (or a hub id already in the local cache).
        model, tokenizer: an already loaded model and fast tokenizer instead of a path.
        registry: when given, every chat writes a program calling these tools (as the view
            `constrain_to` returns does); without it, chat samples free text.
        inputs: input variable -> type, e.g. {"IMAGE": "Image"} (default IMAGE, LEFT, RIGHT).
        device: "cpu", "cuda", ...
        dtype: torch dtype name for loading ("float32", "bfloat16"...); None: the default.
        max_steps: most lines in a program (the last one is the Result).
        max_string, max_list: bounds of string and list literals.
        models: a `visprog.models.ModelManager`: the model is loaded through it (its device
            and dtype), so a vision-language checkpoint that Vqa also uses (same
            checkpoint) is one copy serving both roles; planning then uses its text side.
    """

    def __init__(self, model_path: str | None = None, *, model: Any = None,
                 tokenizer: Any = None, registry: Any = None,
                 inputs: Mapping[str, str] | None = None, device: str = "cpu",
                 dtype: str | None = None, max_steps: int = 12, max_string: int = 60,
                 max_list: int = 6, models: Any = None):
        if model_path is None and (model is None or tokenizer is None):
            raise LLMError("LocalConstrained needs model_path=... or both model= and tokenizer=")
        self.model_path = model_path
        self.device = device
        self.dtype = dtype
        self.max_steps = max(1, int(max_steps))
        self.max_string = int(max_string)
        self.max_list = int(max_list)
        self.models = models
        self._shared = _Loaded()
        self._shared.model, self._shared.tokenizer = model, tokenizer
        self._constrained = registry is not None
        self._registry = registry
        self._inputs = {k: parse_types(v) for k, v in (inputs or DEFAULT_INPUTS).items()}
        self._grammar: StepGrammar | None = None
        self._free_grammar: str | None = None  # a whole-reply grammar (constrain_grammar)
        # Agent mode: modules after which a program may stop (a round ends when the planner
        # looks); set on a view by the planner. Empty: a program ends at its Result.
        self.round_ends: tuple[str, ...] = ()

    # ------------------------------------------------------------------ protocol

    def describe(self) -> dict[str, Any]:
        model = self._shared.model
        name = self.model_path or getattr(getattr(model, "config", None),
                                          "name_or_path", "") or type(model).__name__
        return {"backend": "local", "model": str(name), "base_url": None,
                "constrained": "llguidance", "max_steps": self.max_steps,
                "max_string": self.max_string}

    def constrain_to(self, registry: Any, inputs: Mapping[str, str]) -> "LocalConstrained":
        """A view of this client (same loaded model) whose replies are programs that call
        `registry`'s tools and read `inputs` (name -> type), and that parse and check."""
        view = copy.copy(self)
        view._constrained = True
        view._registry = registry
        view._inputs = {k: parse_types(v) for k, v in inputs.items()}
        view._grammar = None
        view._free_grammar = None
        return view

    def constrain_grammar(self, grammar: str) -> "LocalConstrained":
        """A view of this client (same loaded model) whose every reply is a text of
        `grammar` (llguidance's Lark; bounded, so a reply ends), e.g. the critic's verdict."""
        view = copy.copy(self)
        view._constrained = False
        view._free_grammar = grammar
        return view

    def chat(self, messages: list[dict[str, str]], *, temperature: float = 0.0,
             max_tokens: int = 512, n: int = 1, seed: int | None = None,
             stop: list[str] | None = None) -> LLMReply:
        """`n` replies: programs when constrained (then `stop` is not needed: the grammar
        ends each program), else free text up to `max_tokens`, end of text or a `stop`.

        Raises:
            LLMError: the model can't be loaded, or the prompt leaves no room to write.
        """
        import torch

        model, tok = self._load()
        ids = self._prompt_ids(messages)
        ctx = _context_size(model)
        keep = ctx - max_tokens - _GENERATION_MARGIN
        if keep < 16:
            raise LLMError(f"the model's context ({ctx} tokens) is too small for "
                           f"max_tokens={max_tokens}")
        ids = ids[-keep:]  # the end of the prompt (the question) matters most
        texts, completion = [], 0
        for i in range(max(1, n)):
            gen = torch.Generator(device="cpu").manual_seed(0 if seed is None else seed + i)
            if self._free_grammar is not None:
                text, used = self._sample_grammar(ids, self._free_grammar, temperature, gen)
            elif self._constrained:
                text, used = self._sample_program(ids, temperature, max_tokens, gen)
            else:
                text, used = self._sample_text(ids, temperature, max_tokens, gen, stop or [])
            texts.append(text)
            completion += used
        usage = {"prompt_tokens": len(ids) * len(texts), "completion_tokens": completion,
                 "total_tokens": len(ids) * len(texts) + completion}
        return LLMReply(text=texts[0], texts=texts, usage=usage, model=self.describe()["model"])

    # ------------------------------------------------------------------ internals

    def _load(self) -> tuple[Any, Any]:
        shared = self._shared
        if (shared.model is None or shared.tokenizer is None) and self.models is not None:
            self._load_managed()
        if shared.model is None or shared.tokenizer is None:
            try:
                import torch
                from transformers import AutoModelForCausalLM, AutoTokenizer
            except ImportError as e:  # pragma: no cover - environment
                raise LLMError("the local LLM needs torch and transformers: "
                               "pip install 'visprog[models,llm]'") from e
            try:
                shared.tokenizer = shared.tokenizer or AutoTokenizer.from_pretrained(
                    self.model_path)
                kw = {"dtype": getattr(torch, self.dtype)} if self.dtype else {}
                shared.model = shared.model or AutoModelForCausalLM.from_pretrained(
                    self.model_path, **kw)
            except (OSError, ValueError) as e:
                raise LLMError(f"cannot load the local LLM {self.model_path!r}: {e}") from e
        if shared.lltok is None:
            try:
                import llguidance.hf
            except ImportError as e:  # pragma: no cover - environment
                raise LLMError("constrained decoding needs llguidance: "
                               "pip install 'visprog[llm]'") from e
            if self.models is None:
                shared.model.to(self.device)
            self.device = str(shared.model.device)
            shared.model.eval()
            n_vocab = shared.model.get_output_embeddings().weight.shape[0]
            shared.lltok = llguidance.hf.from_tokenizer(shared.tokenizer, n_vocab=n_vocab)
        return shared.model, shared.tokenizer

    def _load_managed(self) -> None:
        """The model through the model manager: a vision-language checkpoint as the bundle
        Vqa loads (kind VLM_KIND), anything else as a causal LM."""
        from visprog.models import ModelLoadError, resolve_checkpoint
        from visprog.models.vlm import VLM_KIND, is_vlm_checkpoint, load_vlm

        shared = self._shared
        try:
            resolved = resolve_checkpoint(self.model_path)
            if is_vlm_checkpoint(resolved):
                model, processor = self.models.get(VLM_KIND, self.model_path, load_vlm)
                tok = processor.tokenizer
                # text-only chats use the processor's template when the tokenizer has none
                shared.template = getattr(tok, "chat_template", None) or getattr(
                    processor, "chat_template", None)
            else:
                model, tok = self.models.get("causal_lm", self.model_path, _load_causal_lm)
        except ModelLoadError as e:
            raise LLMError(f"cannot load the local LLM {self.model_path!r}: {e}") from e
        shared.model, shared.tokenizer = model, tok

    def _step_grammar(self) -> StepGrammar:
        if self._grammar is None:
            if self._registry is None:  # the tools come from the caller (the planner)
                raise LLMError("constrained decoding needs the tools it may call: pass "
                               "registry= or use constrain_to(registry, inputs)")
            self._grammar = StepGrammar(self._registry, max_string=self.max_string,
                                        max_list=self.max_list)
        return self._grammar

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        tok = self._shared.tokenizer
        template = getattr(tok, "chat_template", None) or self._shared.template
        if template:
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                           chat_template=template)
        else:  # a base model: a plain transcript ending where the answer goes
            text = "".join(f"{m['role']}:\n{m['content']}\n\n" for m in messages) + "assistant:\n"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        bos = getattr(tok, "bos_token_id", None)
        return ([bos] if bos is not None and not template else []) + ids

    def _sample_program(self, prompt: list[int], temperature: float, max_tokens: int,
                        gen: Any) -> tuple[str, int]:
        """One program, a line at a time. Returns (text, tokens generated)."""
        import torch

        model = self._shared.model
        writer = _ProgramWriter(self, temperature, max_tokens, gen)
        with torch.no_grad():
            out = model(torch.tensor([prompt], device=self.device), use_cache=True,
                        **_positions(0, len(prompt), self.device))
            past, logits = _kv(out), out.logits[0, -1]
            pos = len(prompt)
            while not writer.done:
                token = writer.next_token(logits)
                if writer.done:
                    break
                out = model(torch.tensor([[token]], device=self.device),
                            **_with_kv(model, past), use_cache=True,
                            **_positions(pos, 1, self.device))
                past, logits = _kv(out), out.logits[0, -1]
                pos += 1
        return writer.text(), writer.used

    def chat_batch(self, calls: Any, *, temperature: float = 0.0, max_tokens: int = 512,
                   n: int = 1, seed: int | None = None, stop: list[str] | None = None) -> None:
        """Several chats at once (`visprog.planning.chat.chat_many`: agent mode's rounds of
        many items): constrained programs of views of this model are written as one batch,
        the prompts left-padded, one forward pass per token for all of them, each row held
        to its own grammar and variables; a row that is done waits for the others. Anything
        else (free text, `n` > 1) goes one call at a time. Each call gets its reply or
        error."""
        from visprog.planning.chat import LLMReply, chat_one, text_only

        sampling = {"temperature": temperature, "max_tokens": max_tokens, "n": n,
                    "seed": seed, "stop": stop}
        views = [c.client for c in calls]
        together = n == 1 and all(isinstance(v, LocalConstrained) and v._constrained
                                  and v._free_grammar is None and v._shared is self._shared
                                  for v in views)
        if not together:
            for call in calls:
                chat_one(call, sampling)
            return
        import time

        import torch

        started = time.perf_counter()
        try:
            model, tok = self._load()
            ctx = _context_size(model)
            keep = ctx - max_tokens - _GENERATION_MARGIN
            if keep < 16:
                raise LLMError(f"the model's context ({ctx} tokens) is too small for "
                               f"max_tokens={max_tokens}")
            prompts = [v._prompt_ids(text_only(c.messages))[-keep:]
                       for v, c in zip(views, calls)]
            writers = [_ProgramWriter(v, temperature, max_tokens, torch.Generator(
                device="cpu").manual_seed(0 if seed is None else seed)) for v in views]
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            width = max(map(len, prompts))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts],
                               device=self.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                                device=self.device)
            # each row's positions count its own tokens from 0 (left padding takes none)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                out = model(ids, attention_mask=mask, position_ids=positions, use_cache=True)
                past, logits = _kv(out), out.logits[:, -1]
                pos = torch.tensor([len(p) for p in prompts], device=self.device)
                while not all(w.done for w in writers):
                    tokens = [pad if w.done else w.next_token(logits[i])
                              for i, w in enumerate(writers)]
                    if all(w.done for w in writers):
                        break
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                    out = model(torch.tensor(tokens, device=self.device)[:, None],
                                attention_mask=mask, position_ids=pos[:, None],
                                **_with_kv(model, past), use_cache=True)
                    past, logits = _kv(out), out.logits[:, -1]
                    pos = pos + 1
        except Exception as e:  # the batch failed: every call reports it
            for call in calls:
                call.error = e if isinstance(e, LLMError) else LLMError(
                    f"the local LLM failed: {type(e).__name__}: {e}")
                call.seconds = time.perf_counter() - started
            return
        seconds = (time.perf_counter() - started) / len(calls)
        for call, w, p in zip(calls, writers, prompts):
            call.reply = LLMReply(text=w.text(), texts=[w.text()],
                                  usage={"prompt_tokens": len(p), "completion_tokens": w.used,
                                         "total_tokens": len(p) + w.used},
                                  model=self.describe()["model"])
            call.seconds = seconds

    def _sample_grammar(self, prompt: list[int], grammar: str, temperature: float,
                        gen: Any) -> tuple[str, int]:
        """One reply of `grammar`, stopping as soon as the matcher accepts (the grammar
        ends with its own terminator). Returns (text, tokens generated)."""
        import llguidance
        import llguidance.numpy as llt_np
        import numpy as np
        import torch

        model, tok = self._shared.model, self._shared.tokenizer
        lltok = self._shared.lltok
        matcher = llguidance.LLMatcher(lltok, llguidance.grammar_from("lark", grammar))
        if matcher.is_error():
            raise LLMError(f"the reply grammar is not valid: {matcher.get_error()}")
        mask = llt_np.allocate_token_bitmask(1, lltok.vocab_size)
        out_ids: list[int] = []
        with torch.no_grad():
            out = model(torch.tensor([prompt], device=self.device), use_cache=True,
                        **_positions(0, len(prompt), self.device))
            pos = len(prompt)
            while not matcher.is_accepting():
                if len(out_ids) >= _MAX_LINE_TOKENS:
                    raise LLMError("internal: a constrained reply did not end")
                llt_np.fill_next_token_bitmask(matcher, mask, 0)
                allowed = np.unpackbits(mask[0].view(np.uint8), bitorder="little")
                scores = out.logits[0, -1].float().clone()
                keep = torch.from_numpy(allowed[:scores.shape[0]].astype(bool))
                scores[~keep.to(scores.device)] = float("-inf")
                token = _pick(scores, temperature, gen)
                if not matcher.consume_token(token):
                    raise LLMError(f"internal: constrained token refused: {matcher.get_error()}")
                out_ids.append(token)
                out = model(torch.tensor([[token]], device=self.device),
                            **_with_kv(model, _kv(out)), use_cache=True,
                            **_positions(pos, 1, self.device))
                pos += 1
        return tok.decode(out_ids), len(out_ids)

    def _sample_text(self, prompt: list[int], temperature: float, max_tokens: int, gen: Any,
                     stop: list[str]) -> tuple[str, int]:
        """Free text: up to `max_tokens` tokens, the end-of-text token, or a stop string."""
        import torch

        model, tok = self._shared.model, self._shared.tokenizer
        eos = getattr(tok, "eos_token_id", None)
        out_ids: list[int] = []
        with torch.no_grad():
            out = model(torch.tensor([prompt], device=self.device), use_cache=True,
                        **_positions(0, len(prompt), self.device))
            pos = len(prompt)
            for _ in range(max_tokens):
                token = _pick(out.logits[0, -1].float(), temperature, gen)
                if token == eos:
                    break
                out_ids.append(token)
                text = tok.decode(out_ids)
                cut = min((text.find(s) for s in stop if s and s in text), default=-1)
                if cut >= 0:
                    return text[:cut], len(out_ids)
                out = model(torch.tensor([[token]], device=self.device),
                            **_with_kv(model, _kv(out)), use_cache=True,
                            **_positions(pos, 1, self.device))
                pos += 1
        return tok.decode(out_ids), len(out_ids)


class _ProgramWriter:
    """Writes one program a token at a time, a line at a time: before each token, the
    matcher of the current line's grammar (`StepGrammar`, from the variables defined so far)
    masks every token that would not keep the line a valid prefix; when a line is done the
    real parser reads it and the variables and their types are updated (the checker's
    typing, so a pass-through step such as Look keeps its argument's type). The program
    ends at a Result, at a module of the client's `round_ends`, or after `max_steps` lines
    (the last must be a Result, or a round's end), or once `max_tokens` are used (then the
    next line must be)."""

    def __init__(self, client: "LocalConstrained", temperature: float, max_tokens: int,
                 gen: Any):
        import llguidance.numpy as llt_np

        self.client = client
        self.temperature, self.max_tokens, self.gen = temperature, max_tokens, gen
        self.lltok = client._shared.lltok
        self.grammar = client._step_grammar()
        self.env = dict(client._inputs)
        self.mask = llt_np.allocate_token_bitmask(1, self.lltok.vocab_size)
        self.lines: list[str] = []
        self.line_ids: list[int] = []
        self.used = 0
        self.done = False
        self._start_line()

    def _final(self) -> bool:
        return len(self.lines) == self.client.max_steps - 1 or self.used >= self.max_tokens

    def _start_line(self) -> None:
        import llguidance

        text = self.grammar.text(self.env, final=self._final(), ends=self.client.round_ends)
        self.matcher = llguidance.LLMatcher(self.lltok, llguidance.grammar_from("lark", text))
        if self.matcher.is_error():
            raise LLMError(f"internal: step grammar rejected: {self.matcher.get_error()}")
        self.line_ids = []

    def next_token(self, logits: Any) -> int:
        """The next token, picked from `logits` among those the grammar allows."""
        import llguidance.numpy as llt_np
        import numpy as np
        import torch

        if len(self.line_ids) >= _MAX_LINE_TOKENS:
            raise LLMError("internal: a constrained line did not end")
        llt_np.fill_next_token_bitmask(self.matcher, self.mask, 0)
        # Bit i of the packed int32 mask allows token i (little-endian words).
        allowed = np.unpackbits(self.mask[0].view(np.uint8), bitorder="little")
        scores = logits.float().clone()
        keep = torch.from_numpy(allowed[:scores.shape[0]].astype(bool))
        scores[~keep.to(scores.device)] = float("-inf")
        token = _pick(scores, self.temperature, self.gen)
        if not self.matcher.consume_token(token):
            raise LLMError(f"internal: constrained token refused: {self.matcher.get_error()}")
        self.line_ids.append(token)
        if self.matcher.is_accepting():
            self._end_line()
        return token

    def _end_line(self) -> None:
        from visprog.language.checker import defined_types
        from visprog.language.parser import parse

        client = self.client
        self.used += len(self.line_ids)
        line = client._shared.tokenizer.decode(self.line_ids)
        self.lines.append(line)
        program = parse(line)
        tool = client._registry.get(program.steps[0].module)
        self.env = defined_types(program, client._registry, self.env)
        if tool.result or tool.name in client.round_ends or len(self.lines) >= client.max_steps:
            self.done = True
        else:
            self._start_line()

    def text(self) -> str:
        return "".join(self.lines).rstrip("\n")


def _pick(scores: Any, temperature: float, gen: Any) -> int:
    import torch

    if temperature <= 0:
        return int(torch.argmax(scores))
    probs = torch.softmax(scores / temperature, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


def _with_kv(model: Any, cache: Any) -> dict[str, Any]:
    """The key-value cache as the model's forward takes it: `cache` where transformers has
    renamed it (`past_key_values` warns there, and goes in 5.40), else `past_key_values`."""
    import inspect

    takes = inspect.signature(model.forward).parameters
    return {"cache" if "cache" in takes else "past_key_values": cache}


def _kv(out: Any) -> Any:
    """The key-value cache a forward gave back, under either name (see `_with_kv`)."""
    return out["cache"] if "cache" in out.keys() else out["past_key_values"]


def _positions(start: int, n: int, device: Any) -> dict[str, Any]:
    """Explicit position ids. Why: Qwen-VL models keep multimodal rope offsets from their
    last `generate` (a Vqa batch) and apply them to a call without positions, which breaks
    a text-only pass; for a plain causal LM these are the positions it would use anyway."""
    import torch

    return {"position_ids": torch.arange(start, start + n, device=device)[None]}


def _load_causal_lm(path: str, device: str, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device), tok


def _context_size(model: Any) -> int:
    cfg = model.config
    if hasattr(cfg, "get_text_config"):  # a vision-language model: its text side's context
        cfg = cfg.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 4096
