"""elp.tasks.decoding: beam search through torchaudio/flashlight agrees with greedy on peaked
distributions, finds the most probable labelling where greedy does not, and an n-gram LM
changes the result towards its words."""
import pytest
import torch

from elp.data.inventory import BPETokenizer, CharTokenizer
from elp.tasks.decoding import CTCBeamSearch, arpa_words, ctc_beam_search, greedy_ctc, write_lexicon

TOK = CharTokenizer(["<blank>", "<space>", "A", "B", "C", "R"])


def _peaked(ids: list[list[int]], vocab: int, sharpness: float = 12.0) -> torch.Tensor:
    return (torch.nn.functional.one_hot(torch.tensor(ids), vocab).float() * sharpness
            + 0.1 * torch.randn(len(ids), len(ids[0]), vocab)).log_softmax(-1)


def test_beam_search_equals_greedy_on_peaked_distributions():
    torch.manual_seed(0)
    ids = torch.randint(0, 6, (4, 30)).tolist()
    log_probs = _peaked(ids, 6)
    mask = torch.ones(4, 30, dtype=torch.bool)
    mask[1, 20:] = False
    mask[3, 7:] = False
    greedy = [TOK.decode(h).strip() for h in greedy_ctc(log_probs, mask)]
    assert ctc_beam_search(log_probs, mask, TOK, beam_size=8) == greedy
    assert any(greedy)


def test_beam_search_finds_the_most_probable_labelling_where_greedy_fails():
    # every frame: blank 0.4, A 0.35 -> best path "" (0.16) but P("A") = 0.35^2 + 2 * 0.35 * 0.4 = 0.4025
    probs = torch.tensor([[[0.4, 0.01, 0.35, 0.08, 0.08, 0.08]] * 2])
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert [TOK.decode(h) for h in greedy_ctc(probs.log(), mask)] == [""]
    assert ctc_beam_search(probs.log(), mask, TOK, beam_size=4) == ["A"]


ARPA = """
\\data\\
ngram 1=5
ngram 2=2

\\1-grams:
-1.0\t<s>\t-0.3
-0.5\t</s>
-0.3\tCAB\t-0.3
-3.0\tCAR\t-0.3
-1.0\t<unk>

\\2-grams:
-0.1\t<s> CAB
-0.1\tCAB </s>

\\end\\
"""


def test_word_lm_prefers_its_words(tmp_path):
    lm = tmp_path / "lm.arpa"
    lm.write_text(ARPA)
    assert arpa_words(lm) == ["CAB", "CAR"]
    # C, A, then R slightly above B: acoustics alone say CAR
    probs = torch.full((1, 4, 6), 0.01)
    probs[0, 0, 4], probs[0, 1, 2], probs[0, 2, 5], probs[0, 2, 3], probs[0, 3, 0] = 0.9, 0.9, 0.5, 0.4, 0.9
    log_probs = (probs / probs.sum(-1, keepdim=True)).log()
    mask = torch.ones(1, 4, dtype=torch.bool)
    assert ctc_beam_search(log_probs, mask, TOK, beam_size=8) == ["CAR"]
    assert ctc_beam_search(log_probs, mask, TOK, beam_size=8, lm=lm) == ["CAB"]
    assert ctc_beam_search(log_probs, mask, TOK, beam_size=8, lm=lm, lm_weight=0.0) == ["CAR"]


def test_lexicon_spells_words_and_skips_unspellable(tmp_path):
    assert write_lexicon(["CAB", "DOG"], TOK, tmp_path / "lex.txt") == 1
    assert (tmp_path / "lex.txt").read_text() == "CAB\tC A B <space>\n"


def test_bpe_tokenizer_lexicon_free(tmp_path):
    tok = BPETokenizer.train(["HELLO WORLD", "HELLO THERE", "A WORLD"] * 20, tmp_path, vocab_size=30)
    ids = tok.encode("HELLO WORLD")
    frames = []
    for i in ids:
        frames += [i, 0]
    log_probs = _peaked([frames], tok.vocab_size)
    mask = torch.ones(1, len(frames), dtype=torch.bool)
    assert ctc_beam_search(log_probs, mask, tok, beam_size=4) == ["HELLO WORLD"]
    assert [tok.decode(h) for h in greedy_ctc(log_probs, mask)] == ["HELLO WORLD"]


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="6 tokens"):
        CTCBeamSearch(TOK)(torch.zeros(1, 3, 7).log_softmax(-1), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(FileNotFoundError, match="missing.arpa"):
        CTCBeamSearch(TOK, lm=tmp_path / "missing.arpa")
    with pytest.raises(ValueError, match="beam_size"):
        CTCBeamSearch(TOK, beam_size=0)
