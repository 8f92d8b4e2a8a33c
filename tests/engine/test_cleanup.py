import pytest

from rlaif.engine.cleanup import clean_revision


@pytest.mark.parametrize(
    "text, expected, flags",
    [
        ("Sure, here is the revised response: Be kind.", "Be kind.", ["preamble"]),
        ("Here's a rewritten version of the answer:\nBe kind.", "Be kind.", ["preamble"]),
        ("Certainly! Here is my improved reply: Be kind.", "Be kind.", ["preamble"]),
        ("Revision: Be kind.", "Be kind.", ["echoed_label"]),
        ("Revised response: Be kind.", "Be kind.", ["echoed_label"]),
        ('"Be kind."', "Be kind.", ["wrapped_in_quotes"]),
        ("Be kind.", "Be kind.", []),
        ("Here is how to bake bread: flour.", "Here is how to bake bread: flour.", []),
    ],
)
def test_fix_mode_repairs_and_flags(text, expected, flags):
    assert clean_revision(text, "stop", "old answer", "fix") == (expected, flags)


def test_empty_revision_keeps_previous_and_is_flagged():
    assert clean_revision("  ", "stop", "old", "fix") == ("old", ["empty"])
    assert clean_revision("Revision:", "stop", "old", "fix") == ("old", ["echoed_label", "empty"])


def test_truncated_unchanged_and_copied_critique_are_flagged_only():
    assert clean_revision("cut off", "length", "x", "fix") == ("cut off", ["truncated"])
    assert clean_revision("same", "stop", "same", "fix") == ("same", ["unchanged"])
    assert clean_revision("crit", "stop", "x", "fix", critique="crit") == (
        "crit",
        ["copied_critique"],
    )


def test_flag_mode_keeps_text_and_off_mode_does_nothing():
    text = "Sure, here is the revised response: ok"
    assert clean_revision(text, "length", "x", "flag") == (text, ["preamble", "truncated"])
    assert clean_revision(text, "length", "x", "off") == (text, [])
