import pytest

from benchmarks import scoring


def test_string_match_all_is_mean_fraction_of_references_found_case_insensitive():
    preds = ["The numbers are 123 and 456.", "nothing here", "APPLE-pie"]
    refs = [["123", "456", "789"], ["x"], ["apple-PIE"]]
    # (2/3 + 0 + 1) / 3 * 100 = 55.555... -> 55.56
    assert scoring.string_match_all(preds, refs) == 55.56


def test_string_match_part_is_any_reference_found():
    preds = ["The numbers are 123 and 456.", "nothing here"]
    refs = [["999", "456"], ["x", "y"]]
    assert scoring.string_match_part(preds, refs) == 50.0
    assert scoring.string_match_all(preds, refs) == 25.0


def test_string_reference_counts_as_one_reference():
    assert scoring.string_match_all(["pass key 12345"], ["12345"]) == 100.0
    assert scoring.string_match_all(["pass key 1234"], ["12345"]) == 0.0


@pytest.mark.parametrize("preds, refs, exc", [(["a"], [["a"], ["b"]], ValueError), ("a", ["a"], TypeError),
                                              ([], [], ValueError), (["a"], [[]], ValueError)],
                         ids=["length-mismatch", "str-preds", "empty", "empty-refs"])
def test_bad_batches_are_clear_errors(preds, refs, exc):
    with pytest.raises(exc, match="pred|ref"):
        scoring.string_match_all(preds, refs)


def test_postprocess_pred_turns_control_characters_into_newlines_and_strips():
    assert scoring.postprocess_pred("\t 42\x00x \n") == "42\nx"


LOCS = scoring.BABILONG_LABELS["qa1"]


@pytest.mark.parametrize("target, output, question, expected", [
    ("kitchen", "Kitchen.", "Where is Mary?", True),
    ("kitchen", "the kitchen, then the garden", "Where is Mary?", False),          # two labels
    ("kitchen", "the kitchen. Then the garden", "Where is Mary?", True),           # only the first sentence counts
    ("kitchen", "garden", "Where is Mary?", False),
    ("kitchen", "kitchen or office", "Is Mary in the office?", True),              # labels in the question ignored
    ("office", "office", "Is Mary in the office?", False),                         # ... even the target
    ("kitchen", "", "Where is Mary?", False),
    ("kitchen", "Question: where is the garden? kitchen", "Where is Mary?", False),  # cut at an echoed "question"
], ids=["exact", "two-labels", "first-sentence", "wrong", "question-label", "target-in-question", "empty", "echo"])
def test_babilong_compare_answers_rules(target, output, question, expected):
    assert scoring.babilong_correct(target, output, question, LOCS) is expected


def test_babilong_labels_unknown_task():
    with pytest.raises(ValueError, match="qa9.*allowed"):
        scoring.babilong_labels("qa9")


def test_first_word_match_does_not_credit_both_answers():
    assert scoring.first_word_match(" Yes, it is", ["yes"]) == 1.0
    assert scoring.first_word_match("no yes", ["yes"]) == 0.0


def test_effective_length_is_last_length_before_the_first_drop():
    scores = {4096: 95.0, 8192: 90.0, 16384: 80.0, 32768: 88.0}
    assert scoring.effective_length(scores) == 8192
    assert scoring.effective_length(scores, threshold=95.0) == 4096
    assert scoring.effective_length({4096: 50.0}) is None
