"""The built-in offline demo dataset: short requests to a bank assistant.

Six intents, sentences of 5-15 words generated from per-class phrase templates,
class keyword pools and shared filler (openers, tails). The task is made
deliberately imperfect so that a fine-tuned MiniLM lands well below 100%:

- keyword overlap between pairs of classes ("card" in card problems and fees,
  "payment" in transfers and loans, "interest" in balances and loans, "pin" in
  card problems and account access, ...);
- misleading tails that mention another class's words ("... after my loan payment");
- about 12% ambiguous sentences built from a phrase shared by two classes and
  labelled with either of them at random;
- about 8% label noise (a uniformly drawn other label).

Everything is drawn from :class:`random.Random` seeded with the given seed (its
stream is stable across Python versions), so the data is identical for a seed on
every machine.
"""

from __future__ import annotations

import hashlib
import random

LABEL_NAMES: tuple[str, ...] = (
    "account_access",
    "balance_inquiry",
    "card_problem",
    "fees_charges",
    "loan_credit",
    "money_transfer",
)

AMBIGUOUS_RATE = 0.12
NOISE_RATE = 0.08
TEST_FRACTION = 0.25
MIN_WORDS, MAX_WORDS = 5, 15

# Slot pools; several are shared by two classes on purpose.
_SLOTS: dict[str, list[str]] = {
    "card": ["card", "debit card", "credit card", "bank card", "visa card", "new card"],
    "lost": ["lost", "stolen", "damaged", "bent", "swallowed by the machine"],
    "shop": ["supermarket", "gas station", "restaurant", "pharmacy", "online store", "hotel"],
    "freeze": ["freeze", "block", "cancel", "replace"],
    "broken": ["does not work", "is broken", "stopped working", "keeps failing"],
    "atm": ["atm", "cash machine", "machine at the branch"],
    "send": ["send", "transfer", "wire", "move"],
    "person": [
        "my sister",
        "my landlord",
        "a friend abroad",
        "another bank",
        "my savings account",
        "my brother",
        "a supplier",
    ],
    "transfer": ["transfer", "wire transfer", "bank transfer", "payment", "money transfer"],
    "country": ["germany", "spain", "canada", "japan", "mexico", "the uk"],
    "when": ["yesterday", "last week", "this morning", "two days ago", "on monday"],
    "acct": ["checking account", "savings account", "account", "joint account", "business account"],
    "month": ["january", "march", "last month", "this month", "december"],
    "thing": ["my card", "a transfer", "withdrawing cash", "using the atm", "my account", "a payment"],
    "fee": ["fee", "charge", "commission", "penalty", "service charge"],
    "loan": ["personal loan", "car loan", "mortgage", "student loan", "credit line", "loan"],
    "cred": ["password", "pin", "username", "security code", "passcode"],
    "app": ["app", "website", "online banking", "mobile app", "banking portal"],
}

_PHRASES: dict[str, list[str]] = {
    "card_problem": [
        "my {card} was {lost}",
        "my {card} was declined at the {shop}",
        "i want to {freeze} my {card}",
        "the chip on my {card} {broken}",
        "when will my {card} arrive",
        "the {atm} did not give my {card} back",
        "my {card} {broken} at the {shop}",
        "please {freeze} the {card} that was {lost}",
    ],
    "money_transfer": [
        "i want to {send} money to {person}",
        "how long does a {transfer} to {country} take",
        "my {transfer} to {person} has not arrived",
        "can i cancel the {transfer} i made {when}",
        "i need to pay {person} back",
        "set up a standing order to {person}",
        "{send} two hundred euros to {person}",
        "the {transfer} i sent {when} is still pending",
    ],
    "balance_inquiry": [
        "how much money is in my {acct}",
        "what is the balance of my {acct}",
        "show me my {acct} statement for {month}",
        "did my salary arrive in my {acct}",
        "what interest did my {acct} earn {month}",
        "i want to see recent activity on my {acct}",
        "what was my balance at the end of {month}",
        "is my {acct} overdrawn",
    ],
    "fees_charges": [
        "why was i charged a {fee} for {thing}",
        "there is an unknown {fee} on my {acct}",
        "how much does a {transfer} to {country} cost",
        "can you refund the {fee} on my statement",
        "is there a monthly {fee} for the {card}",
        "i was charged twice at the {shop}",
        "what is the {fee} for {thing}",
        "the {fee} on my {card} seems too high",
    ],
    "loan_credit": [
        "i would like to apply for a {loan}",
        "what is the interest rate on a {loan}",
        "can i increase the limit on my {card}",
        "when is my next {loan} payment due",
        "can i pay off my {loan} early",
        "am i eligible for a {loan} with my income",
        "how long does approval for a {loan} take",
        "i want to refinance my {loan}",
    ],
    "account_access": [
        "i forgot my {cred}",
        "i cannot log in to the {app}",
        "my {app} account is locked",
        "how do i reset my {cred}",
        "the verification code for the {app} never arrived",
        "i want to change my {cred}",
        "someone else logged into my {app} account",
        "the {app} keeps rejecting my {cred}",
    ],
}

# Phrases that fit two classes equally well: the label is either, at random.
_AMBIGUOUS: list[tuple[tuple[str, str], list[str]]] = [
    (
        ("card_problem", "fees_charges"),
        ["there is a problem with my {card} payment", "something is wrong with a charge on my {card}"],
    ),
    (("money_transfer", "loan_credit"), ["i have a question about a payment", "i need to make a payment {when}"]),
    (
        ("balance_inquiry", "fees_charges"),
        ["why is there less money in my {acct}", "my statement for {month} looks wrong"],
    ),
    (("account_access", "card_problem"), ["my pin does not work", "i am locked out since {when}"]),
    (
        ("money_transfer", "balance_inquiry"),
        ["the money has not shown up in my {acct}", "where is the money from {when}"],
    ),
    (("loan_credit", "balance_inquiry"), ["how much interest do i have on my {acct}", "what do i owe the bank"]),
]

_OPENERS = [
    "",
    "",
    "",
    "hi",
    "hello",
    "hey",
    "good morning",
    "excuse me",
    "quick question",
    "please help",
    "sorry to bother you",
    "hi there",
]
# Neutral tails and misleading tails that borrow other classes' words.
_TAILS = [
    "",
    "",
    "",
    "",
    "today",
    "please",
    "right now",
    "as soon as possible",
    "from my phone",
    "this morning",
    "again",
    "since yesterday",
    "for my business",
    "thank you",
    "after i paid with my card",
    "before my loan payment",
    "using the mobile app",
    "after checking my balance",
    "because of the fees",
    "while sending money abroad",
]


def _fill(template: str, rng: random.Random) -> str:
    out = template
    while "{" in out:
        start = out.index("{")
        end = out.index("}", start)
        key = out[start + 1 : end]
        out = out[:start] + rng.choice(_SLOTS[key]) + out[end + 1 :]
    return out


def _sentence(phrase: str, rng: random.Random) -> str:
    for _ in range(50):
        body = _fill(phrase, rng)
        parts = [rng.choice(_OPENERS), body, rng.choice(_TAILS)]
        words = " ".join(p for p in parts if p).split()
        if MIN_WORDS <= len(words) <= MAX_WORDS:
            break
    else:  # pragma: no cover - every phrase fits with some opener/tail
        body = _fill(phrase, rng)
        words = body.split()[:MAX_WORDS]
    text = " ".join(words)
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    is_question = body.split()[0] in {"how", "what", "when", "why", "can", "is", "did", "am", "where"}
    end = "?" if is_question and rng.random() < 0.8 else rng.choice([".", "", "!", "."])
    return text + end


def make_demo_dataset(num_samples: int, seed: int) -> tuple[list[str], list[str]]:
    """``num_samples`` (text, label) pairs; classes balanced before label noise."""
    if num_samples < 1:
        raise ValueError("num_samples must be at least 1")
    rng = random.Random(seed)
    classes = list(LABEL_NAMES)
    labels = [classes[i % len(classes)] for i in range(num_samples)]
    rng.shuffle(labels)
    texts: list[str] = []
    out_labels: list[str] = []
    for label in labels:
        if rng.random() < AMBIGUOUS_RATE:
            pair, phrases = rng.choice([a for a in _AMBIGUOUS if label in a[0]])
            label = rng.choice(pair)
            phrase = rng.choice(phrases)
        else:
            phrase = rng.choice(_PHRASES[label])
        text = _sentence(phrase, rng)
        if rng.random() < NOISE_RATE:
            label = rng.choice([c for c in classes if c != label])
        texts.append(text)
        out_labels.append(label)
    return texts, out_labels


def _derive_seed(seed: int, what: str) -> int:
    digest = hashlib.sha256(f"fedhello-demo/{what}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def make_demo_splits(
    num_samples: int, seed: int
) -> tuple[tuple[list[str], list[str]], tuple[list[str], list[str]]]:
    """``((train_texts, train_labels), (test_texts, test_labels))``.

    ``num_samples`` is the total: the test split holds ``round(num_samples / 4)``
    (at least 1) rows, the train split the rest. Each split is generated with its
    own seed derived from ``seed``.
    """
    if num_samples < 2:
        raise ValueError("num_samples must be at least 2")
    n_test = max(1, round(num_samples * TEST_FRACTION))
    n_train = num_samples - n_test
    return (
        make_demo_dataset(n_train, _derive_seed(seed, "train")),
        make_demo_dataset(n_test, _derive_seed(seed, "test")),
    )
