"""Tests for the pure format checks in rlvr.tasks.formats."""

import re

import pytest

from rlvr.tasks.formats import matches_format, think_answer_format


@pytest.mark.parametrize("completion", [
    "<think>3*4=12</think><answer>12</answer>",
    "<think>a\nb</think>\n<answer>\n12\n</answer>",
    "  <think> x </think>  \n\t <answer>12</answer>\n",
    "<think></think><answer></answer>",  # empty blocks: the verifier judges the content
])
def test_think_answer_format_accepts(completion):
    assert think_answer_format(completion)


@pytest.mark.parametrize("completion", [
    "",
    "12",
    "<answer>12</answer>",
    "<think>x</think>",
    "<answer>12</answer><think>x</think>",  # wrong order
    "<think>x</think><answer>1</answer><answer>2</answer>",  # two answers
    "<think>x<think>y</think><answer>1</answer>",  # two opening think tags
    "<think>x</think>so<answer>1</answer>",  # text between the blocks
    "pre <think>x</think><answer>1</answer>",  # text before
    "<think>x</think><answer>1</answer> post",  # text after
    "<think>x</think><answer>1",  # unclosed
    "<think>x</think><answer>1</answer></think>",
    "<THINK>x</THINK><ANSWER>1</ANSWER>",
])
def test_think_answer_format_rejects(completion):
    assert not think_answer_format(completion)


def test_matches_format():
    assert matches_format("3*4=12 => 12", r".*=> -?\d+")
    assert matches_format("line1\nline2 => 5", r".*=> -?\d+")  # '.' spans lines
    assert not matches_format("=> 12 trailing", r".*=> -?\d+")  # the whole completion must match
    assert not matches_format("", r".+")
    assert matches_format("ABC", re.compile(r"abc", re.IGNORECASE))  # compiled patterns keep their flags
    assert not matches_format("a\nb", re.compile(r"a.b"))
    with pytest.raises(ValueError, match="invalid format regex"):
        matches_format("x", "(")
