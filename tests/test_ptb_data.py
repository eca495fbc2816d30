"""The PTB reader and the synthetic corpus (workers/ptb_data.py, standard library only)."""

from __future__ import annotations

import collections
import hashlib
import math
import shutil
import subprocess

import pytest

from workers import ptb_data
from workers.protocol import DataError

# A PTB-style text: a space before and after every sentence, one sentence per line.
TRAIN = " the cat sat on the mat \n the dog sat \n a cat ran \n"
VALID = " the dog ran \n"
TEST = " a cat sat on the dog \n"


def make_ptb_dir(path, train=TRAIN, valid=VALID, test=TEST):
    path.mkdir(parents=True, exist_ok=True)
    for name, text in (("ptb.train.txt", train), ("ptb.valid.txt", valid),
                       ("ptb.test.txt", test)):
        (path / name).write_text(text)
    return path


def test_words_are_split_like_tensorflows_reader():
    # TF's _read_words: f.read().replace("\n", "<eos>").split()
    words = [w for _, line in ptb_data.lines_to_words(TRAIN) for w in line]
    assert words == TRAIN.replace("\n", "<eos>").split()
    # A line without PTB's surrounding spaces still gets its own <eos> token.
    assert [w for _, line in ptb_data.lines_to_words("a b\nc\n") for w in line] == \
        ["a", "b", "<eos>", "c", "<eos>"]


def test_vocabulary_is_sorted_by_count_then_word():
    vocab = ptb_data.build_vocab("b a c a b a <eos> <eos> c".split())
    # a:3, then b, c and <eos> with 2 each, ties alphabetical ("<" sorts before letters)
    assert sorted(vocab, key=vocab.get) == ["a", "<eos>", "b", "c"]


def test_a_data_directory_becomes_ids_over_the_train_vocabulary(tmp_path):
    corpus = ptb_data.load_directory(str(make_ptb_dir(tmp_path)))

    assert corpus.synthetic is False
    assert corpus.source == str(tmp_path)
    # train has 12 words + 3 <eos>; the vocabulary is its 9 distinct tokens
    assert len(corpus.train) == 15 and corpus.vocab_size == 9
    assert corpus.words[:3] == ["<eos>", "the", "cat"]  # counts 3, 3, 2
    decoded = " ".join(corpus.words[i] for i in corpus.valid)
    assert decoded == "the dog ran <eos>"
    assert len(corpus.test) == 7


def test_a_valid_word_outside_the_vocabulary_names_file_word_and_line(tmp_path):
    make_ptb_dir(tmp_path, valid=" the dog sat \n the zebra sat \n")
    with pytest.raises(DataError) as caught:
        ptb_data.load_directory(str(tmp_path))
    message = caught.value.message
    assert "\n" not in message
    assert str(tmp_path / "ptb.valid.txt") in message
    assert "line 2" in message and "'zebra'" in message


def test_a_missing_directory_is_a_data_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="data directory .*nowhere does not exist"):
        ptb_data.load_directory(str(missing))


def test_a_data_dir_that_is_a_file_is_a_data_error_naming_it(tmp_path):
    a_file = make_ptb_dir(tmp_path) / "ptb.train.txt"
    with pytest.raises(DataError, match=r"ptb\.train\.txt is not a directory"):
        ptb_data.load_directory(str(a_file))


def test_a_missing_file_is_a_data_error_naming_it(tmp_path):
    make_ptb_dir(tmp_path)
    (tmp_path / "ptb.test.txt").unlink()
    with pytest.raises(DataError, match=r"ptb\.test\.txt is missing"):
        ptb_data.load_directory(str(tmp_path))


def test_an_unreadable_file_is_a_data_error_naming_it(tmp_path):
    make_ptb_dir(tmp_path)
    # A directory where the file should be cannot be read, even by root.
    (tmp_path / "ptb.valid.txt").unlink()
    (tmp_path / "ptb.valid.txt").mkdir()
    with pytest.raises(DataError, match=r"cannot read .*ptb\.valid\.txt"):
        ptb_data.load_directory(str(tmp_path))


def test_a_file_that_is_not_text_is_a_data_error(tmp_path):
    make_ptb_dir(tmp_path)
    (tmp_path / "ptb.train.txt").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(DataError, match=r"ptb\.train\.txt: not UTF-8"):
        ptb_data.load_directory(str(tmp_path))


def test_an_empty_training_file_is_a_data_error(tmp_path):
    make_ptb_dir(tmp_path, train="\n\n")
    with pytest.raises(DataError, match=r"ptb\.train\.txt has no words"):
        ptb_data.load_directory(str(tmp_path))


@pytest.mark.parametrize("tokens, batch_size, num_steps, expected", [
    # seed-facts 1.5: the PTB epoch sizes of the port (train/valid B=20 T=35, test B=1 T=35)
    (929589, 20, 35, 1327),
    (73760, 20, 35, 105),
    (82430, 1, 35, 2355),
    # the smallest split that gives one window, and one token less
    (20 * 36, 20, 35, 1),
    (20 * 36 - 1, 20, 35, 0),
])
def test_epoch_size_follows_the_readers_formula(tokens, batch_size, num_steps, expected):
    assert ptb_data.epoch_size(tokens, batch_size, num_steps) == expected


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_blob_id_is_what_git_computes(tmp_path):
    path = make_ptb_dir(tmp_path) / "ptb.train.txt"
    expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True,
                              text=True, check=True).stdout.strip()
    assert ptb_data.git_blob_sha1(str(path)) == expected


def test_canonical_blob_ids_are_those_of_the_seed_facts():
    assert ptb_data.CANONICAL_BLOB_IDS == {
        "ptb.train.txt": "04d78dc94771b5c04adc40b3be08bd8c82942e7f",
        "ptb.valid.txt": "7b3d9d9fd705825715695328b2de872ffbc14a84",
        "ptb.test.txt": "8079cdf342f8d103e5647e1160a8fe3b58a213d5",
    }


def test_synthetic_corpus_is_the_same_every_time():
    first = ptb_data.synthetic_texts(5000, 200)
    assert first == ptb_data.synthetic_texts(5000, 200)
    assert first != ptb_data.synthetic_texts(5000, 300)
    # Pinned: sweeps compare runs across Python and torch versions and over months,
    # which only means something while the synthetic corpus never changes.
    digest = hashlib.sha1("".join(first[s] for s in ptb_data.SPLITS).encode()).hexdigest()
    assert digest == SYNTHETIC_5000_200_SHA1


SYNTHETIC_5000_200_SHA1 = "0340e1160f823a081894aa540921630d96bafe9f"


def test_synthetic_corpus_has_ptb_shape():
    texts = ptb_data.synthetic_texts(20000, 500)
    corpus = ptb_data.synthetic_corpus(20000, 500)
    sizes = [len(corpus.train), len(corpus.valid), len(corpus.test)]

    assert 20000 <= sum(sizes) < 20000 + 30  # stops after the sentence that reaches the size
    assert [round(n / sum(sizes), 2) for n in sizes] == [0.8, 0.1, 0.1]
    assert corpus.vocab_size <= 500
    assert "<eos>" in corpus.words and "<unk>" in corpus.words
    for split in ptb_data.SPLITS:
        lines = texts[split].split("\n")
        assert lines[-1] == "" and all(line.startswith(" ") and line.endswith(" ")
                                       for line in lines[:-1])
        assert all(5 <= len(line.split()) <= 25 for line in lines[:-1])


def test_synthetic_written_files_load_like_a_real_directory(tmp_path):
    ptb_data.write_synthetic(str(tmp_path), 8000, 300)
    from_files = ptb_data.load_directory(str(tmp_path))
    in_memory = ptb_data.synthetic_corpus(8000, 300)
    assert from_files.words == in_memory.words
    assert (from_files.train, from_files.valid, from_files.test) == \
        (in_memory.train, in_memory.valid, in_memory.test)


def _entropy(counts):
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


def test_synthetic_words_follow_zipf_and_are_predictable_from_the_previous_word():
    train = ptb_data.synthetic_corpus(60000, 1000).train
    counts = collections.Counter(train)
    ranked = [c for _, c in counts.most_common()]
    # Zipf-like: a long tail, the top words far more frequent than the median word
    assert ranked[0] > 10 * ranked[len(ranked) // 2]
    assert len(ranked) > 500

    # Perplexity of a unigram model vs a bigram model on train: structure to learn.
    unigram_perplexity = math.exp(_entropy(counts))
    pairs = collections.Counter(zip(train[:-1], train[1:], strict=True))
    conditional = _entropy(pairs) - _entropy(collections.Counter(train[:-1]))
    bigram_perplexity = math.exp(conditional)
    assert bigram_perplexity < unigram_perplexity / 4
