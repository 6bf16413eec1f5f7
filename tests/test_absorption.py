"""First-letter absorption: vocabulary labels checked against the tokenizer, the letter probe, and absorption scores
on planted codes where the answer is known exactly."""

import pytest
import torch

from absae_lib import absorption
from absae_lib.concepts import label_positions, token_ids


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from absae_lib.models import embedded_model_folder

    return AutoTokenizer.from_pretrained(embedded_model_folder(), local_files_only=True)


def test_first_letter_words_are_whole_lower_case_tokens(tokenizer):
    words = absorption.first_letter_words(tokenizer, min_chars=3)
    assert len(words) >= 20 and set(words) <= set(absorption.LETTERS)
    vocab = tokenizer.get_vocab()
    for letter, items in words.items():
        assert items == sorted(items)
        for text, token_id in items[:20]:
            assert text[0] == " " and text[1] == letter and len(text) >= 4 and text[1:].isalpha() and text[1:].islower()
            assert tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens([token_id])) == text
            assert token_id in vocab.values()


def test_first_letter_dataset_labels_and_tokens(tokenizer):
    ds = absorption.first_letter_dataset(tokenizer, 30, seed=1)
    letters = ds.class_names
    assert len(letters) >= 20 and list(letters) == sorted(letters)
    assert ds.class_counts() == [30] * len(letters)
    assert len(set(ds.texts)) == len(ds.texts)
    ids = token_ids(tokenizer, ds.texts)
    prefix = tokenizer(absorption.FIRST_LETTER_TEMPLATE.format(""), add_special_tokens=False)["input_ids"]
    for text, row, label, meta in zip(ds.texts, ids, ds.labels.tolist(), ds.meta):
        assert meta["word"][0] == letters[label] and text.endswith(" " + meta["word"])
        assert row == prefix + [meta["token_id"]]  # the word is one token, the last one, after the fixed prefix
    assert label_positions(ids, ds.positions)[0] == len(prefix)
    assert absorption.first_letter_dataset(tokenizer, 30, seed=1).texts == ds.texts  # deterministic
    with pytest.raises(ValueError, match="fewer than two letters"):
        absorption.first_letter_dataset(tokenizer, 10**6)


def test_letter_probe_recovers_planted_directions():
    g = torch.Generator().manual_seed(0)
    d, n_classes = 16, 3
    means = torch.eye(d)[:n_classes] * 8.0
    y = torch.arange(300) % n_classes
    x = torch.randn(300, d, generator=g) + means[y]
    result = absorption.letter_probe(x[:200], y[:200], x[200:], y[200:])
    assert result["accuracy"] == 1.0 and result["directions"].shape == (n_classes, d)
    torch.testing.assert_close(result["directions"].norm(dim=1), torch.ones(n_classes))
    assert torch.equal(result["predicted"], y[200:])
    for c in range(n_classes):  # each class's direction points mostly along its own mean
        assert int(result["directions"][c].abs().argmax()) == c and result["directions"][c, c] > 0
    two = y < 2
    binary = absorption.letter_probe(x[:200][two[:200]], y[:200][two[:200]], x[200:][two[200:]], y[200:][two[200:]])
    assert binary["directions"].shape == (2, d)
    torch.testing.assert_close(binary["directions"][0], -binary["directions"][1])


def planted(signed: bool):
    """3 classes in 8-d; latent c (row e_c) is class c's main latent; latent 9 (row e_0) absorbs class 0 on two test
    words; latent 10 (row e_5, off every probe direction) fires on one missed class-1 word without absorbing it."""
    d, d_sae = 8, 12
    eye = torch.eye(d)
    W_dec = torch.zeros(d_sae, d)
    W_dec[0], W_dec[1], W_dec[2] = eye[0], eye[1], eye[2]
    W_dec[9], W_dec[10], W_dec[11] = 2.0 * eye[0], eye[5], eye[6]
    for j in range(3, 9):
        W_dec[j] = eye[7]
    directions = eye[:3].clone()
    y_train = torch.arange(30) % 3
    codes_train = torch.zeros(30, d_sae)
    codes_train[torch.arange(30), y_train] = 1.0
    codes_train[:, 11] = 0.5  # a latent that fires on everything is never a main latent
    y_test = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2])
    codes_test = torch.zeros(len(y_test), d_sae)
    codes_test[torch.arange(len(y_test)), y_test] = 1.0
    codes_test[2, 0], codes_test[2, 9] = 0.0, 0.7  # absorbed
    codes_test[3, 0], codes_test[3, 9] = 0.0, 0.3  # absorbed
    codes_test[8, 1], codes_test[8, 10] = 0.0, 1.0  # missed, not absorbed
    if signed:  # latent 2 marks class 2 with its negative pole; latent 9 absorbs with its negative pole
        W_dec[2], W_dec[9] = -W_dec[2], -W_dec[9]
        codes_train[:, 2], codes_test[:, 2] = -codes_train[:, 2], -codes_test[:, 2]
        codes_test[:, 9] = -codes_test[:, 9]
    return codes_train, y_train, codes_test, y_test, W_dec, directions


@pytest.mark.parametrize("signed", [False, True])
def test_absorption_scores_on_planted_codes(signed):
    codes_train, y_train, codes_test, y_test, W_dec, directions = planted(signed)
    result = absorption.absorption_scores(codes_train, y_train, codes_test, y_test, W_dec, directions,
                                          probe_predicted=y_test)
    per = result["per_class"]
    assert [per[c]["latent"] for c in range(3)] == [0, 1, 2]
    assert per[2]["sign"] == (-1 if signed else 1) and per[0]["sign"] == 1
    assert per[0]["recall"] == pytest.approx(0.5) and per[0]["precision"] == 1.0
    assert per[0]["false_negative_rate"] == pytest.approx(0.5) and per[0]["absorption_rate"] == pytest.approx(0.5)
    assert per[1]["false_negative_rate"] == pytest.approx(0.2) and per[1]["absorption_rate"] == 0.0
    assert per[2]["f1"] == 1.0 and per[2]["absorption_rate"] == 0.0
    assert result["absorption_rate"] == pytest.approx(0.5 / 3)
    assert result["false_negative_rate"] == pytest.approx(0.7 / 3)
    assert result["f1"] == pytest.approx((2 / 3 + 2 * 0.8 / 1.8 + 1.0) / 3)
    # A word the probe gets wrong is not counted at all.
    wrong = y_test.clone()
    wrong[2] = 1
    again = absorption.absorption_scores(codes_train, y_train, codes_test, y_test, W_dec, directions, wrong)
    assert again["per_class"][0]["n_probe_correct"] == 3
    assert again["per_class"][0]["absorption_rate"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("signed", [False, True])
def test_main_latent_must_fire_on_its_class(signed):
    """Latent 1 fires strongly on class 1 only: its gap for class 0 is large but negative, so class 0's main latent is
    the weak but positive detector 0 (a signed SAE may use latent 2's negative pole, which fires on class 0)."""
    y = torch.tensor([0, 1] * 10)
    codes = torch.zeros(20, 4)
    codes[y == 0, 0] = 0.5
    codes[y == 1, 1] = 2.0
    if signed:
        codes[y == 0, 2] = -0.8
    W_dec, directions = torch.eye(4), torch.eye(4)[:2]
    result = absorption.absorption_scores(codes, y, codes, y, W_dec, directions, probe_predicted=y)
    main = (result["per_class"][0]["latent"], result["per_class"][0]["sign"])
    assert main == ((2, -1) if signed else (0, 1))
    assert result["per_class"][0]["f1"] == 1.0 and result["per_class"][1]["latent"] == 1
