"""Document chunking."""

from __future__ import annotations

import itertools

from smolit.agents import chunk_text


def test_short_text_is_one_chunk() -> None:
    """A text shorter than the limit stays whole."""
    assert chunk_text("One sentence. Two sentences.") == ["One sentence. Two sentences."]


def test_chunks_respect_the_size_limit() -> None:
    """No chunk exceeds max_chars, even with overlap."""
    text = " ".join(f"Sentence number {i} says something useful." for i in range(200))
    chunks = chunk_text(text, max_chars=200)
    assert len(chunks) > 10
    assert all(len(c) <= 200 for c in chunks)


def test_consecutive_chunks_overlap_by_a_sentence() -> None:
    """The last sentence of a chunk starts the next one, so facts at a boundary stay findable."""
    text = " ".join(f"Fact {i} is here." for i in range(60))
    chunks = chunk_text(text, max_chars=100, overlap_sentences=1)
    for left, right in itertools.pairwise(chunks):
        assert right.split(". ")[0] in left


def test_no_text_is_lost() -> None:
    """Every sentence of the input appears in some chunk."""
    sentences = [f"Clause {i} limits liability." for i in range(50)]
    chunks = chunk_text("\n\n".join(sentences), max_chars=150)
    joined = " ".join(chunks)
    assert all(s in joined for s in sentences)


def test_overlong_words_are_cut() -> None:
    """A token longer than a chunk is split rather than producing an oversized chunk."""
    chunks = chunk_text("x" * 500, max_chars=100)
    assert all(len(c) <= 100 for c in chunks)
    assert "".join(chunks) == "x" * 500


def test_blank_text_gives_no_chunks() -> None:
    """Whitespace-only input yields nothing to embed."""
    assert chunk_text("  \n\n  ") == []
