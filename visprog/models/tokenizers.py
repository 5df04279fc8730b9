"""Tiny tokenizers over small vocabularies, for the tiny random checkpoints the tools build:
BERT's WordPiece, and the BPE ones (CLIP, SigLIP2, byte-level) from one builder, `tiny_bpe`."""
from __future__ import annotations

from typing import Any, Iterable, Sequence


def tiny_bert_tokenizer(words: Iterable[str], *, extra_special: Iterable[str] = ()) -> Any:
    """A BERT WordPiece tokenizer over a small vocabulary (special tokens, characters, words).

    transformers 5 takes the vocabulary as `vocab=` (a dict); `vocab_file=` is silently
    ignored there and every token becomes [UNK].
    """
    from transformers import BertTokenizer

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'-")
    tokens = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *extra_special] + chars
              + ["##" + c for c in chars[:36]] + sorted(set(words)))
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return BertTokenizer(vocab=vocab, do_lower_case=True)


def tiny_bpe(forms: Iterable[Sequence[str]], *, alphabet: Iterable[str] = (),
             specials: Iterable[str] = ()) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary and merges of a BPE that knows `alphabet` (ids in order) and spells each
    of `forms` (a word as its symbols, each in the alphabet) as one token, then `specials`:
    one merge per symbol added, left to right, ranked in the order the forms come.

    The one builder behind every tiny BPE tokenizer here (CLIP's, SigLIP2's, the byte-level
    ones of Qwen and SmolVLM); they differ only in alphabet and in how a word is spelt.
    BPE applies the lowest-ranked merge first, so forms that must win (a word with its
    leading space marker) come first."""
    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for t in alphabet:
        vocab.setdefault(t, len(vocab))
    for symbols in forms:
        cur = symbols[0]
        for sym in symbols[1:]:
            if (cur, sym) not in seen:
                seen.add((cur, sym))
                merges.append((cur, sym))
            cur += sym
            vocab.setdefault(cur, len(vocab))
    for t in specials:
        vocab.setdefault(t, len(vocab))
    return vocab, merges


def tiny_clip_tokenizer(words: Iterable[str]) -> Any:
    """A CLIP BPE tokenizer over a small vocabulary: characters (plain and word-final
    `</w>`) plus merges that rebuild each word. transformers 5 wants `merges` as a list of
    tuples."""
    from transformers import CLIPTokenizer

    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
    vocab, merges = tiny_bpe([list(w[:-1]) + [w[-1] + "</w>"] for w in words],
                             alphabet=[t for c in chars for t in (c, c + "</w>")],
                             specials=["<|startoftext|>", "<|endoftext|>"])
    return CLIPTokenizer(vocab=vocab, merges=merges)


def tiny_siglip2_tokenizer(words: Sequence[str], **settings: Any) -> Any:
    """A Gemma-style SentencePiece BPE (google/siglip2-base-patch16-naflex tokenizer: lower
    case, ' ' -> '▁' without a dummy prefix, byte fallback <0x00>..<0xFF>, <pad>=0 <eos>=1
    <bos>=2 <unk>=3) over the letters plus merges that rebuild each word, '▁word' first.
    `settings` go to the tokenizer (and are saved with it: attributes set later are not)."""
    from transformers import Siglip2Tokenizer

    first = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{b:02X}>" for b in range(256)]
    vocab, merges = tiny_bpe([list("▁" + w) for w in words] + [list(w) for w in words],
                             alphabet=first + list("▁abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"))
    return Siglip2Tokenizer(vocab=vocab, merges=merges, **settings)


def byte_symbols() -> list[str]:
    """GPT-2's byte -> printable character table (byte-level BPE's alphabet), in byte order."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def byte_level_bpe(words: Iterable[str], specials: Iterable[str] = (),
                   first: Iterable[str] = ()) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a byte-level BPE (GPT-2's, Qwen's): `first`, the 256 byte
    symbols, merges that rebuild each word with and without a leading space ('Ġ'), then
    `specials`.

    The 'Ġword' merges rank first: a plain (c, o) merge ranked before (Ġ, c) would split
    ' color' into 'Ġ' + 'color'."""
    words = list(dict.fromkeys(words))
    return tiny_bpe([list("Ġ" + w) for w in words] + [list(w) for w in words],
                    alphabet=list(first) + byte_symbols(), specials=specials)
