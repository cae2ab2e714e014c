"""Every flag of the command-line tools says what it does and what it defaults to."""

from __future__ import annotations

import argparse

import pytest

from service.cli import build_parser as serve_parser
from service.worker_cli import _parser as worker_parser
from training.cli import build_parser as train_parser
from training.settings import TrainingSettings


@pytest.mark.parametrize(
    "parser",
    [train_parser(TrainingSettings()), serve_parser(), worker_parser()],
    ids=["cpflow-train", "cpflow-serve", "cpflow-worker"],
)
def test_every_flag_has_help_and_shows_its_default(parser: argparse.ArgumentParser) -> None:
    lacking = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = (action.help or "") % {"default": action.default}
        if not text or ("default" not in text and not action.required and "required" not in text):
            lacking.append("/".join(action.option_strings))
    assert not lacking, f"flags without help or a stated default: {lacking}"
    assert "%(default)" not in parser.format_help()
