"""The plain-text corpus reader (tiny files written by the test, good and broken), the bundled
pydoc corpus, and the local word tokenizer."""

import pytest

from latent.collect.data.text import (CLS, MASK, PAD, SEP, SPECIALS, UNK, WordTokenizer, pydoc_topics, read_text_dir,
                               read_text_file, split_words)
from latent.errors import UserError


def test_reads_txt_files_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("second file", encoding="utf-8")
    (tmp_path / "a.txt").write_bytes("\ufefffirst — café".encode("utf-8"))  # BOM dropped
    (tmp_path / "notes.md").write_text("not read")
    (tmp_path / "z.txt").write_text("")  # empty files are allowed among others
    files = read_text_dir(tmp_path)
    assert [name for name, _ in files] == ["a.txt", "b/two.txt", "z.txt"]
    assert files[0][1] == "first — café" and files[1][1] == "second file"


@pytest.mark.parametrize(
    "blob,message",
    [
        (b"hello\x00\x01\x02world", "contains NUL bytes: it is binary"),
        ("caf\u00e9".encode("latin-1"), "is not valid UTF-8 (byte 3"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "contains NUL bytes"),
    ],
    ids=["nul", "latin1", "png"],
)
def test_binary_or_non_utf8_file_is_one_clear_line(tmp_path, blob, message):
    (tmp_path / "good.txt").write_text("fine")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(blob)
    with pytest.raises(UserError) as exc:
        read_text_dir(tmp_path)
    assert message in str(exc.value) and str(bad) in str(exc.value) and "\n" not in str(exc.value)


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_text_dir(tmp_path / "nope")
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(UserError, match=r"no \*.txt files under"):
        read_text_dir(tmp_path)
    (tmp_path / "a.txt").write_text("   \n\t")
    (tmp_path / "b.txt").write_text("")
    with pytest.raises(UserError, match="hold no words"):
        read_text_dir(tmp_path)
    with pytest.raises(UserError, match="cannot read text file"):
        read_text_file(tmp_path / "missing.txt")


def test_split_words_lowercases_and_collapses_punctuation_runs():
    assert split_words("The cat's 42 hats!\n=====\nx--y") == ["the", "cat", "'", "s", "42", "hats", "!", "=", "x", "-", "y"]


def test_tokenizer_vocabulary_is_a_pure_function_of_the_text():
    text = "b a c a b a d"
    tok = WordTokenizer.build(text, vocab_size=8)
    assert tok.itos == SPECIALS + ("a", "b", "c")  # by count, then alphabetically (c before d)
    assert (PAD, UNK, CLS, SEP, MASK) == (0, 1, 2, 3, 4)
    assert tok.encode("a d b zebra").tolist() == [5, UNK, 6, UNK]
    assert tok.decode([CLS, 5, SEP]) == "[CLS] a [SEP]"
    assert WordTokenizer.build(text, 8) == tok
    with pytest.raises(UserError, match="vocab_size must exceed"):
        WordTokenizer.build(text, 5)


def test_pydoc_corpus_is_english_text_of_the_promised_size():
    text = pydoc_topics()
    words = text.split()
    assert 50_000 < len(words) < 200_000
    counts = {w: words.count(w) for w in ("the", "is", "of")}
    assert all(c > 500 for c in counts.values())
    assert pydoc_topics() == text  # deterministic order
