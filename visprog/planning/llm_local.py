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
`max_tokens` tokens have been written. In agent mode a view's `round_ends` (Look) may end a
round too.

A vision-language checkpoint loaded through the model manager (Vqa's: Qwen3-VL, Qwen2.5-VL,
Qwen3.5, SmolVLM) takes images (`takes_images`): a message's image parts go through its
processor and chat template, the prompt is decoded at explicit (for Qwen-VL, 3-D multimodal)
positions, and the grammar constraint is the same. `chat_many` decodes several conversations
as one batch, every token of every row one forward pass; `chat_batch` (what
`visprog.planning.chat.chat_many` calls: agent mode's rounds of many items) sends the chats
of several views of one loaded model through it, each row written by its own view (its
grammar, variables and round ends).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

from visprog.planning.chat import (IMAGE_MAX_PIXELS, LLMError, LLMReply, check_messages,
                                   image_pixels, images_flag, message_images,
                                   text_messages)
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
    processor: Any = None  # a vision-language model's processor (its images, its template)


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
            checkpoint) is one copy serving both roles.
        images: whether a vision-language checkpoint gets the messages' images (default
            True); False, or a text-only model, gets each message's text.
        image_max_pixels: images are scaled down to at most this many pixels before the
            processor sees them (default 1024x1024, as for an OpenAI-compatible server),
            which bounds their tokens (Qwen3-VL: one per 32x32 pixels).
    """

    def __init__(self, model_path: str | None = None, *, model: Any = None,
                 tokenizer: Any = None, registry: Any = None,
                 inputs: Mapping[str, str] | None = None, device: str = "cpu",
                 dtype: str | None = None, max_steps: int = 12, max_string: int = 60,
                 max_list: int = 6, models: Any = None, images: bool = True,
                 image_max_pixels: int | None = None):
        if model_path is None and (model is None or tokenizer is None):
            raise LLMError("LocalConstrained needs model_path=... or both model= and tokenizer=")
        self.model_path = model_path
        self.device = device
        self.dtype = dtype
        self.max_steps = max(1, int(max_steps))
        self.max_string = int(max_string)
        self.max_list = int(max_list)
        self.models = models
        self.images = images_flag(images)
        self.image_max_pixels = image_pixels(IMAGE_MAX_PIXELS if image_max_pixels is None
                                             else image_max_pixels)
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

    @property
    def takes_images(self) -> bool:
        """Whether image parts reach the model: a vision-language checkpoint loaded through
        the model manager (as Vqa's), unless `images=False`. Reads the checkpoint's config
        before the model is loaded; loads nothing."""
        shared = self._shared
        if not self.images:
            return False
        if shared.processor is not None:
            return True
        if shared.model is not None or self.models is None or not self.model_path:
            return False
        from visprog.models import ModelLoadError, resolve_checkpoint
        from visprog.models.vlm import is_vlm_checkpoint

        try:
            return is_vlm_checkpoint(resolve_checkpoint(self.model_path))
        except ModelLoadError:
            return False

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

    def chat(self, messages: list[dict[str, Any]], *, temperature: float = 0.0,
             max_tokens: int = 512, n: int = 1, seed: int | None = None,
             stop: list[str] | None = None) -> LLMReply:
        """`n` replies: programs when constrained (then `stop` is not needed: the grammar
        ends each program), else free text up to `max_tokens`, end of text or a `stop`.
        Image parts reach a vision-language model through its processor (`takes_images`);
        any other model gets each message's text.

        Raises:
            LLMError: malformed messages, the model can't be loaded, or the prompt leaves no
                room to write.
        """
        return self.chat_many([messages], temperature=temperature, max_tokens=max_tokens,
                              n=n, seed=seed, stop=stop)[0]

    def chat_many(self, conversations: Sequence[list[dict[str, Any]]], *,
                  temperature: float = 0.0, max_tokens: int = 512, n: int = 1,
                  seed: int | None = None, stop: list[str] | None = None,
                  views: Sequence["LocalConstrained"] | None = None) -> list[LLMReply]:
        """One reply (of `n` samples) per conversation, as `chat` gives each, decoded
        together: the prompts are left-padded into one batch with explicit positions (3-D
        multimodal ones for a Qwen-VL prompt with images), and every token of every row is
        one forward pass of the batch; a row that is done waits. Sample i of every
        conversation uses the generator seeded `seed + i` (0 + i without a seed), so a
        conversation gets the same tokens alone and in a batch.

        Args:
            views: the client each conversation is written by (views of this loaded model,
                e.g. constrained to different programs so far); default: this one for all.

        Raises:
            LLMError: as `chat`; views that are not of this loaded model.
        """
        import torch

        conversations = list(conversations)
        for messages in conversations:
            check_messages(messages)
        views = [self] * len(conversations) if views is None else list(views)
        if len(views) != len(conversations) or any(
                not isinstance(v, LocalConstrained) or v._shared is not self._shared
                for v in views):
            raise LLMError("chat_many's views must be one per conversation, each a view of "
                           "this loaded model")
        if not conversations:
            return []
        model, _ = self._load()
        ctx = _context_size(model)
        keep = ctx - max_tokens - _GENERATION_MARGIN
        if keep < 16:
            raise LLMError(f"the model's context ({ctx} tokens) is too small for "
                           f"max_tokens={max_tokens}")
        n = max(1, int(n))
        rows = [messages for messages in conversations for _ in range(n)]
        batch, prompt_lengths, image_tokens = self._encode(rows, keep)
        writers = []
        for view in views:
            for i in range(n):
                gen = torch.Generator(device="cpu").manual_seed(0 if seed is None else seed + i)
                writers.append(view._writer(temperature, max_tokens, stop or [], gen))
        self._decode(batch, writers)
        replies = []
        for k in range(len(conversations)):
            mine = range(k * n, (k + 1) * n)
            texts = [writers[r].text() for r in mine]
            prompt = sum(prompt_lengths[r] for r in mine)
            completion = sum(writers[r].used for r in mine)
            usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                     "total_tokens": prompt + completion}
            images = sum(image_tokens[r] for r in mine)
            if images:
                usage["image_tokens"] = images
            replies.append(LLMReply(text=texts[0], texts=texts, usage=usage,
                                    model=self.describe()["model"]))
        return replies

    def chat_batch(self, calls: Sequence[Any], **sampling: Any) -> None:
        """`visprog.planning.chat.chat_many`'s batch: the calls whose clients are views of
        this loaded model go through `chat_many` as one batch (each row written by its own
        view); any other call goes alone (`chat_one`). Each call gets its reply or error
        (a batch that fails gives every call of it the error) and its share of the time."""
        import time

        from visprog.planning.chat import chat_one

        mine = [c for c in calls if isinstance(c.client, LocalConstrained)
                and c.client._shared is self._shared]
        for call in calls:
            if not any(call is c for c in mine):
                chat_one(call, sampling)
        if not mine:
            return
        started = time.perf_counter()
        try:
            replies = self.chat_many([c.messages for c in mine],
                                     views=[c.client for c in mine], **sampling)
        except Exception as e:  # the batch failed: every call of it reports it
            error = e if isinstance(e, LLMError) else LLMError(
                f"the local LLM failed: {type(e).__name__}: {e}")
            replies = [None] * len(mine)
        else:
            error = None
        seconds = (time.perf_counter() - started) / len(mine)
        for call, reply in zip(mine, replies):
            call.reply, call.error, call.seconds = reply, error, seconds

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
                shared.processor = processor
                # One template for text-only and image prompts: the processor's (the
                # published VLMs keep it there), else the tokenizer's.
                shared.template = getattr(processor, "chat_template", None) or getattr(
                    tok, "chat_template", None)
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

    def _template(self) -> str | None:
        return self._shared.template or getattr(self._shared.tokenizer, "chat_template", None)

    def _template_kwargs(self) -> dict[str, Any]:
        """Thinking off where the template has the switch (Qwen3.5): a program or a verdict
        is written at once."""
        from visprog.models.vlm import template_kwargs

        return template_kwargs(self._template())

    def _prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        tok = self._shared.tokenizer
        template = self._template()
        if template:
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                           chat_template=template, **self._template_kwargs())
        else:  # a base model: a plain transcript ending where the answer goes
            text = "".join(f"{m['role']}:\n{m['content']}\n\n" for m in messages) + "assistant:\n"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        bos = getattr(tok, "bos_token_id", None)
        return ([bos] if bos is not None and not template else []) + ids

    def _encode(self, rows: list[list[dict[str, Any]]], keep: int
                ) -> tuple[dict[str, Any], list[int], list[int]]:
        """The rows' prompts as one left-padded batch on the model's device: through the
        processor (images scaled to `image_max_pixels`) when a row has an image and the
        model takes them, else token ids from the chat template, each cut to its last
        `keep` tokens (the question matters most). Returns (batch, prompt lengths, image
        tokens per row).

        A prompt with images longer than `keep` tokens leaves out its oldest images, one at
        a time, each replaced by a note saying so, until it fits.

        Raises:
            LLMError: a prompt still too long with no image left to leave out.
        """
        import torch

        from visprog.models import model_inputs

        model, tok = self._shared.model, self._shared.tokenizer
        if self.takes_images and any(message_images(m) for m in rows):
            rows = list(rows)
            while True:
                chats = [[{**m, "content": _parts(m["content"], self.image_max_pixels)}
                          for m in messages] for messages in rows]
                batch = self._shared.processor.apply_chat_template(
                    chats, add_generation_prompt=True, tokenize=True, return_dict=True,
                    return_tensors="pt", processor_kwargs={"padding": True},
                    **self._template_kwargs())
                lengths = [int(x) for x in batch["attention_mask"].sum(1)]
                if max(lengths) <= keep:
                    break
                # too long: the oldest images go first (the newest observation matters most)
                trimmed = [_without_oldest_image(m) if n > keep else m
                           for m, n in zip(rows, lengths)]
                if any(t is None for t in trimmed):
                    raise LLMError(f"a prompt is {max(lengths)} tokens with no image left to "
                                   f"leave out; the model's context leaves {keep} for it: "
                                   f"lower max_tokens or image_max_pixels (now "
                                   f"{self.image_max_pixels})")
                rows = trimmed
            image_id = _image_token_id(model)
            ids = batch["input_ids"]
            images = [int((row == image_id).sum()) if image_id is not None else 0 for row in ids]
            return model_inputs(batch, model), lengths, images
        prompts = [self._prompt_ids(text_messages(m))[-keep:] for m in rows]
        width = max(len(p) for p in prompts)
        pad = _pad_id(tok)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        batch = {"input_ids": ids.to(model.device), "attention_mask": mask.to(model.device)}
        return batch, [len(p) for p in prompts], [0] * len(prompts)

    def _writer(self, temperature: float, max_tokens: int, stop: list[str], gen: Any) -> Any:
        if self._free_grammar is not None:
            return _GrammarWriter(self, self._free_grammar, temperature, gen)
        if self._constrained:
            return _ProgramWriter(self, temperature, max_tokens, gen)
        return _TextWriter(self, temperature, max_tokens, stop, gen)

    def _decode(self, batch: dict[str, Any], writers: list[Any]) -> None:
        """Feed the batch, then one token per row until every writer is done: each writer
        picks its row's next token from the last logits (None once it is done; a done row
        is fed padding, which no live row reads). Positions are explicit, so nothing a
        Qwen-VL model remembers from an earlier call (its rope offsets from a Vqa batch)
        shifts them."""
        import torch

        model = self._shared.model
        device = batch["input_ids"].device
        mask = batch["attention_mask"]
        positions, nxt = _prompt_positions(model, batch)
        pad = _pad_id(self._shared.tokenizer)
        last = _last_logits_only(model)
        cache = _cache_name(model)
        with torch.no_grad():
            out = model(**batch, position_ids=positions, use_cache=True, **last)
            while True:
                logits = out.logits[:, -1]
                tokens = [None if w.done else w.step(logits[b]) for b, w in enumerate(writers)]
                if all(t is None for t in tokens):
                    break
                ids = torch.tensor([[pad if t is None else t] for t in tokens], device=device)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                out = model(input_ids=ids, attention_mask=mask, position_ids=nxt[:, None],
                            use_cache=True, **last, **{cache: getattr(out, cache)})
                nxt = nxt + 1


# -- writers: what a row writes, token by token ------------------------------------------------

class _Writer:
    """A row's sampler: `step(logits)` gives its next token, or None once it is done."""

    def __init__(self, client: LocalConstrained, temperature: float, gen: Any):
        self.tok = client._shared.tokenizer
        self.lltok = client._shared.lltok
        self.temperature, self.gen = temperature, gen
        self.ids: list[int] = []
        self.used = 0
        self.done = False

    def constrained_pick(self, matcher: Any, logits: Any) -> int:
        """The next token among those that keep `matcher`'s text a valid prefix."""
        import llguidance.numpy as llt_np
        import numpy as np
        import torch

        if getattr(self, "_mask", None) is None:
            self._mask = llt_np.allocate_token_bitmask(1, self.lltok.vocab_size)
        llt_np.fill_next_token_bitmask(matcher, self._mask, 0)
        # Bit i of the packed int32 mask allows token i (little-endian words).
        allowed = np.unpackbits(self._mask[0].view(np.uint8), bitorder="little")
        scores = logits.float().clone()
        keep = torch.from_numpy(allowed[:scores.shape[0]].astype(bool))
        scores[~keep.to(scores.device)] = float("-inf")
        token = _pick(scores, self.temperature, self.gen)
        if not matcher.consume_token(token):
            raise LLMError(f"internal: constrained token refused: {matcher.get_error()}")
        return token

    def text(self) -> str:
        return self.tok.decode(self.ids)


class _ProgramWriter(_Writer):
    """One program, a line at a time: each line under the grammar of the step that may come
    next (the variables defined so far, with their types: the checker's typing, so a
    pass-through step such as Look keeps its argument's type). The program ends at a Result,
    at a module of the client's `round_ends` (agent mode: a round may end at a Look), or
    after `max_steps` lines, the last of which must be one of those (as must the next line
    once `max_tokens` are used)."""

    def __init__(self, client: LocalConstrained, temperature: float, max_tokens: int, gen: Any):
        super().__init__(client, temperature, gen)
        self.grammar = client._step_grammar()
        self.registry = client._registry
        self.round_ends = tuple(client.round_ends)
        self.env = dict(client._inputs)
        self.max_steps, self.max_tokens = client.max_steps, max_tokens
        self.lines: list[str] = []
        self.line_ids: list[int] = []
        self.matcher: Any = None
        self.final = False

    def step(self, logits: Any) -> int | None:
        import llguidance

        from visprog.language.checker import defined_types
        from visprog.language.parser import parse

        while True:
            if self.matcher is None:
                line = len(self.lines)
                self.final = line == self.max_steps - 1 or self.used >= self.max_tokens
                self.matcher = llguidance.LLMatcher(self.lltok, llguidance.grammar_from(
                    "lark", self.grammar.text(self.env, final=self.final,
                                              ends=self.round_ends)))
                if self.matcher.is_error():
                    raise LLMError(f"internal: step grammar rejected: {self.matcher.get_error()}")
                self.line_ids = []
            if not self.matcher.is_accepting():
                break
            # the line is complete: read it, learn what it defines
            self.used += len(self.line_ids)
            text = self.tok.decode(self.line_ids)
            self.lines.append(text)
            program = parse(text)
            tool = self.registry.get(program.steps[0].module)
            self.env = defined_types(program, self.registry, self.env)
            self.matcher = None
            if tool.result or tool.name in self.round_ends or len(self.lines) >= self.max_steps:
                self.done = True
                return None
        if len(self.line_ids) >= _MAX_LINE_TOKENS:
            raise LLMError("internal: a constrained line did not end")
        token = self.constrained_pick(self.matcher, logits)
        self.line_ids.append(token)
        return token

    def text(self) -> str:
        return "".join(self.lines).rstrip("\n")


class _GrammarWriter(_Writer):
    """One reply of a whole-reply grammar, ending as soon as the matcher accepts (the
    grammar ends with its own terminator)."""

    def __init__(self, client: LocalConstrained, grammar: str, temperature: float, gen: Any):
        import llguidance

        super().__init__(client, temperature, gen)
        self.matcher = llguidance.LLMatcher(self.lltok, llguidance.grammar_from("lark", grammar))
        if self.matcher.is_error():
            raise LLMError(f"the reply grammar is not valid: {self.matcher.get_error()}")

    def step(self, logits: Any) -> int | None:
        if self.matcher.is_accepting():
            self.done = True
            return None
        if len(self.ids) >= _MAX_LINE_TOKENS:
            raise LLMError("internal: a constrained reply did not end")
        token = self.constrained_pick(self.matcher, logits)
        self.ids.append(token)
        self.used += 1
        return token


class _TextWriter(_Writer):
    """Free text: up to `max_tokens` tokens, the end-of-text token, or a stop string."""

    def __init__(self, client: LocalConstrained, temperature: float, max_tokens: int,
                 stop: list[str], gen: Any):
        super().__init__(client, temperature, gen)
        self.max_tokens, self.stop = max_tokens, [s for s in stop if s]
        self.eos = getattr(self.tok, "eos_token_id", None)
        self.cut: str | None = None

    def step(self, logits: Any) -> int | None:
        if len(self.ids) >= self.max_tokens:
            self.done = True
            return None
        token = _pick(logits.float(), self.temperature, self.gen)
        if token == self.eos:
            self.done = True
            return None
        self.ids.append(token)
        self.used += 1
        if self.stop:
            text = self.tok.decode(self.ids)
            at = min((text.find(s) for s in self.stop if s in text), default=-1)
            if at >= 0:
                self.cut = text[:at]
                self.done = True
                return None
        return token

    def text(self) -> str:
        return self.cut if self.cut is not None else self.tok.decode(self.ids)


def _pick(scores: Any, temperature: float, gen: Any) -> int:
    import torch

    if temperature <= 0:
        return int(torch.argmax(scores))
    probs = torch.softmax(scores / temperature, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


def _prompt_positions(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Explicit positions for a left-padded prompt batch, and each row's next position.
    Why explicit: Qwen-VL models keep multimodal rope offsets from their last `generate` (a
    Vqa batch) and apply them to a call without positions, which breaks a text-only pass.
    A Qwen-VL prompt with images gets its 3-D (time, height, width) positions from the
    model's own `get_rope_index` (an image's tokens share positions, so a row's next
    position is its largest + 1); any other prompt counts its real tokens (padding gets 0)."""
    mask = batch["attention_mask"]
    rope_index = getattr(getattr(model, "model", None), "get_rope_index", None)
    if rope_index is not None and batch.get("image_grid_thw") is not None:
        # (mm_token_type_ids where the processor gives them; older versions find the images
        # by their tokens)
        kinds = ({"mm_token_type_ids": batch["mm_token_type_ids"]}
                 if batch.get("mm_token_type_ids") is not None else {})
        positions, _ = rope_index(batch["input_ids"], image_grid_thw=batch["image_grid_thw"],
                                  attention_mask=mask, **kinds)
        return positions, positions.amax(dim=(0, 2)) + 1
    return (mask.long().cumsum(-1) - 1).clamp(min=0), mask.long().sum(-1)


def _last_logits_only(model: Any) -> dict[str, Any]:
    """Ask for the last position's logits only where the model can (a long prompt's full
    logits over a 150k vocabulary are gigabytes)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


def _cache_name(model: Any) -> str:
    """The forward argument that takes the cache: `cache` from transformers 5.25 on (where
    `past_key_values` warns that it is deprecated), else `past_key_values`."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _pad_id(tok: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tok, name, None)
        if isinstance(value, int):
            return value
    return 0


def _image_token_id(model: Any) -> int | None:
    cfg = model.config
    value = getattr(cfg, "image_token_id", None)
    if value is None:
        value = getattr(cfg, "image_token_index", None)
    return value if isinstance(value, int) else None


LEFT_OUT = "(an earlier image, left out: the model's context is full)"


def _without_oldest_image(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The messages with their first image part replaced by a note that it was left out;
    None when they have no image."""
    for i, m in enumerate(messages):
        content = m.get("content")
        if isinstance(content, str) or not content:
            continue
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image":
                parts = [*content[:j], {"type": "text", "text": LEFT_OUT}, *content[j + 1:]]
                return [*messages[:i], {**m, "content": parts}, *messages[i + 1:]]
    return None


def _parts(content: Any, max_pixels: int) -> list[dict[str, Any]]:
    """A message's content as the processor's chat template takes it: a list of parts, each
    image scaled down to at most `max_pixels` pixels (and RGB)."""
    from visprog.models import bound_pixels, rgb_image

    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [{"type": "image", "image": bound_pixels(rgb_image(p["image"]), max_pixels)}
            if p["type"] == "image" else {"type": "text", "text": p["text"]} for p in content]


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
