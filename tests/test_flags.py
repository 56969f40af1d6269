"""Flags generated from config dataclasses: one field, one option, parsed back into the dataclass."""

import argparse
import dataclasses
from typing import Literal

import pytest

from gpt2.flags import add_flags, from_flags, given_values


@dataclasses.dataclass
class Example:
    steps: int = 10
    lr: float = 3e-4
    compile: bool = True
    precision: Literal["fp32", "bf16"] = "fp32"
    seq_len: int | None = dataclasses.field(default=None, metadata={"help": "tokens (default: the model's)"})
    name: str = dataclasses.field(default="run", metadata={"help": "run name"})


def parse(*argv: str) -> Example:
    parser = argparse.ArgumentParser()
    add_flags(parser, Example)
    return from_flags(Example, parser.parse_args(list(argv)))


def test_defaults_and_values_round_trip():
    assert parse() == Example()
    got = parse("--steps", "5", "--lr", "0.1", "--precision", "bf16", "--seq_len", "64", "--name", "x")
    assert got == Example(steps=5, lr=0.1, precision="bf16", seq_len=64, name="x")
    assert parse("--seq_len", "none").seq_len is None


@pytest.mark.parametrize(("argv", "expected"), [
    ((), True), (("--compile",), True), (("--compile", "false"), False), (("--compile", "0"), False),
    (("--no_compile",), False), (("--compile", "yes"), True),
])
def test_booleans_take_every_launcher_spelling(argv, expected):
    assert parse(*argv).compile is expected


def test_bad_values_are_argparse_errors(capsys):
    for argv in (["--precision", "fp8"], ["--compile", "maybe"], ["--steps", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            parse(*argv)
        assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help_names_each_default_once():
    parser = argparse.ArgumentParser()
    add_flags(parser, Example)
    text = " ".join(parser.format_help().split())
    assert "run name (default: run)" in text
    assert "tokens (default: the model's)" in text and "(default: None)" not in text


def test_flags_left_to_another_source_default_to_unset_and_say_so():
    # The model flags of `train`: unset means the --preset's value (not the dataclass default).
    parser = argparse.ArgumentParser()
    add_flags(parser, Example, unset_means="the preset's")
    assert vars(parser.parse_args([])) == dict.fromkeys(vars(parser.parse_args([])))  # every value None
    assert parser.parse_args(["--no_compile", "--steps", "3"]).compile is False
    text = " ".join(parser.format_help().split())
    assert "run name (default: the preset's)" in text and "(default: 10)" not in text


def test_flags_tracked_as_given_tell_the_given_from_the_left_out_and_still_name_their_defaults():
    # The training flags of `train`: a resumed run takes the checkpoint's value for those left out.
    parser = argparse.ArgumentParser()
    add_flags(parser, Example, track_given=True)
    assert given_values(Example, parser.parse_args([])) == {}
    given = given_values(Example, parser.parse_args(["--steps", "3", "--no_compile", "--lr", "3e-4"]))
    assert given == {"steps": 3, "compile": False, "lr": 3e-4}  # the default's value, given, counts as given
    assert Example(**given) == Example(steps=3, compile=False)
    text = " ".join(parser.format_help().split())
    assert "(default: 10)" in text and "tokens (default: the model's)" in text
