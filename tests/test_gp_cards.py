"""GeneralPoints card vocabulary: parsing, rank values under both face rules, suit sets, prompt wording."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sftrl.environments.generalpoints.cards import (
    RANKS,
    SUITS,
    Card,
    face_rule_text,
    normalize_rank,
    rank_value,
    suits_for,
)


@pytest.mark.parametrize(
    ("text", "rank", "suit"),
    [
        ("QH", "Q", "H"),
        ("10♠", "10", "S"),
        ("Q", "Q", None),
        ("q", "Q", None),
        ("qh", "Q", "H"),
        ("T♦", "10", "D"),
        ("td", "10", "D"),
        ("1c", "A", "C"),
        ("1", "A", None),
        ("10", "10", None),
        ("AD", "A", "D"),
        ("♥K", "K", "H"),
        ("H10", "10", "H"),
        (" 7 ♣ ", "7", "C"),
        ("K♡", "K", "H"),
        ("Q of hearts", "Q", "H"),
        ("queen of spades", "Q", "S"),
        ("J♠\ufe0f", "J", "S"),
    ],
)
def test_parse_accepts_common_spellings(text: str, rank: str, suit: str | None) -> None:
    card = Card.parse(text)
    assert (card.rank, card.suit) == (rank, suit)


@pytest.mark.parametrize("text", ["", "11", "0", "X", "QX", "1010", "B♠", "♠", "HH", "Q♠♠"])
def test_parse_rejects_non_cards(text: str) -> None:
    with pytest.raises(ValueError):
        Card.parse(text)


def test_card_is_frozen_hashable_and_prints_with_symbol() -> None:
    card = Card(rank="q", suit="hearts")
    assert (card.rank, card.suit) == ("Q", "H")
    assert str(card) == "Q♥" and str(Card(rank="10", suit="S")) == "10♠" and str(Card(rank="7")) == "7"
    assert card.color == "red" and Card(rank="2", suit="C").color == "black" and Card(rank="2").color is None
    assert card == Card.parse("QH") and len({card, Card.parse("Q♥"), Card.parse("QD")}) == 2
    with pytest.raises(ValidationError):
        card.rank = "K"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Card(rank="Z", suit="H")
    with pytest.raises(ValidationError):
        Card(rank="Q", suit="X")


def test_every_card_round_trips_through_str() -> None:
    for suit in SUITS:
        for rank in RANKS:
            card = Card(rank=rank, suit=suit)
            assert Card.parse(str(card)) == card
            assert Card.parse(rank + suit) == card


def test_rank_values_under_both_face_rules() -> None:
    ten = [rank_value(r, "10") for r in RANKS]
    thirteen = [rank_value(r, "11-13") for r in RANKS]
    assert ten == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10]
    assert thirteen == list(range(1, 14))
    assert rank_value("t", "10") == 10 and rank_value("1", "11-13") == 1
    with pytest.raises(ValueError):
        rank_value("Q", "12")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rank_value("Z", "10")


def test_normalize_rank() -> None:
    assert [normalize_rank(x) for x in ("a", "T", "1", "king", " 9 ")] == ["A", "10", "A", "K", "9"]


def test_suits_for_each_split_color() -> None:
    assert suits_for("black") == ("S", "C")
    assert suits_for("red") == ("H", "D")
    assert set(suits_for("mixed")) == {"S", "C", "H", "D"} and len(suits_for("mixed")) == 4
    with pytest.raises(ValueError):
        suits_for("green")  # type: ignore[arg-type]


def test_face_rule_text_matches_the_paper_prompt() -> None:
    assert face_rule_text("10") == "'J', 'Q', and 'K' count as '10'"
    assert face_rule_text("11-13") == "'J', 'Q', and 'K' count as '11', '12', and '13' respectively"
    with pytest.raises(ValueError):
        face_rule_text("13")  # type: ignore[arg-type]
