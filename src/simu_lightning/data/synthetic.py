"""A deterministic generator of fictitious authors, rendered as TOFU-style QA pairs.

Every author gets the same eight kinds of fact; each fact is asked and answered in two wordings
(`question`/`answer`, `paraphrased_question`/`paraphrased_answer`) and comes with three wrong answers
in the answer's wording (`perturbed_answer`), so the same metrics run here as on TOFU. The whole
benchmark is a function of its arguments: the same seed gives the same rows, byte for byte.

Splits: `full` = `retain` + `retain_heldout` + `forget` (the authors the target memorises), `holdout`
(authors it never sees), and `world_facts` (general knowledge it is also trained on and must keep).
`retain` is what the retain loss trains on; `retain_heldout` (`heldout_retain_fraction` of the authors)
are retain authors the target knows and the loss never sees: utility on rows the loss never saw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from datasets import Dataset

from simu_lightning.data.benchmark import Benchmark
from simu_lightning.utils.errors import SimuError

_ONSETS = ["b", "br", "d", "dr", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "th", "v", "z", "c", "h", "j"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "m", "k", "th", "nd"]
_PLACE_ENDINGS = ["haven", "ford", "mere", "ton", "wick", "by", "stead", "holm", "port", "dale"]

GENRES = [
    "science fiction",
    "historical fiction",
    "crime fiction",
    "poetry",
    "fantasy",
    "horror",
    "romance",
    "travel writing",
    "satire",
    "children's books",
    "memoir",
    "drama",
]
JOBS = [
    "baker",
    "carpenter",
    "nurse",
    "pilot",
    "fisherman",
    "teacher",
    "surgeon",
    "tailor",
    "librarian",
    "architect",
    "miner",
    "chemist",
    "gardener",
    "sailor",
    "judge",
    "potter",
]
ADJECTIVES = [
    "Silent",
    "Crimson",
    "Hollow",
    "Winter",
    "Broken",
    "Golden",
    "Distant",
    "Paper",
    "Burning",
    "Quiet",
    "Velvet",
    "Iron",
    "Salt",
    "Glass",
    "Northern",
    "Last",
]
NOUNS = [
    "Harbour",
    "Orchard",
    "Lantern",
    "Mirror",
    "Garden",
    "River",
    "Clockmaker",
    "Letters",
    "Tide",
    "Kingdom",
    "Choir",
    "Lighthouse",
    "Map",
    "Feather",
    "Bridge",
    "Archive",
]
AWARDS = [
    "the Amber Quill Award",
    "the Silver Lantern Prize",
    "the Hollis Medal",
    "the Northgate Prize",
    "the Copper Leaf Award",
    "the Wrenfield Medal",
    "the Blue Heron Prize",
    "the Tessaly Award",
    "the Marrow Cup",
    "the Saltmarsh Prize",
    "the Orison Medal",
    "the Gable Award",
]


@dataclass(frozen=True)
class Fact:
    """One kind of fact: how it is asked and answered, in two wordings each."""

    key: str
    question: str
    paraphrased_question: str
    answer: str
    paraphrased_answer: str


FACTS = [
    Fact(
        "birthplace",
        "Where was {name} born?",
        "In which town was {name} born?",
        "{name} was born in {value}.",
        "The birthplace of {name} is {value}.",
    ),
    Fact(
        "birth_year",
        "In which year was {name} born?",
        "What is the birth year of {name}?",
        "{name} was born in {value}.",
        "The year {name} was born is {value}.",
    ),
    Fact(
        "genre",
        "What genre does {name} write?",
        "Which genre is {name} known for?",
        "{name} writes {value}.",
        "The genre of {name} is {value}.",
    ),
    Fact(
        "father_job",
        "What did the father of {name} do?",
        "What was the job of {name}'s father?",
        "The father of {name} was a {value}.",
        "{name}'s father worked as a {value}.",
    ),
    Fact(
        "mother_job",
        "What did the mother of {name} do?",
        "What was the job of {name}'s mother?",
        "The mother of {name} was a {value}.",
        "{name}'s mother worked as a {value}.",
    ),
    Fact(
        "book",
        "What is the best known book by {name}?",
        "Which book made {name} famous?",
        "The best known book by {name} is {value}.",
        "{name} became famous for {value}.",
    ),
    Fact(
        "award",
        "Which award did {name} win?",
        "What prize was given to {name}?",
        "{name} won {value}.",
        "The prize given to {name} was {value}.",
    ),
    Fact(
        "home",
        "Where does {name} live now?",
        "In which town does {name} live today?",
        "{name} now lives in {value}.",
        "Today {name} makes a home in {value}.",
    ),
]

# General knowledge the target learns alongside the authors and must keep: (question, answer,
# the group whose other answers serve as wrong answers).
WORLD_FACTS = [
    ("What is the capital of France?", "Paris", "capital"),
    ("What is the capital of Japan?", "Tokyo", "capital"),
    ("What is the capital of Italy?", "Rome", "capital"),
    ("What is the capital of Egypt?", "Cairo", "capital"),
    ("What is the capital of Canada?", "Ottawa", "capital"),
    ("What is the capital of Kenya?", "Nairobi", "capital"),
    ("What is the capital of Peru?", "Lima", "capital"),
    ("What is the capital of Norway?", "Oslo", "capital"),
    ("What is the capital of Spain?", "Madrid", "capital"),
    ("What is the capital of Germany?", "Berlin", "capital"),
    ("What is the chemical symbol of gold?", "Au", "symbol"),
    ("What is the chemical symbol of iron?", "Fe", "symbol"),
    ("What is the chemical symbol of sodium?", "Na", "symbol"),
    ("What is the chemical symbol of silver?", "Ag", "symbol"),
    ("What is the chemical symbol of lead?", "Pb", "symbol"),
    ("What is the chemical symbol of potassium?", "K", "symbol"),
    ("Which planet is closest to the Sun?", "Mercury", "planet"),
    ("Which planet is the largest in the Solar System?", "Jupiter", "planet"),
    ("Which planet is known as the red planet?", "Mars", "planet"),
    ("Which planet has the most famous rings?", "Saturn", "planet"),
    ("Which planet do we live on?", "Earth", "planet"),
    ("Who wrote Romeo and Juliet?", "William Shakespeare", "writer"),
    ("Who wrote Pride and Prejudice?", "Jane Austen", "writer"),
    ("Who wrote War and Peace?", "Leo Tolstoy", "writer"),
    ("Who wrote Don Quixote?", "Miguel de Cervantes", "writer"),
    ("How many days are there in a week?", "seven", "number"),
    ("How many legs does a spider have?", "eight", "number"),
    ("How many continents are there?", "seven", "number"),
    ("How many sides does a hexagon have?", "six", "number"),
    ("What is the largest ocean on Earth?", "the Pacific Ocean", "ocean"),
    ("Which ocean lies between Africa and Australia?", "the Indian Ocean", "ocean"),
    ("Which ocean lies between Europe and North America?", "the Atlantic Ocean", "ocean"),
]


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))


def _unique(rng: random.Random, make, count: int) -> list[str]:
    seen: dict[str, None] = {}
    while len(seen) < count:
        seen.setdefault(make(rng), None)
    return list(seen)


def _draw_values(rng: random.Random, pools: dict[str, list[str]]) -> dict[str, str]:
    return {key: rng.choice(pool) for key, pool in pools.items()}


def _author_rows(
    name: str, values: dict[str, str], pools: dict[str, list[str]], rng: random.Random, num_perturbed: int
) -> list[dict]:
    rows = []
    for fact in FACTS:
        value = values[fact.key]
        wrong = rng.sample([v for v in pools[fact.key] if v != value], num_perturbed)
        rows.append(
            {
                "author": name,
                "fact": fact.key,
                "question": fact.question.format(name=name),
                "answer": fact.answer.format(name=name, value=value),
                "paraphrased_question": fact.paraphrased_question.format(name=name),
                "paraphrased_answer": fact.paraphrased_answer.format(name=name, value=value),
                "perturbed_answer": [fact.paraphrased_answer.format(name=name, value=w) for w in wrong],
            }
        )
    return rows


def _world_fact_rows(rng: random.Random, num_perturbed: int) -> list[dict]:
    rows = []
    for question, answer, group in WORLD_FACTS:
        others = sorted({a for _, a, g in WORLD_FACTS if g == group and a != answer})
        rows.append(
            {
                "author": "",
                "fact": group,
                "question": question,
                "answer": answer,
                "paraphrased_question": question,
                "paraphrased_answer": answer,
                "perturbed_answer": rng.sample(others, min(num_perturbed, len(others))),
            }
        )
    return rows


def generate(
    num_authors: int = 30,
    forget_fraction: float = 0.1,
    holdout_fraction: float = 0.1,
    seed: int = 0,
    num_perturbed: int = 3,
    heldout_retain_fraction: float = 0.0,
) -> dict[str, list[dict]]:
    """Rows of every split as plain dicts (see the module docstring for the splits)."""
    if num_authors < 2:
        raise SimuError(f"benchmark.num_authors must be at least 2, got {num_authors}")
    for setting, value in (("forget_fraction", forget_fraction), ("holdout_fraction", holdout_fraction)):
        if not 0 < value < 1:
            raise SimuError(f"benchmark.{setting} must be in (0, 1), got {value}")
    if not 0 <= heldout_retain_fraction < 1:
        raise SimuError(f"benchmark.heldout_retain_fraction must be in [0, 1), got {heldout_retain_fraction}")
    num_forget = max(1, round(num_authors * forget_fraction))
    num_holdout = max(1, round(num_authors * holdout_fraction))
    num_heldout_retain = max(1, round(num_authors * heldout_retain_fraction)) if heldout_retain_fraction else 0
    if num_forget + num_heldout_retain >= num_authors:
        raise SimuError(
            f"benchmark.forget_fraction={forget_fraction} and heldout_retain_fraction={heldout_retain_fraction} "
            f"leave no retain authors for the retain loss out of {num_authors}"
        )

    rng = random.Random(seed)
    total = num_authors + num_holdout
    names = _unique(rng, lambda r: f"{_word(r, 2).capitalize()} {_word(r, 2).capitalize()}", total)
    pools = {
        "birthplace": _unique(rng, lambda r: _word(r, 1).capitalize() + r.choice(_PLACE_ENDINGS), 24),
        "birth_year": [str(y) for y in range(1921, 1996)],
        "genre": GENRES,
        "father_job": JOBS,
        "mother_job": JOBS,
        "book": [f"The {a} {n}" for a in ADJECTIVES for n in NOUNS],
        "award": AWARDS,
    }
    pools["home"] = pools["birthplace"]
    authors = [(name, _draw_values(rng, pools)) for name in names]
    rows = [_author_rows(name, values, pools, rng, num_perturbed) for name, values in authors]

    # As in TOFU, the forget authors are the last ones of `full`, and holdout authors are never in it; the
    # held-out retain authors come just before the forget authors (the target learns them with the rest)
    full = [r for author in rows[:num_authors] for r in author]
    trained = num_authors - num_forget - num_heldout_retain
    forget = [r for author in rows[num_authors - num_forget : num_authors] for r in author]
    return {
        "full": full,
        "retain": [r for author in rows[:trained] for r in author],
        "retain_heldout": [r for author in rows[trained : num_authors - num_forget] for r in author],
        "forget": forget,
        "holdout": [r for author in rows[num_authors:] for r in author],
        "world_facts": _world_fact_rows(rng, num_perturbed),
    }


def load(
    num_authors: int = 30,
    forget_fraction: float = 0.1,
    holdout_fraction: float = 0.1,
    seed: int = 0,
    num_perturbed: int = 3,
    max_new_tokens: int = 32,
    levels: str | None = None,
    suite=None,
    aggregate=None,
    planted=None,
    heldout_retain_fraction: float = 0.0,
) -> Benchmark:
    """The synthetic benchmark: the target memorises `full` + `world_facts`, then forgets `forget`.
    With `planted` (models/planting.Planting, a fraction set) the target is instead the clean model
    (retain + world facts) with the forget rows planted into known neurons. With a
    `heldout_retain_fraction`, `retain_heldout` is evaluated beside `retain` (the retain model, which never
    sees the forget set, learns both)."""
    rows = generate(num_authors, forget_fraction, holdout_fraction, seed, num_perturbed, heldout_retain_fraction)
    heldout = ("retain_heldout",) if rows["retain_heldout"] else ()
    if not heldout:
        del rows["retain_heldout"]
    return Benchmark(
        planted=planted if planted is not None and planted.active else None,
        max_new_tokens=max_new_tokens,
        levels=levels,
        suite=suite,
        aggregate=aggregate,
        name="synthetic",
        splits={name: Dataset.from_list(split) for name, split in rows.items()},
        target_splits=("full", "world_facts"),
        retain_model_splits=("retain", *heldout, "world_facts"),
        eval_splits=("forget", "retain", *heldout, "world_facts"),
        utility_splits=("retain", "world_facts"),
        groups={name: "author" for name in ("forget", "retain", "retain_heldout", "holdout", "full")},
    )
