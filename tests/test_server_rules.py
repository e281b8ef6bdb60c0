"""Server rules applied before any API call: allowed channels (threads included), banned words."""

from __future__ import annotations

import pytest

from bot.jobs import Order, Place
from bot.store import GuildSettings
from cogs.errors import InvalidInput
from cogs.runner import check_allowed

RULES = GuildSettings(allowed_channel_ids=(10,), banned_words=("cat", "c++", "red panda"))


def place(channel: int, parent: int | None = None) -> Place:
    return Place(user_id=1, guild_id=2, channel_id=channel, parent_id=parent)


@pytest.mark.parametrize("prompt", ["a CAT on a mat", "the c++ logo", "a Red Panda asleep", "cat!"])
def test_banned_words_and_phrases_are_refused(prompt: str) -> None:
    with pytest.raises(InvalidInput, match="doesn't allow"):
        check_allowed(Order("imagine", prompt), place(10), RULES)


@pytest.mark.parametrize("prompt", ["a category chart", "concat strings", "a red pandas' den"])
def test_words_that_merely_contain_a_banned_one_pass(prompt: str) -> None:
    check_allowed(Order("imagine", prompt), place(10), RULES)


def test_only_allowed_channels_and_their_threads_may_make_images() -> None:
    check_allowed(Order("imagine", "a dog"), place(10), RULES)
    check_allowed(Order("imagine", "a dog"), place(99, parent=10), RULES)
    with pytest.raises(InvalidInput, match="<#10>"):
        check_allowed(Order("imagine", "a dog"), place(11), RULES)


def test_no_rules_outside_a_server() -> None:
    check_allowed(Order("imagine", "a cat"), place(11), None)
