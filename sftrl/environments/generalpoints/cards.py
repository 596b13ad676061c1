"""Playing-card vocabulary for GeneralPoints: ranks, suits, parsing, and rank values under each face rule.

Pure data and functions, no I/O, so the verifier, the solver and the renderer all share one definition.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

RANKS: tuple[str, ...] = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
SUITS: tuple[str, ...] = ("S", "C", "H", "D")
FACE_RANKS: frozenset[str] = frozenset({"J", "Q", "K"})

SUIT_NAMES: dict[str, str] = {"S": "spades", "C": "clubs", "H": "hearts", "D": "diamonds"}
SUIT_SYMBOLS: dict[str, str] = {"S": "♠", "C": "♣", "H": "♥", "D": "♦"}
SuitColor = Literal["black", "red"]
SUIT_COLORS: dict[str, SuitColor] = {"S": "black", "C": "black", "H": "red", "D": "red"}
BLACK_SUITS: tuple[str, ...] = ("S", "C")
RED_SUITS: tuple[str, ...] = ("H", "D")

FaceRule = Literal["10", "11-13"]
DeckColor = Literal["black", "red", "mixed"]

# Spellings models and people actually write; everything is matched upper-cased.
_RANK_ALIASES: dict[str, str] = {
    **{r: r for r in RANKS},
    "T": "10",
    "1": "A",
    "ACE": "A",
    "JACK": "J",
    "QUEEN": "Q",
    "KING": "K",
}
_SUIT_ALIASES: dict[str, str] = {
    **{s: s for s in SUITS},
    **{sym: s for s, sym in SUIT_SYMBOLS.items()},
    # Outline glyphs (♤♧♡♢) and the emoji variants some tokenizers produce.
    "♤": "S",
    "♧": "C",
    "♡": "H",
    "♢": "D",
    **{name.upper(): s for s, name in SUIT_NAMES.items()},
    **{name.upper()[:-1]: s for s, name in SUIT_NAMES.items()},  # singular: "HEART"
}
_FACE_VALUES: dict[FaceRule, dict[str, int]] = {
    "10": {"J": 10, "Q": 10, "K": 10},
    "11-13": {"J": 11, "Q": 12, "K": 13},
}
_FACE_RULE_TEXT: dict[FaceRule, str] = {
    "10": "'J', 'Q', and 'K' count as '10'",
    "11-13": "'J', 'Q', and 'K' count as '11', '12', and '13' respectively",
}


def normalize_rank(text: str) -> str:
    """Canonical rank ("A", "2".."10", "J", "Q", "K") of e.g. "t", "1" or "queen"; ValueError if none."""
    key = str(text).strip().upper().replace("\ufe0f", "")
    if key not in _RANK_ALIASES:
        raise ValueError(f"not a card rank: {text!r}")
    return _RANK_ALIASES[key]


def normalize_suit(text: str) -> str:
    """Canonical suit letter (S, C, H, D) for a letter, symbol or name; ValueError if none."""
    key = str(text).strip().upper().replace("\ufe0f", "")
    if key not in _SUIT_ALIASES:
        raise ValueError(f"not a card suit: {text!r}")
    return _SUIT_ALIASES[key]


class Card(BaseModel):
    """One playing card; `suit` is None when only the rank matters (a hand given as ["K", "Q", "2", "A"])."""

    model_config = ConfigDict(frozen=True)

    rank: str
    suit: str | None = None

    @field_validator("rank", mode="before")
    @classmethod
    def _canonical_rank(cls, v: object) -> str:
        return normalize_rank(str(v))

    @field_validator("suit", mode="before")
    @classmethod
    def _canonical_suit(cls, v: object) -> str | None:
        return None if v is None else normalize_suit(str(v))

    @classmethod
    def parse(cls, text: str) -> Card:
        """Read "QH", "10♠", "q", "T♦", "1c", "H10" or "Q of hearts"; ValueError on anything else."""
        raw = str(text).strip().replace("\ufe0f", "")
        compact = "".join(raw.upper().split())
        if not compact:
            raise ValueError("empty card")
        if "OF" in compact:  # "Q of hearts", "10 of SPADES"
            rank, _, suit = compact.partition("OF")
            return cls(rank=rank, suit=suit)
        if compact in _RANK_ALIASES:
            return cls(rank=compact)
        # Suit last ("QH", "10♠") is the usual order; suit first ("♥Q", "H10") also appears in the wild.
        for rank, suit in ((compact[:-1], compact[-1]), (compact[1:], compact[0])):
            if rank in _RANK_ALIASES and suit in _SUIT_ALIASES:
                return cls(rank=rank, suit=suit)
        raise ValueError(f"not a card: {text!r}")

    @property
    def color(self) -> SuitColor | None:
        return None if self.suit is None else SUIT_COLORS[self.suit]

    @property
    def symbol(self) -> str:
        return "" if self.suit is None else SUIT_SYMBOLS[self.suit]

    def __str__(self) -> str:
        return f"{self.rank}{self.symbol}"


def rank_value(rank: str, face_cards: FaceRule) -> int:
    """The number a card stands for: A=1, 2..10 at face value, J/Q/K = 10 or 11/12/13 by the rule."""
    if face_cards not in _FACE_VALUES:
        raise ValueError(f"face_cards must be '10' or '11-13', got {face_cards!r}")
    rank = normalize_rank(rank)
    if rank == "A":
        return 1
    if rank in FACE_RANKS:
        return _FACE_VALUES[face_cards][rank]
    return int(rank)


def suits_for(color: DeckColor) -> tuple[str, ...]:
    """Suits in play: black (S, C) for training, red (H, D) for the visual-OOD split, or all four."""
    if color == "black":
        return BLACK_SUITS
    if color == "red":
        return RED_SUITS
    if color == "mixed":
        return SUITS
    raise ValueError(f"suit color must be 'black', 'red' or 'mixed', got {color!r}")


def face_rule_text(face_cards: FaceRule) -> str:
    """The face-card sentence fragment, worded exactly as in the paper's prompt."""
    if face_cards not in _FACE_RULE_TEXT:
        raise ValueError(f"face_cards must be '10' or '11-13', got {face_cards!r}")
    return _FACE_RULE_TEXT[face_cards]
