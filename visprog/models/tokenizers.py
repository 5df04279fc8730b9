"""Tiny tokenizers over small vocabularies, for the tiny random checkpoints the tools build."""
from __future__ import annotations

from typing import Any, Iterable

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


def tiny_clip_tokenizer(words: Iterable[str]) -> Any:
    """A CLIP BPE tokenizer over a small vocabulary: characters plus merges that rebuild
    each word. transformers 5 wants `merges` as a list of tuples."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []

    def add(t: str) -> None:
        vocab.setdefault(t, len(vocab))

    for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-":
        add(c)
        add(c + "</w>")
    for w in words:
        syms = list(w[:-1]) + [w[-1] + "</w>"]
        cur = syms[0]
        for s in syms[1:]:
            if (cur, s) not in merges:
                merges.append((cur, s))
            cur += s
            add(cur)
    for t in ("<|startoftext|>", "<|endoftext|>"):
        add(t)
    return CLIPTokenizer(vocab=vocab, merges=merges)
