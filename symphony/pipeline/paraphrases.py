"""Facts and questions worded unlike each other, for training the HEP-DNA retriever (phase 3 plants them, phase 5
trains on them). None of these templates is among `symphony eval ruler`'s paraphrase templates, and the names are
made up from syllables rather than drawn from its list, so the eval stays held out.

Each pair: (fact, question); the question shares no content word with the fact except the `{name}` (the key
that tells one fact from its look-alikes), and the fact carries a `{value}` (a year or a number).
"""
from __future__ import annotations

import random

PAIRS = [
    ("The {name} tunnel under the river opened to traffic in {value}.", "When could cars first drive through the {name} passage?"),
    ("{name} published her first novel in {value}.", "In what year did {name} debut as an author?"),
    ("The {name} mill stopped grinding grain in {value}.", "When did the {name} factory close?"),
    ("Construction of the {name} cathedral was completed in {value}.", "When was the {name} church finished?"),
    ("{name} was elected mayor of the town in {value}.", "When did {name} win the municipal vote?"),
    ("The {name} railway carried its last passengers in {value}.", "When did trains on the {name} line stop running?"),
    ("{name} climbed the north face alone in {value}.", "In which year did {name} make a solo ascent?"),
    ("The {name} hospital treated {value} patients last winter.", "How many people did the {name} clinic care for?"),
    ("The {name} library lends out {value} books every month.", "How many volumes does the {name} archive loan?"),
    ("{name} planted {value} apple trees along the ridge.", "How many fruit saplings did {name} put in the ground?"),
    ("The {name} bakery sells {value} loaves on a busy day.", "How much bread does the {name} shop move daily?"),
    ("The {name} stadium seats {value} spectators.", "What is the capacity of the {name} arena?"),
    ("The {name} bridge spans {value} metres from bank to bank.", "How long is the {name} crossing?"),
    ("{name} sailed across the Atlantic in {value}.", "When did {name} cross the ocean by boat?"),
    ("The {name} school admitted its first pupils in {value}.", "When did the {name} academy begin teaching?"),
    ("{name} patented a new kind of lamp in {value}.", "In what year did {name} register the lighting invention?"),
    ("The {name} company hired {value} workers at its peak.", "How many employees did the {name} firm have at most?"),
    ("{name} ran the marathon in {value} minutes.", "What was the race time of {name} over the long distance?"),
    ("The {name} dam produces {value} megawatts of power.", "How much electricity does the {name} barrage generate?"),
    ("The {name} ferry made its maiden voyage in {value}.", "When did the {name} boat first carry travellers?"),
    ("{name} moved to the capital city in {value}.", "When did {name} relocate to the seat of government?"),
    ("The {name} observatory spotted a new comet in {value}.", "In which year did the {name} telescope team discover something in the sky?"),
    ("The {name} orchard yields {value} crates of pears each autumn.", "How much fruit does the {name} farm harvest?"),
    ("{name} won the national chess title in {value}.", "When did {name} become the country's best player at the board game?"),
    ("The {name} festival drew {value} visitors this summer.", "How many people attended the {name} fair?"),
    ("The {name} castle was besieged in {value}.", "When was the {name} fortress attacked?"),
    ("{name} recorded her debut album in {value}.", "When did {name} release a first record?"),
    ("The {name} canal was dug by hand in {value}.", "In which year was the {name} waterway built?"),
    ("The {name} mine produced {value} tonnes of coal.", "How much fuel came out of the {name} pit?"),
    ("{name} graduated from medical school in {value}.", "When did {name} qualify as a doctor?"),
    ("The {name} tower rises {value} feet above the square.", "How tall is the {name} spire?"),
    ("The {name} clinic vaccinated {value} children in spring.", "How many kids got shots at the {name} health centre?"),
    ("{name} founded a small publishing house in {value}.", "When did {name} start the press?"),
    ("The {name} market opens at {value} every morning.", "At what hour does the {name} bazaar begin trading?"),
    ("The {name} herd numbers {value} cattle.", "How many cows belong to the {name} ranch?"),
    ("{name} swam the channel in {value}.", "When did {name} cross the strait without a boat?"),
    ("The {name} theatre staged its last play in {value}.", "When did the {name} playhouse close its doors?"),
    ("The {name} garden grows {value} kinds of roses.", "How many rose varieties does the {name} park have?"),
    ("{name} retired from the navy in {value}.", "When did {name} leave military service at sea?"),
    ("The {name} airport handled {value} flights last year.", "How many planes used the {name} airfield?"),
]

DEV_TEMPLATES = 8  # the last templates are the dev split's only: its calibration then sees wording never trained on


def templates(split: str) -> list[tuple[str, str]]:
    """The templates a phase 3 split draws from: train and dev share none."""
    return PAIRS[-DEV_TEMPLATES:] if split == "dev" else PAIRS[:-DEV_TEMPLATES]


_SYLLABLES = "bar ven tol mir kas dun fel gor hal jin lor mun nes pal quor ril sam tev ur wil yor zan".split()


def made_up_name(rng: random.Random) -> str:
    """A name of 2-3 syllables, capitalised (Venmir, Kasduntol): not a word, nor a name of the eval's list."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()


def value_for(fact: str, rng: random.Random) -> str:
    """A year for a fact dated 'in {value}', else a number."""
    return str(rng.randrange(1700, 2020)) if "in {value}." in fact else str(rng.randrange(12, 99999))


def fill(template: tuple[str, str], rng: random.Random) -> tuple[str, str, str]:
    """(fact, question, value) of one template with a made-up name and a value."""
    fact, question = template
    name, value = made_up_name(rng), value_for(fact, rng)
    return fact.format(name=name, value=value), question.format(name=name), value
