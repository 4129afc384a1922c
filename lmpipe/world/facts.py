"""The world's fact table: invented countries (capital, river) and people (favourite colour, an
item they own). Every document states facts from this one table, so the corpus never contradicts
itself and question answering can be checked against `Facts.table()`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd

from lmpipe.world.vocabulary import COLOURS, OBJECTS, PEOPLE, SYLLABLES


@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    river: str


@dataclass(frozen=True)
class Person:
    name: str
    pron: str
    obj: str
    pos: str
    colour: str  # favourite colour
    item: str  # "<colour> <object>" the person owns; unique across people


@dataclass(frozen=True)
class Facts:
    countries: tuple[Country, ...]
    people: tuple[Person, ...]

    def table(self) -> pd.DataFrame:
        rows = [r for c in self.countries for r in ((c.name, "capital", c.capital), (c.capital, "river", c.river))]
        rows += [r for p in self.people for r in ((p.name, "favourite_colour", p.colour), (p.item, "owner", p.name))]
        return pd.DataFrame(rows, columns=["subject", "relation", "answer"])


def make_facts(rng: random.Random, n: int) -> Facts:
    """n countries and n people; place names are invented and never repeat."""
    taken: set[str] = set()

    def invent() -> str:  # a pronounceable place name, used once
        while True:
            name = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()
            if len(name) >= 4 and name not in taken:
                taken.add(name)
                return name

    countries = tuple(Country(invent(), invent(), invent()) for _ in range(n))
    items = rng.sample([f"{c} {o}" for c in COLOURS for o in OBJECTS], n)
    people = tuple(
        Person(*who, colour=rng.choice(COLOURS), item=item)
        for who, item in zip(rng.sample(PEOPLE, n), items, strict=True)
    )
    return Facts(countries, people)
